"""The one place that wires the parts from a :class:`~netwarden.config.Config`.

backend (events) → metrics, store, JSON lines, the terminal → (detector → policy → blocker,
exec hooks, when those parts are present). Nothing here does I/O of its own beyond opening
what the config names.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TextIO

from netwarden.config import Config
from netwarden.errors import MissingCapability, UsageError
from netwarden.events import Event, EventType
from netwarden.export.metrics import Metrics
from netwarden.stats.names import NameCache
from netwarden.stats.report import summarize, summarize_store
from netwarden.store.sqlite import Store, open_store

log = logging.getLogger(__name__)

BACKEND_ORDER = ("ebpf", "conntrack", "sniff")
SNAPSHOT_INTERVAL = 2.0
RETENTION_INTERVAL = 3600.0
STATS_FILE = "stats.json"
#: stats.json and the dump cover at most this many of the most recent flows
STATS_FLOWS = 100_000
#: reverse lookups a dump starts, for its biggest remotes without a name yet
STATS_LOOKUPS = 1024
#: rows waiting for the store beyond which the ticker writes at once, not at the next
#: flush_interval (a flood of spoofed sources makes ten thousand flows a second)
FLUSH_BACKLOG = 4096
#: ... and beyond which the event loop writes them itself before it takes more packets:
#: when the writer cannot keep up, the capture ring fills and the kernel drops (and
#: counts) packets, rather than events piling up in memory
WRITE_BACKLOG = 8192


def open_backend(
    name: str,
    *,
    iface: str | None = None,
    filter_expr: str | None = None,
    all_netns: bool = False,
    sniff_options: dict[str, Any] | None = None,
) -> Any:
    """Open a capture backend; ``auto`` tries ebpf, conntrack, sniff in that order and logs
    one line per backend it skips. Raises MissingCapability when nothing can work."""
    names = BACKEND_ORDER if name == "auto" else (name,)
    if name == "auto" and (filter_expr or iface):
        # a filter expression or an interface is the packet backend's business
        names = ("sniff",)
    reasons: list[str] = []
    for backend in names:
        try:
            src = _open_one(backend, iface, filter_expr, all_netns, **(sniff_options or {}))
        except MissingCapability as exc:
            if name != "auto":
                raise
            reasons.append(f"{backend}: {exc}")
            log.warning("backend %s unavailable: %s", backend, exc)
            continue
        return src
    raise MissingCapability(
        "no capture backend works here (" + "; ".join(reasons) + ")",
        "run `netwarden doctor` for the full table",
    )


def _open_one(
    backend: str, iface: str | None, filter_expr: str | None, all_netns: bool, **options: Any
) -> Any:
    if backend == "sniff":
        from netwarden.capture.packets import SniffSource

        if all_netns:
            raise MissingCapability("the sniff backend sees only this network namespace")
        return SniffSource(iface, filter_expr, **options)
    if backend == "ebpf":
        if filter_expr:
            raise UsageError("filter expressions need --backend sniff", option="filter")
        return _backend_class("ebpf", "EbpfSource")(all_netns=all_netns)
    if backend == "conntrack":
        if filter_expr:
            raise UsageError("filter expressions need --backend sniff", option="filter")
        return _backend_class("conntrack", "ConntrackSource")()
    raise UsageError(
        "unknown backend", option="--backend", value=backend, allowed="auto, ebpf, conntrack, sniff"
    )


def _backend_class(module: str, name: str) -> Any:
    """A backend class, imported lazily (its module may need a kernel feature to load)."""
    import importlib

    try:
        return getattr(importlib.import_module(f"netwarden.capture.{module}"), name)
    except (ImportError, AttributeError):
        raise MissingCapability(f"the {module} backend is not in this build") from None


class Pipeline:
    """Takes every event of a backend to the outputs; ``tick(now)`` does the periodic work."""

    def __init__(
        self,
        cfg: Config,
        source: Any,
        *,
        printer: Callable[[Event], None] | None = None,
        store: Store | None = None,
        names: NameCache | None = None,
        device: str = "",
        filter_expr: str = "",
        defense: Any = None,
        hook: Callable[[Event], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.printer = printer
        self.store = store
        self.names = names if names is not None else NameCache()
        self.metrics = Metrics()
        self.state_dir = cfg.effective_state_dir()
        self.device = device or (cfg.iface or "all")
        self.filter_expr = filter_expr
        self.started = time.time()
        self.stats_start = self.started
        self._jsonl: TextIO | None = None
        if cfg.jsonl:
            try:
                self._jsonl = open(cfg.jsonl, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise UsageError(
                    exc.strerror or str(exc), option="--jsonl", value=cfg.jsonl
                ) from None
        self.events_seen = 0
        self.flows_seen = 0
        #: held by whoever calls handle()/tick(); write_stats() takes it itself (it is also
        #: called from the web and dump-trigger threads)
        self.lock = threading.RLock()
        self.defense = defense
        self.hook = hook
        self._now = 0.0
        #: scan/block/unblock events raised while events are being judged: written out
        #: after the batch's own events
        self._held: list[Event] = []
        self._judging = False
        if hasattr(source, "lock"):
            source.lock = self.lock  # the ticker reads the flow table between batches
        #: the source judges each event as it is made (the packet backend): handle_batch
        #: then only writes them out
        self._inline = defense is not None and hasattr(source, "judge")
        if self._inline:
            source.judge = self._judge
        #: the printer's flush, when it lets us flush once per batch instead of per line
        self._printer_flush: Callable[[], None] | None = None
        if printer is not None and hasattr(printer, "autoflush"):
            printer.autoflush = False
            self._printer_flush = getattr(printer, "flush", None)
        if defense is not None:
            defense.emit = self._derived
            self.metrics.blocked_hosts = defense.blocked_count
            det = defense.detector
            self.metrics.dropped_sources.append(
                lambda: {"detect": det.stats()["sources_evicted"] + det.stats()["attempts_dropped"]}
            )
        #: set when the store's backlog passed FLUSH_BACKLOG: the ticker waits on it
        self.wake = threading.Event()
        self._next_flush = 0.0
        self._next_snapshot = 0.0
        self._next_retention = 0.0
        self._last_snapshot = time.time()
        for attr, target in (
            ("errors", self.metrics.error_sources),
            ("dropped", self.metrics.dropped_sources),
        ):
            fn = getattr(source, attr, None)
            if fn is not None:
                target.append(fn)
        if hasattr(source, "kernel_stats"):
            self.metrics.extra_counters.append(
                (
                    "netwarden_packets_captured",
                    "Packets captured",
                    lambda: float(source.kernel_stats()[0]),
                )
            )

    # ---------------------------------------------------------------- per event
    def handle(self, e: Event) -> None:
        """A backend's event: to detection, then to the outputs (see :meth:`handle_batch`)."""
        self.handle_batch([e])

    def handle_batch(self, events: list[Event]) -> None:
        """A batch of a backend's events (one capture block): detection first, so that a
        scanner's block never waits for the outputs of the events ahead of its threshold
        probe; then the batch's events to the outputs, then the scan/block/unblock events
        detection raised (in that order, so a ``scan`` follows the ``new`` events that
        caused it)."""
        if self.defense is not None and not self._inline:
            for e in events:
                self._judge(e)
        output = self._output
        for e in events:
            output(e)
        held = self._held
        if held:
            self._held = []
            for e in held:
                self._derived_out(e)
        if events or held:
            self._flush()
            store = self.store
            if store is not None and store.backlog() > FLUSH_BACKLOG:
                if store.backlog() > WRITE_BACKLOG:
                    store.write(store.take())
                else:
                    self.wake.set()

    def _judge(self, e: Event) -> None:
        """Detection of one event (as the packet source makes it, under :attr:`lock`, or
        from :meth:`handle_batch` for the other backends)."""
        if self.defense is None:
            return
        self._now = max(self._now, time.time())
        self._judging = True
        try:
            self.defense.feed(e, self._now)
        finally:
            self._judging = False

    def _derived(self, e: Event) -> None:
        """A scan/block/unblock event from detection: to the outputs and the exec hook
        (after the batch being judged, if any)."""
        if self._judging:
            self._held.append(e)
            return
        self._derived_out(e)
        self._flush()

    def _derived_out(self, e: Event) -> None:
        self._output(e)
        if self.hook is not None and not (e.scan is not None and e.scan.summary):
            self.hook(e)

    def _output(self, e: Event) -> None:
        self.events_seen += 1
        if e.event is EventType.NEW:
            self.flows_seen += 1
        self.metrics.observe(e)
        if self.store is not None:
            self.store.add(e)
        if self._jsonl is not None:
            self._jsonl.write(e.to_json() + "\n")
        if self.printer is not None:
            self.printer(e)

    def _flush(self) -> None:
        """The line outputs, once per batch (a reader of the JSON lines sees whole batches)."""
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._printer_flush is not None:
            self._printer_flush()  # a closed pipe ends the run, as a write would

    # ---------------------------------------------------------------- periodic
    def tick(self, now: float) -> None:
        """The periodic work. It takes :attr:`lock` for the in-memory part only: the store's
        I/O happens outside it, so the event loop never waits for the disk."""
        taken = None
        retain = False
        if self.defense is not None:
            self.defense.refresh()  # /proc reads: not under the lock
        with self.lock:
            if self.defense is not None:
                self._now = max(self._now, now)
                self.defense.tick(self._now)
            if self.store is None:
                return
            if now >= self._next_snapshot:
                table = getattr(self.source, "table", None)
                open_flows = getattr(self.source, "open_tcp_flows", None)
                if table is not None:
                    for snap in table.active_since(self._last_snapshot):
                        self.store.add_flow_snapshot(snap)
                elif open_flows is not None:
                    # the eBPF backend: the kernel's counters so far for every open TCP flow
                    for ev in open_flows():
                        self.store.add_flow_snapshot(replace(ev, duration=max(0.0, now - ev.ts)))
                self._last_snapshot = now
                self._next_snapshot = now + SNAPSHOT_INTERVAL
            if now >= self._next_flush or self.store.backlog() > FLUSH_BACKLOG:
                taken = self.store.take()
                self._next_flush = now + self.cfg.flush_interval
            if now >= self._next_retention:
                self._next_retention = now + RETENTION_INTERVAL
                retain = True
        if taken is not None:
            self.store.write(taken)
        if retain:
            deleted = self.store.retain(self.cfg.retention, self.cfg.db_max_mb * 1024 * 1024)
            if deleted:
                log.info("retention: %d old rows deleted", deleted)

    # ---------------------------------------------------------------- stats dump
    def stats(self, now: float | None = None) -> dict[str, Any]:
        """Net::Connection::Sniffer's dump: header fields and the ``--by ip`` rows."""
        header, rows = self._stats(now)
        return {**header, "rows": list(rows)}

    def _stats(
        self, now: float | None, unnamed: list[str] | None = None
    ) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
        """The dump's header, and its rows made one at a time. With ``unnamed``, names are
        only read from the cache, and the addresses that need a lookup are collected there
        (the first STATS_LOOKUPS, most bytes first): the caller starts them after the dump,
        so reverse-DNS threads do not compete with the dump for the interpreter."""
        now = time.time() if now is None else now
        lookup = self.names.lookup
        if unnamed is not None:
            known = self.names.known

            def lookup(addr: str) -> tuple[list[str], float | None]:
                found, expire = known(addr)
                if (expire is None or expire <= now) and len(unnamed) < STATS_LOOKUPS:
                    unnamed.append(addr)
                return found, expire

        if self.store is not None:
            with self.lock:
                taken = self.store.take()
            self.store.write(taken)
            # bounded: the most recent STATS_FLOWS flows (a spoofed flood makes millions),
            # added up by SQLite, the rows read one at a time
            summary = summarize_store(self.store, self.stats_start, STATS_FLOWS, names=lookup)
        else:
            summary = summarize([])
        minutes = max((now - self.stats_start) / 60.0, 1.0 / 60.0)
        header = {
            "start": self.stats_start,
            "current": now,
            "hits_per_minute": round(summary.conns / minutes, 3),
            "bytes_per_second": round(summary.bytes / (minutes * 60.0), 3),
            "users": summary.count,
            "device": self.device,
            "filter": self.filter_expr,
        }
        return header, summary.rows()

    def write_stats(self) -> str:
        """stats.json: the header, then the rows one per line as they are made (100,000
        rows of a spoofed flood are never all in memory as dicts)."""
        path = os.path.join(self.state_dir, STATS_FILE)
        tmp = path + ".tmp"
        unnamed: list[str] = []
        header, rows = self._stats(None, unnamed)
        head = json.dumps(header, indent=1)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(head[:-2] + ',\n "rows": [')
            sep = "\n  "
            for row in rows:
                f.write(sep)
                f.write(json.dumps(row))
                sep = ",\n  "
            f.write("\n ]\n}\n")
        os.replace(tmp, path)
        self.names.prefetch(unnamed)  # their names are in the next dump
        return path

    def new_statistics(self) -> None:
        self.stats_start = time.time()

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "pid": os.getpid(),
            "backend": getattr(self.source, "name", type(self.source).__name__),
            "started": self.started,
            "uptime": now - self.started,
            "events": self.events_seen,
            "flows": self.flows_seen,
            "state_dir": self.state_dir,
            "listen": self.cfg.listen,
            "blocking": self.cfg.block,
            "blocked": 0 if self.defense is None else self.defense.blocked_count(),
        }

    def close(self) -> None:
        if self.defense is not None:
            self.defense.close()
        if self.hook is not None:
            closer = getattr(self.hook, "close", None)
            if closer is not None:
                closer()
        if self.store is not None:
            self.store.close()
        if self._jsonl is not None:
            self._jsonl.close()
        self.names.close()


def open_state(cfg: Config) -> Store:
    """The store in the state dir (creating the dir); an unwritable dir exits 2."""
    return open_store(cfg.effective_state_dir())
