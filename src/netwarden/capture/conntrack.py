"""The conntrack backend: every flow the kernel tracks, with counters and its local owner.

For hosts without eBPF. Our own ctnetlink code (``wire/netlink.py``) on a netlink socket with a
big receive buffer, subscribed to NEW and DESTROY (and, so that TCP flows end at FIN/RST as
the interface promises rather than two minutes later at conntrack's TIME_WAIT timeout,
to UPDATE: only TCP state changes to TIME_WAIT/CLOSE are acted on). At start it turns on
``nf_conntrack_acct`` and ``nf_conntrack_timestamp`` (restored at exit), makes sure conntrack
tracks this namespace (a one-rule nft table ``inet netwarden_ct``, removed at exit) and dumps
the table. When the kernel drops events (ENOBUFS) the loss is counted and the table dumped
again to reconcile: flows we missed are reported late, flows that vanished are ended.

The owner of the local end is found at the NEW event: sock_diag by 5-tuple (inode, uid,
cgroup) then a bounded /proc search (``capture/sockdiag.py``). A short-lived sender may be
gone by then; a :class:`~netwarden.capture.nfqueue.Hold` passed as ``hold`` fixes that for
TCP by holding the SYN until its owner is known.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

from netwarden.capture.netlink_socket import NetlinkError, NetlinkSocket, Overrun
from netwarden.closing import Closing
from netwarden.errors import MissingCapability, RuntimeFailure
from netwarden.events import (
    Attribution,
    Direction,
    Event,
    EventType,
    IPAddress,
    ProcessInfo,
    Proto,
    Source,
)
from netwarden.wire.netlink import (
    AF_INET,
    CT_DELETE_TYPE,
    CT_NEW_TYPE,
    NETLINK_NETFILTER,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    NFNLGRP_CONNTRACK_UPDATE,
    NLM_F_CREATE,
    NLMSG_ERROR,
    NLMSG_OVERRUN,
    CtCounters,
    CtEntry,
    CtTuple,
    NlMsg,
    bpf_program,
    ct_dump_request,
    ct_event_filter,
    ct_get_request,
    decode_ct,
    decode_ct_counters,
    decode_ct_payload,
    split_messages,
)

if TYPE_CHECKING:
    from netwarden.capture.nfqueue import Hold
    from netwarden.capture.sockdiag import OwnerLookup

log = logging.getLogger(__name__)

SYSCTL_DIR = "/proc/sys/net/netfilter"
CT_TABLE = "netwarden_ct"
TCP_TIME_WAIT = 7
TCP_CLOSE = 8
_TCP_CLOSED = (TCP_TIME_WAIT, TCP_CLOSE)
_IPPROTO_TCP = 6
CLOSING_BATCH = 256


# --------------------------------------------------------------------------- set-up helpers
class Sysctls:
    """Set netfilter sysctls for our run and put the old values back afterwards."""

    def __init__(self, root: str = SYSCTL_DIR) -> None:
        self.root = root
        self._saved: dict[str, str] = {}

    def ensure(self, name: str, value: str, *, unless: Collection[str] = ()) -> None:
        """Set ``name`` to ``value`` unless it already holds it (or one of ``unless``)."""
        path = os.path.join(self.root, name)
        try:
            with open(path) as f:
                old = f.read().strip()
        except OSError as exc:
            log.warning("cannot read %s (%s): leaving it as it is", path, exc.strerror)
            return
        if old == value or old in unless:
            return
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            log.warning("cannot set %s=%s (%s)", path, value, exc.strerror)
            return
        self._saved.setdefault(name, old)

    def restore(self) -> None:
        for name, old in self._saved.items():
            try:
                with open(os.path.join(self.root, name), "w") as f:
                    f.write(old)
            except OSError as exc:
                log.warning("cannot restore %s=%s (%s)", name, old, exc.strerror)
        self._saved.clear()


def _nft(script: str) -> None:
    """Apply an nft script through libnftables (the project's binding), or ``nft -f -``
    when the library is missing; raise :class:`RuntimeFailure` on failure."""
    from netwarden.act.libnftables import Nft

    try:
        with Nft() as lib:
            lib.run(script)
        return
    except MissingCapability as exc:
        log.debug("libnftables unavailable (%s): using the nft command", exc)
    nft = shutil.which("nft")
    if nft is None:
        raise MissingCapability("the nft command is missing", "install the nftables package")
    proc = subprocess.run(
        [nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise RuntimeFailure(f"nft failed: {proc.stderr.strip() or proc.returncode}")


def tracking_rule_script(table: str = CT_TABLE) -> str:
    """The nft script that makes conntrack track this namespace: one ``ct state`` rule in
    our own table (netfilter registers conntrack's hooks only once a rule needs them).
    Creating and deleting the table first clears a crashed run's leftovers."""
    return (
        f"table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        f"  chain track {{\n"
        f"    type filter hook output priority 0; policy accept;\n"
        f"    ct state new\n"
        f"  }}\n"
        f"}}\n"
    )


def add_tracking_rule(table: str = CT_TABLE) -> None:
    _nft(tracking_rule_script(table))


def remove_tracking_rule(table: str = CT_TABLE) -> None:
    """Delete our table (silently nothing when it is not there)."""
    _nft(f"table inet {table}\ndelete table inet {table}\n")


# --------------------------------------------------------------------------- flows
class _Flow:
    __slots__ = (
        "attribution",
        "direction",
        "dport",
        "dst",
        "family",
        "first",
        "flow",
        "ipproto",
        "orig",
        "orig_bytes",
        "orig_pkts",
        "process",
        "proto",
        "reply_bytes",
        "reply_pkts",
        "sport",
        "src",
        "zone",
    )

    def __init__(self) -> None:
        self.flow = ""
        self.first = 0.0
        self.family = 4
        self.ipproto = 0
        self.proto = Proto.IP
        self.src: IPAddress | None = None
        self.dst: IPAddress | None = None
        self.sport: int | None = None
        self.dport: int | None = None
        self.direction = Direction.TRANSIT
        self.process: ProcessInfo | None = None
        self.attribution = Attribution.NONE
        self.orig_pkts = self.orig_bytes = self.reply_pkts = self.reply_bytes = 0
        self.orig: CtTuple | None = None
        self.zone: int | None = None


def _addr(packed: bytes) -> IPAddress:
    return IPv4Address(packed) if len(packed) == 4 else IPv6Address(packed)


def _ns_inode() -> int | None:
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return None


class ConntrackSource(Closing):
    """Flows from the kernel's connection tracking, as ``new``/``end`` events.

    Iterate it for :class:`~netwarden.events.Event` objects (``source=conntrack``).
    ``fileno()`` is readable when messages wait; ``stop()`` ends the iteration after
    emitting ``end`` for every open flow; ``close()`` undoes every change to the system.
    """

    def __init__(
        self,
        *,
        local_addrs: Iterable[bytes] | None = None,
        owners: OwnerLookup | None = None,
        attribute: bool = True,
        hold: Hold | None = None,
        protocols: Collection[int] | None = None,
        rcvbuf: int = 16 << 20,
        dump: bool = True,
        tcp_end_at_close: bool = True,
        enable_accounting: bool = True,
        ensure_tracking: bool = True,
        sysctl_root: str = SYSCTL_DIR,
        poll_interval: float = 0.2,
        max_flows: int = 262144,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if local_addrs is None:
            from netwarden.hostaddrs import local_addresses

            local_addrs = local_addresses()
        self.local_addrs = frozenset(local_addrs)
        self._owners = owners
        self.attribute = attribute
        self.hold = hold
        self.protocols = None if protocols is None else frozenset(protocols)
        self.rcvbuf = rcvbuf
        self.dump_at_start = dump
        self.tcp_end_at_close = tcp_end_at_close
        self.enable_accounting = enable_accounting
        self.ensure_tracking = ensure_tracking
        self.poll_interval = poll_interval
        self.max_flows = max_flows
        self.clock = clock
        self.sysctls = Sysctls(sysctl_root)
        self.netns = _ns_inode()

        self._events: NetlinkSocket | None = None
        self._query: NetlinkSocket | None = None
        self._epoll: select.epoll | None = None
        self._tracking_added = False
        self._started = False
        self._closed = False
        self._stopping = False
        self._open: OrderedDict[int, _Flow] = OrderedDict()
        self._ended: OrderedDict[int, int] = OrderedDict()  # ct id → times seen (reuse)
        self._pending: list[Event] = []
        self._resync = False
        self._drops = 0
        self._drops_checked = 0.0
        self._drops_synced = 0
        self._closing: dict[int, CtEntry | CtCounters] = {}

        # counters (summary())
        self.messages = 0
        self.malformed = 0
        self.overruns = 0  # ENOBUFS: the kernel dropped events
        self.redumps = 0
        self.late_new = 0  # flows found by a re-dump, their NEW event lost
        self.lost_end = 0  # flows gone in a re-dump, their DESTROY lost
        self.evicted = 0
        self.unknown_end = 0
        self.flows_new = 0
        self.flows_end = 0
        self.dumped = 0
        self.filtered = 0

    # ------------------------------------------------------------------ life cycle
    @property
    def owners(self) -> OwnerLookup | None:
        if self._owners is None and self.attribute:
            from netwarden.capture.sockdiag import OwnerLookup

            self._owners = OwnerLookup()
        return self._owners

    def start(self) -> None:
        """Sysctls, the tracking rule, the sockets and the initial dump (once)."""
        if self._started:
            return
        self._started = True
        if os.geteuid() != 0:
            raise MissingCapability(
                "the conntrack backend needs root (CAP_NET_ADMIN)", "run netwarden as root"
            )
        try:
            if self.enable_accounting:
                self.sysctls.ensure("nf_conntrack_acct", "1")
                self.sysctls.ensure("nf_conntrack_timestamp", "1")
                self.sysctls.ensure("nf_conntrack_events", "1", unless=("2",))
            if self.ensure_tracking:
                add_tracking_rule()
                self._tracking_added = True
            ev = NetlinkSocket(NETLINK_NETFILTER, rcvbuf=self.rcvbuf)
            self._events = ev
            granted = ev.set_rcvbuf(self.rcvbuf)
            if granted < self.rcvbuf:
                log.warning("conntrack: receive buffer %d bytes (asked %d)", granted, self.rcvbuf)
            ev.join(NFNLGRP_CONNTRACK_NEW)
            ev.join(NFNLGRP_CONNTRACK_DESTROY)
            if self.tcp_end_at_close:
                # updates only when a TCP connection closes, filtered in the kernel
                ev.attach_filter(bpf_program(ct_event_filter(_TCP_CLOSED)))
                ev.join(NFNLGRP_CONNTRACK_UPDATE)
            self._query = NetlinkSocket(NETLINK_NETFILTER, rcvbuf=4 << 20)
            _ = self.owners  # ready before the first event: a lazy start costs a sender
            self._epoll = select.epoll()
            self._epoll.register(ev.fileno(), select.EPOLLIN)
            if self.hold is not None:
                self.hold.start()
                self._epoll.register(self.hold.fileno(), select.EPOLLIN)
            if self.dump_at_start:
                self._sync(initial=True)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        """Readable when conntrack (or held-packet) messages wait (an epoll descriptor)."""
        self.start()
        assert self._epoll is not None
        return self._epoll.fileno()

    def stop(self) -> None:
        """Ask the iteration to finish (signal-safe): open flows are ended, then it stops."""
        self._stopping = True

    def close(self) -> None:
        """Close the sockets and undo our changes: the tracking table, the sysctls."""
        if self._closed:
            return
        self._kernel_drops()
        self._closed = True
        if self.hold is not None:
            try:
                self.hold.close()
            except Exception as exc:  # pragma: no cover - best effort at exit
                log.warning("conntrack: closing the hold failed: %s", exc)
        for s in (self._events, self._query):
            if s is not None:
                s.close()
        if self._epoll is not None:
            self._epoll.close()
        if self._owners is not None:
            self._owners.close()
        if self._tracking_added:
            try:
                remove_tracking_rule()
            except Exception as exc:
                log.warning("conntrack: could not remove table inet %s: %s", CT_TABLE, exc)
            self._tracking_added = False
        self.sysctls.restore()

    def summary(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "messages": self.messages,
            "malformed_messages": self.malformed,
            "events_lost": self._kernel_drops(),
            "enobufs": self.overruns,
            "redumps": self.redumps,
            "late_new": self.late_new,
            "lost_end": self.lost_end,
            "flows_new": self.flows_new,
            "flows_end": self.flows_end,
            "flows_open": len(self._open),
            "flows_dumped": self.dumped,
            "flows_evicted": self.evicted,
            "flows_filtered": self.filtered,
            "unknown_end": self.unknown_end,
        }
        if self._owners is not None:
            st = self._owners.stats
            s["attribution"] = dict(st.by_attribution)
            s["proc_scans"] = st.scans
            s["proc_scan_seconds"] = round(st.scan_seconds, 6)
            s["proc_skipped"] = st.proc_skipped
        if self.hold is not None:
            s["hold"] = self.hold.summary()
        return s

    def _kernel_drops(self) -> int:
        """Events the kernel dropped for us (exact when /proc/net/netlink says so)."""
        if self._events is not None and not self._closed:
            drops = self._events.kernel_drops()
            if drops is not None:
                self._drops = drops
        return max(self._drops, self.overruns)

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Event]:
        self.start()
        ev = self._events
        ep = self._epoll
        assert ev is not None and ep is not None
        pending = self._pending
        hold = self.hold
        while True:
            if pending:
                yield from pending
                pending.clear()
            if self._stopping:
                break
            try:
                ready = ep.poll(self.poll_interval)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if not ready:
                continue
            if hold is not None:
                hold.process()
            self._drain(ev)
        self._finish()
        if pending:
            yield from pending
            pending.clear()

    def _drain(self, ev: NetlinkSocket, limit: int = 4096) -> None:
        """Read what waits on the event socket (at most ``limit`` datagrams).

        After ENOBUFS the kernel drops further messages *silently* until our queue has
        been read empty; what waited is still valid and is processed. Once the queue is
        read empty, the table is dumped to find what was lost (a loss during the dump
        raises ENOBUFS again, and leads to another dump). The kernel's drop counter is
        also checked once a second, for losses it did not report.
        """
        data: memoryview | None = None
        for _ in range(limit):
            try:
                data = ev.recv(block=False)
            except Overrun:
                self.overruns += 1
                if not self._resync:
                    log.warning(
                        "conntrack: the kernel dropped events (ENOBUFS, %d so far): the "
                        "table is read again once the backlog is done",
                        self.overruns,
                    )
                self._resync = True
                continue
            if data is None:
                break
            self.feed(data)
            if len(self._closing) >= CLOSING_BATCH:
                self.flush_closing()
        self.flush_closing()
        now = time.monotonic()
        if now - self._drops_checked >= 1.0:
            self._drops_checked = now
            before = self._drops
            if self._kernel_drops() > before:
                self._resync = True
        if self._resync and data is None:
            self._resync = False
            self._sync(initial=False)

    def take_events(self) -> list[Event]:
        """The events queued by :meth:`feed` so far (and forget them)."""
        out = list(self._pending)
        self._pending.clear()
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Process one datagram of ctnetlink messages (events queue up for iteration)."""
        msgs, ok = split_messages(data)
        if not ok:
            self.malformed += 1
        for m in msgs:
            self.messages += 1
            t = m.type
            if t in (CT_NEW_TYPE, CT_DELETE_TYPE):
                if t == CT_NEW_TYPE and m.flags & NLM_F_CREATE:
                    entry = decode_ct_payload(t & 0xFF, m.flags, m.payload)
                    if entry is None:
                        self.malformed += 1
                    else:
                        self._on_new(entry, None)
                    continue
                # an update or a destroy: a known flow needs only its id and counters
                quick = decode_ct_counters(m.payload)
                if quick is None:
                    self.malformed += 1
                    continue
                if quick.ct_id is not None and quick.ct_id in self._open:
                    if t == CT_DELETE_TYPE:
                        self._end(quick.ct_id, self._open[quick.ct_id], quick, closed_early=False)
                    elif self.tcp_end_at_close and quick.tcp_state in _TCP_CLOSED:
                        self._closing[quick.ct_id] = quick
                    continue
                if t == CT_DELETE_TYPE or quick.ct_id is None:
                    entry = decode_ct_payload(t & 0xFF, m.flags, m.payload)
                    if entry is None:
                        self.malformed += 1
                    elif t == CT_DELETE_TYPE:
                        self._on_destroy(entry)
                    else:
                        self._on_update(entry)
            elif t == NLMSG_OVERRUN:
                self.overruns += 1
            elif t == NLMSG_ERROR:
                self.malformed += 1

    # ------------------------------------------------------------------ per entry
    def _direction(self, entry: CtEntry) -> Direction:
        local = self.local_addrs
        src_local = entry.orig.src in local
        dst_local = entry.orig.dst in local
        if entry.reply is not None and not dst_local:
            dst_local = entry.reply.src in local  # DNAT to this host
        if src_local and dst_local:
            return Direction.LOCAL
        if src_local:
            return Direction.OUT
        if dst_local:
            return Direction.IN
        return Direction.TRANSIT

    def _flow_id(self, ct_id: int | None, entry: CtEntry) -> str:
        if ct_id is None:
            o = entry.orig
            return f"ct-{o.proto}-{o.src.hex()}-{o.sport}-{o.dst.hex()}-{o.dport}"
        reused = self._ended.get(ct_id, 0)
        return f"ct-{ct_id:08x}" if not reused else f"ct-{ct_id:08x}-{reused + 1}"

    def _key(self, entry: CtEntry) -> int:
        if entry.ct_id is not None:
            return entry.ct_id
        o = entry.orig
        return hash((o.proto, o.src, o.sport, o.dst, o.dport, o.icmp_id, entry.zone))

    def _on_new(self, entry: CtEntry, ts: float | None) -> None:
        key = self._key(entry)
        if key in self._open:
            return  # seen already (a re-dump raced the event)
        o = entry.orig
        if self.protocols is not None and o.proto not in self.protocols:
            self.filtered += 1
            return
        f = _Flow()
        f.flow = self._flow_id(entry.ct_id, entry)
        f.first = ts if ts is not None else self.clock()
        f.family = 4 if entry.family == AF_INET else 6
        f.ipproto = o.proto
        f.proto = Proto.from_number(o.proto)
        f.src = _addr(o.src)
        f.dst = _addr(o.dst)
        f.sport = o.sport
        f.dport = o.dport
        f.direction = self._direction(entry)
        f.orig = o
        f.zone = entry.zone
        f.orig_pkts = entry.orig_pkts or 0
        f.orig_bytes = entry.orig_bytes or 0
        f.reply_pkts = entry.reply_pkts or 0
        f.reply_bytes = entry.reply_bytes or 0
        f.process, f.attribution = self._owner(entry, f.direction)
        self._open[key] = f
        if len(self._open) > self.max_flows:
            self._open.popitem(last=False)
            self.evicted += 1
        self.flows_new += 1
        self._pending.append(self._event(f, EventType.NEW, f.first))

    def _owner(
        self, entry: CtEntry, direction: Direction
    ) -> tuple[ProcessInfo | None, Attribution]:
        if direction is Direction.TRANSIT:
            return None, Attribution.NONE
        o = entry.orig
        if direction is Direction.IN and entry.reply is not None:
            r = entry.reply
            local, lport, remote, rport = r.src, r.sport, r.dst, r.dport
        else:
            local, lport, remote, rport = o.src, o.sport, o.dst, o.dport
        family = 4 if len(local) == 4 else 6
        if self.hold is not None:
            held = self.hold.take(entry.ct_id, o.proto, o.src, o.sport, o.dst, o.dport)
            if held is not None:
                return held
        owners = self.owners
        if owners is None:
            return None, Attribution.NONE
        return owners.owner(family, o.proto, local, lport, remote, rport)

    def _on_update(self, entry: CtEntry) -> None:
        if not self.tcp_end_at_close or entry.tcp_state not in _TCP_CLOSED:
            return
        key = self._key(entry)
        f = self._open.get(key)
        if f is None:
            return
        self._closing[key] = entry  # its counters are read in a batch (flush_closing)

    def _on_destroy(self, entry: CtEntry) -> None:
        key = self._key(entry)
        f = self._open.get(key)
        if f is None:
            if key in self._ended or entry.tcp_state in _TCP_CLOSED:
                return  # ended at FIN/RST already, or closed before we started
            if self.protocols is not None and entry.orig.proto not in self.protocols:
                return
            # a flow we never saw begin (its NEW was lost or evicted): end it all the same
            self.unknown_end += 1
            start = entry.start_ns / 1e9 if entry.start_ns else None
            self._on_new(entry, start)
            f = self._open.get(key)
            if f is None:
                return
            self._pending.pop()  # only the end is reported
            self.flows_new -= 1
        self._end(key, f, entry, closed_early=False)

    def _end(self, key: int, f: _Flow, entry: CtEntry | CtCounters, *, closed_early: bool) -> None:
        del self._open[key]
        self._ended[key] = self._ended.get(key, 0) + 1
        self._ended.move_to_end(key)
        if len(self._ended) > self.max_flows:
            self._ended.popitem(last=False)
        if entry.orig_pkts is not None:
            f.orig_pkts, f.orig_bytes = entry.orig_pkts, entry.orig_bytes or 0
        if entry.reply_pkts is not None:
            f.reply_pkts, f.reply_bytes = entry.reply_pkts, entry.reply_bytes or 0
        now = self.clock()
        duration: float | None = None
        ts = now
        if entry.start_ns and entry.stop_ns and entry.stop_ns >= entry.start_ns:
            duration = (entry.stop_ns - entry.start_ns) / 1e9
            ts = entry.stop_ns / 1e9
        elif entry.start_ns:
            duration = max(0.0, now - entry.start_ns / 1e9)
        else:
            duration = max(0.0, now - f.first)
        self.flows_end += 1
        self._pending.append(self._event(f, EventType.END, ts, duration))

    def _event(self, f: _Flow, kind: EventType, ts: float, duration: float | None = None) -> Event:
        return Event(
            ts=ts,
            event=kind,
            proto=f.proto,
            ipproto=f.ipproto,
            family=f.family,
            src=f.src,
            dst=f.dst,
            sport=f.sport,
            dport=f.dport,
            flow=f.flow,
            direction=f.direction,
            orig_bytes=f.orig_bytes,
            resp_bytes=f.reply_bytes,
            orig_pkts=f.orig_pkts,
            resp_pkts=f.reply_pkts,
            duration=duration,
            netns=self.netns,
            process=f.process if f.process is not None else ProcessInfo(),
            attribution=f.attribution,
            source=Source.CONNTRACK,
        )

    # ------------------------------------------------------------------ table reads
    def flush_closing(self) -> None:
        """End the TCP flows that closed, with their counters as of now: one GET per
        entry, all sent in one datagram, the answers read back by sequence number."""
        closing = self._closing
        if not closing:
            return
        self._closing = {}
        q = self._query
        answers: dict[int, CtCounters] = {}
        if q is not None:
            by_seq: dict[int, int] = {}
            reqs = []
            for key in closing:
                f = self._open.get(key)
                if f is None or f.orig is None:
                    continue
                seq = q.next_seq()
                by_seq[seq] = key
                reqs.append(ct_get_request(seq, f.orig, f.zone, ack=False))
            try:
                if reqs:
                    q.send(b"".join(reqs))
                while by_seq and q.wait(1.0):
                    data = q.recv(block=False)
                    if data is None:
                        continue
                    for m in split_messages(data)[0]:
                        key = by_seq.pop(m.seq, -1)
                        got = decode_ct_counters(m.payload) if m.type == CT_NEW_TYPE else None
                        if got is not None and key != -1:
                            answers[key] = got
            except (Overrun, OSError) as exc:
                log.debug("conntrack: reading closed flows' counters failed: %s", exc)
        for key, entry in closing.items():
            f = self._open.get(key)
            if f is not None:
                self._end(key, f, answers.get(key, entry), closed_early=True)

    def _dump(self) -> dict[int, NlMsg]:
        """The table's rows by flow key, undecoded (most are known and need no tuple)."""
        q = self._query
        assert q is not None
        seq = q.next_seq()
        table: dict[int, NlMsg] = {}
        for m in q.dump(ct_dump_request(seq), seq, what="conntrack dump"):
            quick = decode_ct_counters(m.payload)
            if quick is not None and quick.ct_id is not None:
                table[quick.ct_id] = m
                continue
            e = decode_ct(m)
            if e is None:
                self.malformed += 1
                continue
            table[self._key(e)] = m
        return table

    def _sync(self, *, initial: bool) -> None:
        """Dump the table: report flows not known yet; after a loss, end vanished ones."""
        try:
            table = self._dump()
        except (NetlinkError, Overrun, RuntimeFailure, OSError) as exc:
            log.warning("conntrack: dumping the table failed: %s", exc)
            return
        self._drops_synced = self._drops
        if not initial:
            self.redumps += 1
            for key in [k for k in self._open if k not in table]:
                self.lost_end += 1
                f = self._open[key]
                self._end(key, f, _NO_COUNTERS, closed_early=False)
        for key, m in table.items():
            if key in self._open or key in self._ended:
                continue
            e = decode_ct(m)
            if e is None:
                self.malformed += 1
                continue
            closed = e.orig.proto == _IPPROTO_TCP and e.tcp_state in _TCP_CLOSED
            if closed and initial:
                continue  # finished before we started
            start = e.start_ns / 1e9 if e.start_ns else None
            self._on_new(e, start)
            if initial:
                self.dumped += 1
                continue
            self.late_new += 1
            if closed and key in self._open:  # began and ended while events were lost
                self._end(key, self._open[key], e, closed_early=True)

    def _finish(self) -> None:
        """End every open flow, with its counters as of now (after reporting what a loss
        not yet reconciled hid)."""
        self.flush_closing()
        if self._resync or self._kernel_drops() > self._drops_synced:
            self._resync = False
            self._sync(initial=False)
        if not self._open:
            return
        try:
            table = self._dump()
        except (NetlinkError, Overrun, RuntimeFailure, OSError):
            table = {}
        for key in list(self._open):
            f = self._open[key]
            m = table.get(key)
            quick = None if m is None else decode_ct_counters(m.payload)
            self._end(key, f, quick if quick is not None else _NO_COUNTERS, closed_early=False)


#: An entry that carries no counters (a flow whose end we did not see).
_NO_COUNTERS = CtCounters(None, None, None, None, None, None, None, None)
