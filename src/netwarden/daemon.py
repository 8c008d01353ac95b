"""``netwarden run``: the loop, signals, the pidfile, ``--detach``, and the control commands
that find a running daemon through its state dir (``status``, ``stop``, ``dump``).

Signals (INTERFACE.md): SIGTERM/SIGINT write the stats, end every open flow, remove the
firewall objects and exit 0; SIGHUP writes the stats, reloads the config file and starts new
statistics; SIGUSR1 writes ``stats.json`` now. Handlers only set flags; the work happens in the
loop, between batches.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from netwarden.config import Config, parse_listen
from netwarden.errors import NetwardenError, UsageError
from netwarden.events import Event

log = logging.getLogger(__name__)

PID_FILE = "netwarden.pid"
LOG_FILE = "netwarden.log"


# --------------------------------------------------------------------------- pidfile
def _proc_is_netwarden(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"netwarden" in f.read()
    except OSError:
        return False


def read_pid(state_dir: str) -> int | None:
    """The pid of the running daemon of ``state_dir``, or None (a stale file is ignored)."""
    try:
        with open(os.path.join(state_dir, PID_FILE)) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid if _proc_is_netwarden(pid) else None


class PidFile:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, PID_FILE)
        self.state_dir = state_dir

    def acquire(self) -> None:
        running = read_pid(self.state_dir)
        if running is not None and running != os.getpid():
            raise UsageError(
                f"netwarden is already running (pid {running}) with state dir {self.state_dir}",
                option="--state-dir",
                value=self.state_dir,
            )
        tmp = f"{self.path}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, self.path)

    def release(self) -> None:
        try:
            with open(self.path) as f:
                if int(f.read().strip() or 0) != os.getpid():
                    return
            os.unlink(self.path)
        except (OSError, ValueError):
            pass


def ensure_state_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise UsageError(exc.strerror or str(exc), option="--state-dir", value=path) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError("not writable", option="--state-dir", value=path)


# --------------------------------------------------------------------------- control
def status(state_dir: str) -> tuple[bool, str]:
    pid = read_pid(state_dir)
    return (True, f"running (pid {pid})") if pid else (False, "not running")


def stop(state_dir: str, timeout: float = 10.0) -> str:
    pid = read_pid(state_dir)
    if pid is None:
        return "not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or not _proc_is_netwarden(pid):
            return f"stopped (pid {pid})"
        time.sleep(0.05)
    raise NetwardenError(f"netwarden (pid {pid}) did not exit within {timeout:g} s")


def request_dump(state_dir: str, timeout: float = 10.0) -> str:
    """Ask the daemon for stats.json (SIGUSR1) and return its path once rewritten."""
    from netwarden.pipeline import STATS_FILE

    pid = read_pid(state_dir)
    if pid is None:
        raise NetwardenError("not running")
    path = os.path.join(state_dir, STATS_FILE)
    try:
        before = os.stat(path).st_mtime_ns
    except OSError:
        before = 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.stat(path).st_mtime_ns != before:
                return path
        except OSError:
            pass
        time.sleep(0.05)
    raise NetwardenError(f"netwarden (pid {pid}) did not write {path} within {timeout:g} s")


# --------------------------------------------------------------------------- UDP dump
class DumpListener:
    """Net::Connection::Sniffer's UDP trigger: a datagram from an allowed host writes the stats
    dump and is answered ``OK <timestamp>``; others are ignored (and counted)."""

    def __init__(self, listen: str, allow: tuple[str, ...], dump: Callable[[], str]) -> None:
        host, port = parse_listen(listen, "dump_listen")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise UsageError(
                f"cannot bind: {exc.strerror}", option="dump_listen", value=listen
            ) from None
        self.sock.settimeout(0.5)
        self.allow = [ipaddress.ip_network(a, strict=False) for a in allow]
        self.dump = dump
        self.refused = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="nw-dump", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                _data, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                addr = ipaddress.ip_address(peer[0].split("%")[0])
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
                    addr = addr.ipv4_mapped
            except ValueError:
                continue
            if not any(addr in n for n in self.allow if n.version == addr.version):
                self.refused += 1
                continue
            self.dump()
            self.sock.sendto(f"OK {int(time.time())}\n".encode(), peer)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


# --------------------------------------------------------------------------- the loop
@dataclass
class _Flags:
    stop: bool = False
    hup: bool = False
    usr1: bool = False
    stop_source: Callable[[], None] | None = None
    handlers: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.stop = True
            if self.stop_source is not None:
                self.stop_source()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.hup = True

        def on_usr1(signum: int, frame: FrameType | None) -> None:
            self.usr1 = True

        for sig, fn in (
            (signal.SIGTERM, on_stop),
            (signal.SIGINT, on_stop),
            (signal.SIGHUP, on_hup),
            (signal.SIGUSR1, on_usr1),
        ):
            self.handlers[sig] = signal.signal(sig, fn)


def _detach(state_dir: str) -> int | None:
    """Fork into the background. Returns None in the daemon; in the parent, waits for the
    daemon to say it is ready (or why it failed) and returns the exit status."""
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        chunks = []
        while True:
            b = os.read(r, 4096)
            if not b:
                break
            chunks.append(b)
        os.close(r)
        os.waitpid(pid, 0)
        msg = b"".join(chunks).decode(errors="replace")
        if msg.startswith("ok"):
            sys.stderr.write(msg[3:])
            return 0
        code, _, text = msg.partition(" ")
        sys.stderr.write(text or "netwarden: the daemon failed to start\n")
        return int(code) if code.isdigit() else 1
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    logfd = os.open(
        os.path.join(state_dir, LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640
    )
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(logfd, 2)
    os.close(devnull)
    os.close(logfd)
    os.environ["NETWARDEN_READY_FD"] = str(w)
    return None


def _report_ready(message: str) -> None:
    fd = os.environ.pop("NETWARDEN_READY_FD", None)
    if fd is None:
        sys.stderr.write(message)
        sys.stderr.flush()
        return
    try:
        os.write(int(fd), ("ok " + message).encode())
        os.close(int(fd))
    except OSError:
        pass


def _report_failure(exc: NetwardenError) -> None:
    fd = os.environ.pop("NETWARDEN_READY_FD", None)
    if fd is not None:
        try:
            os.write(int(fd), f"{exc.exit_code} netwarden: {exc}\n".encode())
            os.close(int(fd))
        except OSError:
            pass


def run(
    cfg: Config,
    *,
    printer: Callable[[Event], None] | None,
    filter_expr: str | None,
    detach: bool = False,
    token: str | None = None,
    reload: Callable[[], Config] | None = None,
) -> int:
    state_dir = cfg.effective_state_dir()
    ensure_state_dir(state_dir)
    running = read_pid(state_dir)
    if running is not None:
        raise UsageError(
            f"netwarden is already running (pid {running})", option="--state-dir", value=state_dir
        )
    if detach:
        rc = _detach(state_dir)
        if rc is not None:
            return rc
        printer = None
    try:
        return _run(cfg, printer, filter_expr, token, reload)
    except NetwardenError as exc:
        _report_failure(exc)
        raise


def _run(
    cfg: Config,
    printer: Callable[[Event], None] | None,
    filter_expr: str | None,
    token: str | None,
    reload: Callable[[], Config] | None,
) -> int:
    from netwarden.pipeline import Pipeline, open_backend, open_state
    from netwarden.web.server import WebContext, WebServer

    state_dir = cfg.effective_state_dir()
    pidfile = PidFile(state_dir)
    flags = _Flags()
    store = open_state(cfg)
    web = None
    dump_listener = None
    source = None
    pipeline = None
    try:
        # the web port first: a port in use must fail before capture starts
        ctx = WebContext(store_path=store.path, metrics=lambda: b"", status=lambda: {}, token=token)
        web = WebServer(ctx, cfg.listen)
        web.start()
        from netwarden.stats.names import NameCache

        names = NameCache()
        options: dict[str, Any] = {
            "snaplen": cfg.snaplen,
            "buffer_kib": cfg.buffer_size,
            "max_flows": cfg.max_flows,
            "max_unconfirmed": cfg.max_unconfirmed,
            # a ring block is handed over when full or after 10 ms; with --block each packet
            # is handed over as it arrives (a scanner's threshold probe judged at once)
            "block_timeout_ms": 10,
            "immediate": cfg.block,
        }
        if cfg.backend in ("sniff", "auto"):
            from netwarden.stats.packets import PayloadInspector

            # names from DNS answers seen on the wire (packet backend)
            options["inspector"] = PayloadInspector(on_dns=names.learn_dns)
        source = open_backend(
            cfg.backend,
            iface=cfg.iface,
            filter_expr=filter_expr,
            all_netns=cfg.all_netns,
            sniff_options=options,
        )
        from netwarden.act.hooks import ExecHook
        from netwarden.defense import Defense
        from netwarden.hostaddrs import local_addresses

        hook = ExecHook(cfg.exec) if cfg.exec else None
        defense = Defense(cfg, lambda e: None, state_dir=state_dir, own_addresses=local_addresses())
        pipeline = Pipeline(
            cfg,
            source,
            printer=printer,
            store=store,
            names=names,
            device=cfg.iface or "all",
            filter_expr=filter_expr or "",
            defense=defense,
            hook=hook,
        )
        ctx.blocks = lambda: [b.to_dict() for b in defense.blocker.blocks()]

        def api_block(addr: str, seconds: float | None, reason: str) -> dict[str, Any]:
            return dict(defense.blocker.block(addr, seconds, reason=reason).to_dict())

        def api_unblock(addr: str) -> dict[str, Any]:
            b = defense.blocker.unblock(addr)
            return {"unblocked": None if b is None else b.to_dict()}

        ctx.block = api_block
        ctx.unblock = api_unblock
        ctx.metrics = pipeline.metrics.render
        ctx.status = pipeline.status
        ctx.names = pipeline.names.lookup
        ctx.dump = lambda: {"path": pipeline.write_stats()}
        if cfg.dump_listen:
            dump_listener = DumpListener(cfg.dump_listen, cfg.dump_allow, pipeline.write_stats)
        pidfile.acquire()
        flags.stop_source = source.stop
        flags.install()

        from netwarden.hostaddrs import AddressWatcher

        watcher = AddressWatcher()

        def tick(now: float) -> None:
            if watcher.changed():
                addrs = local_addresses()
                with pipeline.lock:
                    table = getattr(source, "table", None)
                    if table is not None:
                        table.local_addrs = addrs
                    if hasattr(source, "local_addrs"):
                        source.local_addrs = addrs
                    defense.set_own_addresses(addrs)
                log.info("this host's addresses changed: %d now", len(addrs))
            pipeline.tick(now)
            if flags.usr1:
                flags.usr1 = False
                pipeline.write_stats()
            if flags.hup:
                flags.hup = False
                pipeline.write_stats()
                if reload is not None:
                    try:
                        pipeline.cfg = reload()
                        log.warning("SIGHUP: configuration reloaded, new statistics started")
                    except NetwardenError as exc:
                        log.error("SIGHUP: config not reloaded: %s", exc)
                pipeline.new_statistics()

        # the periodic work runs on a ticker thread, whatever the backend does while idle;
        # one lock keeps it and the event loop apart
        lock = pipeline.lock
        done = threading.Event()

        def ticker() -> None:
            wake = pipeline.wake
            while not done.is_set():
                wake.wait(0.5)  # or sooner, when the store's backlog needs writing
                wake.clear()
                if done.is_set():
                    break
                try:
                    tick(time.time())  # takes the pipeline's lock where it needs it
                except Exception:  # the outermost loop of this thread: log, keep going
                    log.exception("periodic work failed")

        from netwarden.capture.packets import tune_gc

        tune_gc()
        ticking = threading.Thread(target=ticker, name="nw-tick", daemon=True)
        ticking.start()
        where = f"listening on {cfg.iface}" if cfg.iface else "listening on all interfaces"
        _report_ready(f"{where}\ndashboard and metrics on http://{cfg.listen}/\n")
        try:
            batches = getattr(source, "batches", None)
            if batches is not None:
                # the packet backend: a capture block's events at a time (detection first)
                for events in batches():
                    with lock:
                        pipeline.handle_batch(events)
            else:
                for event in source:
                    with lock:
                        pipeline.handle(event)
        finally:
            done.set()
            pipeline.wake.set()
            ticking.join(10)
        return 0
    finally:
        if pipeline is not None:
            try:
                pipeline.write_stats()
            except OSError as exc:
                log.error("cannot write stats: %s", exc)
        if dump_listener is not None:
            dump_listener.close()
        if source is not None:
            source.close()
        if web is not None:
            web.stop()
        if pipeline is not None:
            pipeline.close()
        else:
            store.close()
        pidfile.release()
        if source is not None and hasattr(source, "kernel_stats"):
            captured, dropped = source.kernel_stats()
            try:
                sys.stderr.write(
                    f"{captured} packets captured\n{dropped} packets dropped by kernel\n"
                )
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
