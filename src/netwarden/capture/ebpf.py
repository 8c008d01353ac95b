"""The eBPF backend: flows attributed to their process at the socket hooks.

:class:`EbpfSource` loads ``netwarden.bpf.o`` (built by ``scripts/build-bpf.sh``), attaches
its programs (cgroup ones on the root of the cgroup v2 hierarchy, so every socket of the host
is seen) and turns the ring buffer's records into :class:`~netwarden.events.Event` objects
with ``source=ebpf`` and ``attribution=kernel``:

* outbound TCP (``connect()``), accepted TCP (owned by the listening socket's process) and
  UDP (one flow per socket and remote, for connected and unconnected sends and for
  datagrams received by a socket from a new remote), IPv4 and IPv6;
* raw IP and ICMP (ping) sockets' flows (one per socket, remote and ICMP echo identifier,
  started by a send; owned by the socket's creator), and the IP packets that packet
  (AF_PACKET) sockets send, with their replies (owned by the sending process);
* ``end`` at TCP close, at the release of a datagram socket, after a datagram flow's idle
  timeout, and on :meth:`EbpfSource.stop` for every flow still open, each with IP-layer
  bytes and packets per direction;
* ``probe`` for a TCP SYN or a UDP datagram to a closed port;
* a flow with both ends in the same namespace is one ``local`` record, the initiator's.

The process identity (pid, thread and main-thread names, uid, gid, cgroup) is captured in
the kernel in the caller's context; /proc adds exe, cmdline, unit and container when the
process is still there (:class:`~netwarden.proc.ProcReader`), and the kernel's fields are
kept when it is not.

Scope: by default only the network namespace netwarden runs in (INTERFACE.md "Scope");
``all_netns=True`` reports every namespace, each event carrying its ``netns``.

Everything this machine lacks (root, kernel BTF, libbpf, the object file, a hook the kernel
refuses) raises :class:`~netwarden.errors.MissingCapability` with one line saying what.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, Final

from netwarden.closing import Closing
from netwarden.errors import MissingCapability, RuntimeFailure
from netwarden.events import Attribution, Direction, Event, EventType, ProcessInfo, Proto, Source
from netwarden.stats.flows import Timeouts
from netwarden.wire.ebpf_records import (
    CTL_FLUSH,
    CTL_MODE,
    CTL_SNAPSHOT,
    CTL_WAKEUP,
    DIR_IN,
    DIR_LOCAL,
    F_HIDDEN,
    F_NO_OWNER,
    F_PACKET,
    F_RAW,
    FLOW_SIZE,
    HOOK_NAMES,
    REC_END,
    REC_NEW,
    REC_PROBE,
    REC_RELEASE,
    RECORD_SIZE,
    RECORD_STRUCT,
    STAT_NAMES,
    Counters,
    Record,
    RecordError,
    address,
    decode_flow,
    decode_record,
    decode_records,
    decode_stats,
    family_of,
    flow_key,
)

if TYPE_CHECKING:
    from netwarden.capture.libbpf import BpfLink, BpfObject, Libbpf, RingBuffer
    from netwarden.proc import ProcReader

log = logging.getLogger(__name__)

_NO_PROCESS: Final = ProcessInfo()

__all__ = ["EbpfSource", "check", "find_object", "make_event"]

OBJECT_NAME: Final = "netwarden.bpf.o"
BTF_PATH: Final = "/sys/kernel/btf/vmlinux"

#: Programs attached at start: name → (kind, what it gives, required).
PROGRAMS: Final[dict[str, tuple[str, str, bool]]] = {
    "nw_sockops": ("cgroup", "sockops (TCP connect, accept, listen)", True),
    "nw_connect4": ("cgroup", "cgroup/connect4 (UDP identity)", True),
    "nw_connect6": ("cgroup", "cgroup/connect6 (UDP identity)", True),
    "nw_sendmsg4": ("cgroup", "cgroup/sendmsg4 (UDP identity)", True),
    "nw_sendmsg6": ("cgroup", "cgroup/sendmsg6 (UDP identity)", True),
    "nw_egress": ("cgroup", "cgroup_skb/egress (counters, UDP flows)", True),
    "nw_ingress": ("cgroup", "cgroup_skb/ingress (counters, UDP flows)", True),
    "nw_release": ("cgroup", "cgroup/sock_release (UDP flow ends)", True),
    "nw_tcp_state": ("tracing", "tp_btf/inet_sock_set_state (TCP flow ends)", True),
    "nw_bind4": ("cgroup", "cgroup/post_bind4 (UDP server identity)", False),
    "nw_bind6": ("cgroup", "cgroup/post_bind6 (UDP server identity)", False),
    "nw_tcp_reset": ("tracing", "tp_btf/tcp_send_reset (TCP probes)", False),
    "nw_skb_drop": ("tracing", "tp_btf/kfree_skb (UDP probes)", False),
    "nw_flush": ("iter", "iter/bpf_sk_storage_map (open TCP flows at stop)", False),
    "nw_prime": ("iter", "iter/task_file (owners of sockets made before start)", False),
    "nw_sock_create": ("cgroup", "cgroup/sock_create (raw and ICMP socket identity)", False),
    "nw_dev_queue": ("tracing", "tp_btf/net_dev_queue (packet sockets' sends)", False),
    "nw_dev_recv": ("tracing", "tp_btf/netif_receive_skb (replies to packet sockets)", False),
}

_TCP: Final = 6
_AF_INET: Final = 2
_AF_INET6: Final = 10
_UDP: Final = 17
_ICMP: Final = 1
_ICMPV6: Final = 58
#: IP protocols whose flows have ports (the others' sport and dport are null)
_PORTED: Final = frozenset((6, 17, 132, 136))
#: records of flows kept in the kernel's datagram flow table (not TCP sockets' storage)
_F_MAPPED: Final = F_RAW | F_PACKET
#: records the fast path of EbpfSource._drain leaves to the full one
_F_SLOW: Final = F_RAW | F_PACKET | F_HIDDEN | F_NO_OWNER
_FAILED_PROG = re.compile(r"prog '(\w+)': (?:BPF program load failed|failed to load)")

# capability bits (linux/capability.h)
_CAP_NET_ADMIN: Final = 12
_CAP_SYS_ADMIN: Final = 21
_CAP_PERFMON: Final = 38
_CAP_BPF: Final = 39


def _has_caps() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    eff = int(line.split()[1], 16)
                    need = (1 << _CAP_BPF) | (1 << _CAP_PERFMON) | (1 << _CAP_NET_ADMIN)
                    return eff & need == need or bool(eff & (1 << _CAP_SYS_ADMIN))
    except (OSError, ValueError):
        pass
    return False


def find_object(path: str | os.PathLike[str] | None = None) -> str:
    """The eBPF object file: ``path``, ``$NETWARDEN_BPF_OBJ``, next to the package, or the
    repository's ``build/bpf``. MissingCapability when none exists."""
    from netwarden.capture.libbpf import find_object as _find_object

    return _find_object(OBJECT_NAME, "NETWARDEN_BPF_OBJ", "eBPF", path)


# ---------------------------------------------------------------------------- records → events
# Event() costs about 5 µs: a frozen dataclass sets each of its 22 slots through
# object.__setattr__. Records come by the hundred thousand per second, so the events of this
# backend are made by writing the slots through their descriptors (about 2 µs); the result
# is an ordinary Event. Should Event's fields ever differ from these, the constructor is used.
_EVENT_FIELDS: Final = (
    "ts", "event", "proto", "ipproto", "family", "src", "dst", "sport", "dport", "flow",
    "direction", "orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts", "duration", "iface",
    "netns", "process", "attribution", "source", "scan",
)  # fmt: skip
_FAST: Final = tuple(f.name for f in fields(Event)) == _EVENT_FIELDS and all(
    type(Event.__dict__.get(n)).__name__ == "member_descriptor" for n in _EVENT_FIELDS
)


def _setters() -> tuple[Any, ...]:
    if not _FAST:
        return (None,) * len(_EVENT_FIELDS)
    return tuple(Event.__dict__[n].__set__ for n in _EVENT_FIELDS)


(
    _s_ts, _s_event, _s_proto, _s_ipproto, _s_family, _s_src, _s_dst, _s_sport, _s_dport,
    _s_flow, _s_direction, _s_ob, _s_rb, _s_op, _s_rp, _s_duration, _s_iface, _s_netns,
    _s_process, _s_attribution, _s_source, _s_scan,
) = _setters()  # fmt: skip
_new = object.__new__
_PROTOS: Final = tuple(Proto.from_number(n) for n in range(256))
_EBPF = Source.EBPF
_KERNEL = Attribution.KERNEL
_NONE = Attribution.NONE


def _event(
    ts: float,
    event: EventType,
    ipproto: int,
    family: int,
    src: IPv4Address | IPv6Address,
    dst: IPv4Address | IPv6Address,
    sport: int | None,
    dport: int | None,
    flow: str | None,
    direction: Direction,
    ob: int,
    rb: int,
    op: int,
    rp: int,
    duration: float | None,
    netns: int,
    process: ProcessInfo,
    attribution: Attribution,
) -> Event:
    """``Event(...)`` with ``source=ebpf``, no ``iface`` and no ``scan``, made fast."""
    if not _FAST:
        return Event(
            ts=ts, event=event, proto=_PROTOS[ipproto], ipproto=ipproto, family=family,
            src=src, dst=dst, sport=sport, dport=dport, flow=flow, direction=direction,
            orig_bytes=ob, resp_bytes=rb, orig_pkts=op, resp_pkts=rp, duration=duration,
            netns=netns, process=process, attribution=attribution, source=_EBPF,
        )  # fmt: skip
    e: Event = _new(Event)
    _s_ts(e, ts)
    _s_event(e, event)
    _s_proto(e, _PROTOS[ipproto])
    _s_ipproto(e, ipproto)
    _s_family(e, family)
    _s_src(e, src)
    _s_dst(e, dst)
    _s_sport(e, sport)
    _s_dport(e, dport)
    _s_flow(e, flow)
    _s_direction(e, direction)
    _s_ob(e, ob)
    _s_rb(e, rb)
    _s_op(e, op)
    _s_rp(e, rp)
    _s_duration(e, duration)
    _s_iface(e, None)
    _s_netns(e, netns)
    _s_process(e, process)
    _s_attribution(e, attribution)
    _s_source(e, _EBPF)
    _s_scan(e, None)
    return e


def _flow_event(
    rtype: int,
    proto: int,
    af: int,
    rdir: int,
    lport: int | None,
    rport: int | None,
    netns: int,
    ts_ns: int,
    laddr: bytes,
    raddr: bytes,
    tx_bytes: int,
    rx_bytes: int,
    tx_pkts: int,
    rx_pkts: int,
    first_ns: int,
    last_ns: int,
    wall_offset_ns: int,
    flow_id: str | None,
    process: ProcessInfo,
) -> Event:
    """The event of a ``new``/``end`` record, from its fields (see :func:`make_event`)."""
    local = address(laddr)
    remote = address(raddr)
    family = family_of(af, raddr)
    ts = (ts_ns + wall_offset_ns) / 1e9
    if proto not in _PORTED:
        lport = rport = None
    is_end = rtype == REC_END
    attribution = _KERNEL if process.pid is not None else _NONE
    duration = max(0, last_ns - first_ns) / 1e9 if is_end else None
    kind = EventType.END if is_end else EventType.NEW
    if rdir == DIR_IN:
        return _event(
            ts, kind, proto, family, remote, local, rport, lport, flow_id, Direction.IN,
            rx_bytes, tx_bytes, rx_pkts, tx_pkts, duration, netns, process, attribution,
        )  # fmt: skip
    return _event(
        ts, kind, proto, family, local, remote, lport, rport, flow_id,
        Direction.LOCAL if rdir == DIR_LOCAL else Direction.OUT,
        tx_bytes, rx_bytes, tx_pkts, rx_pkts, duration, netns, process, attribution,
    )  # fmt: skip


def make_event(
    rec: Record,
    *,
    wall_offset_ns: int,
    flow_id: str | None,
    process: ProcessInfo,
) -> Event:
    """The event of a ``new``, ``end`` or ``probe`` record. Pure.

    ``wall_offset_ns`` turns the kernel's monotonic nanoseconds into Unix time. Flows of
    protocols without ports (ICMP, raw IP protocols) have null ports; an ICMP flow's key
    (echo identifier or message type) is in the record's ports.
    """
    c = rec.counters
    if rec.type == REC_PROBE:
        ported = rec.proto in _PORTED
        return _event(
            (rec.ts_ns + wall_offset_ns) / 1e9, EventType.PROBE, rec.proto, rec.family,
            address(rec.raddr), address(rec.laddr), rec.rport if ported else None,
            rec.lport if ported else None, None,
            Direction.LOCAL if rec.dir == DIR_LOCAL else Direction.IN,
            c.rx_bytes, 0, c.rx_pkts, 0, None, rec.netns, _NO_PROCESS, _NONE,
        )  # fmt: skip
    return _flow_event(
        rec.type, rec.proto, rec.af, rec.dir, rec.lport, rec.rport, rec.netns, rec.ts_ns,
        rec.laddr, rec.raddr, c.tx_bytes, c.rx_bytes, c.tx_pkts, c.rx_pkts, c.first_ns,
        c.last_ns, wall_offset_ns, flow_id, process,
    )  # fmt: skip


def _with_counters(ev: Event, c: Counters | None, ts: float) -> Event:
    """A datagram flow's ``end`` from its ``new`` and its final counters (None: the kernel
    lost them; the ``new`` event's are kept, without a duration)."""
    if c is None:
        ob, rb, op, rp = ev.orig_bytes, ev.resp_bytes, ev.orig_pkts, ev.resp_pkts
        duration = None
    elif ev.direction != Direction.IN:
        ob, rb, op, rp = c.tx_bytes, c.rx_bytes, c.tx_pkts, c.rx_pkts
        duration = max(0, c.last_ns - c.first_ns) / 1e9
    else:
        ob, rb, op, rp = c.rx_bytes, c.tx_bytes, c.rx_pkts, c.tx_pkts
        duration = max(0, c.last_ns - c.first_ns) / 1e9
    assert ev.src is not None and ev.dst is not None and ev.netns is not None
    return _event(
        ts, EventType.END, ev.ipproto, ev.family, ev.src, ev.dst, ev.sport, ev.dport, ev.flow,
        ev.direction, ob, rb, op, rp, duration, ev.netns, ev.process, ev.attribution,
    )  # fmt: skip


@dataclass(slots=True)
class _Flow:
    """A datagram flow (UDP, raw IP, ICMP, packet socket) open in the kernel's flow table."""

    key: bytes
    flow: int
    proto: int
    new: Event | None  # None for a hidden (bookkeeping-only) flow


# ---------------------------------------------------------------------------- the source
class EbpfSource(Closing):
    """Live flows from the kernel's socket hooks; iterate for events.

    Same shape as :class:`~netwarden.capture.packets.SniffSource`: iterate (blocks, yields
    events as they come), ``fileno()`` (readable when records are ready), ``stop()``
    (signal-safe: iteration ends after emitting ``end`` for the flows still open),
    ``close()`` (detaches everything), ``summary()``.

    ``all_netns`` reports every network namespace, ``netns`` (an inode number) one other
    than our own. ``ring_size`` is the ring buffer's size in bytes (a power of two; a record
    takes 200 bytes; the whole ring counts in the process's PSS, as the kernel maps it in at
    once: 4 MiB hold about 20000 records, a quarter second of a 40000 connections/s storm).
    ``udp_flows`` bounds the kernel's datagram flow table (UDP, raw IP, ICMP and packet
    sockets' flows; LRU), ``timeouts`` give the idle time after which such a
    flow ends (UDP's, ICMP's, or the generic one; checked every ``sweep_interval``
    seconds). ``proc`` reads /proc for exe, cmdline, unit and container (``enrich=False``:
    only what the kernel captured). ``cgroup_root``: where the cgroup v2 hierarchy is
    (found or mounted when not given). ``wakeup_bytes``: the kernel wakes the reader once
    that many bytes of records wait (default an eighth of the ring; iteration also looks
    every ``poll_interval``); :meth:`fileno` sets it to 0 (woken for every record).
    """

    def __init__(
        self,
        *,
        all_netns: bool = False,
        netns: int | None = None,
        obj_path: str | os.PathLike[str] | None = None,
        ring_size: int = 4 << 20,
        udp_flows: int = 65536,
        poll_interval: float = 0.2,
        timeouts: Timeouts | None = None,
        sweep_interval: float = 5.0,
        proc: ProcReader | None = None,
        enrich: bool = True,
        cgroup_root: str | None = None,
        wakeup_bytes: int | None = None,
    ) -> None:
        if ring_size < 4096 or ring_size & (ring_size - 1):
            raise ValueError("ring_size must be a power of two of at least 4096")
        # woken for every record, a reader spends more on waking than on records: the
        # kernel wakes it once an eighth of the ring waits, and it looks every poll interval
        self.wakeup_bytes = ring_size // 8 if wakeup_bytes is None else wakeup_bytes
        if not _has_caps():
            raise MissingCapability(
                "the eBPF backend needs root (CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)",
                "run netwarden as root, or use --backend conntrack or sniff",
            )
        if not os.path.exists(BTF_PATH):
            raise MissingCapability(
                f"the kernel has no BTF ({BTF_PATH} is missing)",
                "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
            )
        from netwarden.capture.libbpf import load_libbpf
        from netwarden.cgroup2 import cgroup2_root

        self._lib: Libbpf = load_libbpf()
        self.obj_path = find_object(obj_path)
        if all_netns:
            self.netns: int | None = None
        elif netns is not None:
            self.netns = netns
        else:
            self.netns = os.stat("/proc/self/ns/net").st_ino
        self.poll_interval = poll_interval
        self.timeouts = timeouts or Timeouts()
        self.sweep_interval = sweep_interval
        self.ring_size = ring_size
        self.udp_flows_max = udp_flows
        self.enrich = enrich
        if enrich and proc is None:
            from netwarden.proc import ProcReader

            proc = ProcReader()
        self._proc = proc
        self._clk_tck = os.sysconf("SC_CLK_TCK")
        self._pcache: OrderedDict[tuple[int, int], ProcessInfo] = OrderedDict()
        self._prefix = secrets.token_hex(3)
        self._raw: list[bytes] = []
        self._dgram: dict[int, dict[bytes, _Flow]] = {}  # by socket cookie
        self._dgram_open = 0
        self._stopping = False
        self._closed = False
        self._close_pending = False
        self._busy: int | None = None
        self._lock = threading.Lock()
        self._links: list[BpfLink] = []
        self._rb: RingBuffer | None = None
        self._obj: BpfObject | None = None
        self._cgroup_fd = -1
        self.unavailable: dict[str, str] = {}
        self.records = 0
        self.records_bad = 0
        self.events = 0
        self.dgram_ended_evicted = 0
        self._final_stats: dict[str, dict[str, int]] | None = None
        self._last_sweep = time.monotonic()
        self._ncpus = self._lib.num_possible_cpus()

        self.cgroup_root = cgroup_root or cgroup2_root()
        try:
            self._cgroup_fd = os.open(self.cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise MissingCapability(
                f"cannot open the cgroup v2 root {self.cgroup_root} ({exc.strerror})",
                "run as root",
            ) from exc
        try:
            self._obj = self._load()
            self._attach()
            self._prime()
            from netwarden.capture.libbpf import RingBuffer

            self._rb = RingBuffer(self._lib, self._obj.map("nw_events").fd, self._raw.append)
            self._flows_fd = self._obj.map("nw_flows").fd
            self._stats_fd = self._obj.map("nw_stats").fd
            self._ctl_fd = self._obj.map("nw_ctl").fd
            self._socks_fd = self._obj.map("nw_socks").fd
            self._set_ctl(CTL_WAKEUP, self.wakeup_bytes)
        except BaseException:
            self.close()
            raise
        log.info(
            "eBPF backend attached (%s; %s)",
            "all network namespaces" if self.netns is None else f"netns {self.netns}",
            f"unavailable: {', '.join(sorted(self.unavailable))}"
            if self.unavailable
            else "all hooks",
        )

    # ------------------------------------------------------------------ set-up
    def _open(self, disabled: set[str]) -> BpfObject:
        from netwarden.capture.libbpf import BpfObject

        obj = BpfObject(self._lib, self.obj_path)
        try:
            obj.map(".rodata").set_initial_value(struct.pack("<I", self.netns or 0))
            obj.map("nw_events").set_max_entries(self.ring_size)
            obj.map("nw_flows").set_max_entries(self.udp_flows_max)
            for name in disabled:
                obj.program(name).set_autoload(False)
        except BaseException:
            obj.close()
            raise
        return obj

    def _load(self) -> BpfObject:
        from netwarden.capture.libbpf import BpfError, messages

        disabled: set[str] = set()
        while True:
            try:
                obj = self._open(disabled)
            except BpfError as exc:
                raise MissingCapability(
                    f"cannot open the eBPF object {self.obj_path}: {exc.strerror}",
                    "rebuild it with scripts/build-bpf.sh",
                ) from exc
            messages(clear=True)
            try:
                obj.load()
                return obj
            except BpfError as exc:
                obj.close()
                log_lines = messages()
                failed = None
                for line in log_lines:
                    m = _FAILED_PROG.search(line)
                    if m:
                        failed = m.group(1)
                        break
                reason = _reason(log_lines, exc)
                if failed in PROGRAMS and not PROGRAMS[failed][2] and failed not in disabled:
                    log.warning(
                        "eBPF: %s refused by this kernel (%s); continuing without it",
                        PROGRAMS[failed][1],
                        reason,
                    )
                    self.unavailable[failed] = reason
                    disabled.add(failed)
                    continue
                what = PROGRAMS[failed][1] if failed in PROGRAMS else "the eBPF object"
                raise MissingCapability(
                    f"the kernel refused {what}: {reason}",
                    "use --backend conntrack or sniff (the eBPF backend needs Linux 6.2 or later)",
                ) from exc

    def _attach(self) -> None:
        from netwarden.capture.libbpf import BpfError

        assert self._obj is not None
        for name, (kind, what, required) in PROGRAMS.items():
            if name in self.unavailable or kind == "iter":
                continue
            prog = self._obj.program(name)
            try:
                if kind == "cgroup":
                    link = prog.attach_cgroup(self._cgroup_fd)
                else:
                    link = prog.attach()
            except BpfError as exc:
                reason = exc.strerror or str(exc)
                if required:
                    raise MissingCapability(
                        f"the kernel refused to attach {what}: {reason}",
                        "use --backend conntrack or sniff",
                    ) from exc
                log.warning("eBPF: cannot attach %s (%s); continuing without it", what, reason)
                self.unavailable[name] = reason
                continue
            self._links.append(link)

    def _prime(self) -> None:
        """Record the owners of listening and UDP sockets that exist already."""
        from netwarden.capture.libbpf import BpfError

        if "nw_prime" in self.unavailable:
            return
        assert self._obj is not None
        link = None
        try:
            link = self._obj.program("nw_prime").attach_iter()
            link.read_iter()
        except BpfError as exc:
            reason = exc.strerror or str(exc)
            log.warning("eBPF: cannot learn the owners of existing sockets (%s)", reason)
            self.unavailable["nw_prime"] = reason
        finally:
            if link is not None:
                link.destroy()

    # ------------------------------------------------------------------ the loop
    def _set_ctl(self, slot: int, value: int) -> None:
        assert self._obj is not None
        self._obj.update(self._ctl_fd, struct.pack("<I", slot), struct.pack("<Q", value))

    def fileno(self) -> int:
        """A descriptor readable when records wait (for an event loop; then call
        :meth:`poll`). From the first call on, the kernel wakes it for every record."""
        if self._rb is None or self._obj is None:
            raise ValueError("source closed")
        if self.wakeup_bytes:
            self.wakeup_bytes = 0
            self._set_ctl(CTL_WAKEUP, 0)
        return self._rb.epoll_fd()

    def stop(self) -> None:
        """Ask the iteration to finish (signal-safe): open flows are ended, then it stops."""
        self._stopping = True

    def __iter__(self) -> Iterator[Event]:
        self._enter()
        try:
            while not self._stopping:
                if self._closed or not self._wait(self.poll_interval):
                    return
                yield from self._drain()
                now = time.monotonic()
                if now - self._last_sweep >= self.sweep_interval:
                    self._last_sweep = now
                    yield from self._sweep()
            if not self._wait(0):
                return
            yield from self._drain()
            yield from self.flush()
        finally:
            self._leave()

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """Events ready within ``timeout`` seconds (for callers with their own loop)."""
        self._enter()
        try:
            if not self._wait(timeout):
                return []
            out = list(self._drain())
            now = time.monotonic()
            if now - self._last_sweep >= self.sweep_interval:
                self._last_sweep = now
                out.extend(self._sweep())
            return out
        finally:
            self._leave()

    def _wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a wake-up; then the records can be drained (also
        those below the wake-up mark). False when the source is closed."""
        if self._rb is not None:
            if self._rb.poll(max(0, int(timeout * 1000))) == 0:
                self._rb.consume()
            return True
        return False

    def _enter(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeFailure("the eBPF source is closed")
            if self._busy is not None:
                raise RuntimeFailure("the eBPF source is already being read")
            self._busy = threading.get_ident()

    def _leave(self) -> None:
        with self._lock:
            self._busy = None
            close_now = self._close_pending and not self._closed
            if close_now:
                self._closed = True
        if close_now:
            self._close_now()

    def _drain(self) -> Iterator[Event]:
        if not self._raw:
            return
        # the ring buffer's callback appends to this very list (it runs only inside poll)
        raw = self._raw[:]
        self._raw.clear()
        yield from self._records(raw)

    def _records(self, raw: list[bytes]) -> Iterator[Event]:
        wall = time.time_ns() - time.monotonic_ns()
        unpack = RECORD_STRUCT.unpack_from
        pcache = self._pcache
        prefix = self._prefix
        self.records += len(raw)
        for buf in raw:
            # the common record, a TCP flow's new or end whose process is known, straight
            # from its fields (no Record, Ident and Counters objects, no names decoded)
            if len(buf) == RECORD_SIZE:
                f = unpack(buf)
                if (
                    f[1] == _TCP
                    and not f[5] & _F_SLOW
                    and (f[0] == REC_NEW or f[0] == REC_END)
                    and (f[2] == _AF_INET or f[2] == _AF_INET6)
                    and f[3] <= DIR_LOCAL
                ):
                    pkey = (f[15], f[22])
                    process = pcache.get(pkey)
                    if process is not None:
                        pcache.move_to_end(pkey)
                        self.events += 1
                        yield _flow_event(
                            f[0], f[1], f[2], f[3], f[6], f[7], f[9], f[10], f[13], f[14],
                            f[25], f[26], f[27], f[28], f[29], f[30], wall,
                            f"{prefix}-{f[12]:x}", process,
                        )  # fmt: skip
                        continue
            try:
                if len(buf) != RECORD_SIZE:
                    raise RecordError(f"record of {len(buf)} bytes, expected {RECORD_SIZE}")
                rec = decode_record(buf)
            except RecordError as exc:
                self.records_bad += 1
                if self.records_bad == 1:
                    log.warning("eBPF: undecodable record (%s); counting further ones", exc)
                continue
            ev = self._handle(rec, wall)
            if ev is not None:
                self.events += 1
                yield ev
            elif rec.type == REC_RELEASE:
                yield from self._release(rec.cookie, wall)

    def _flow_id(self, flow: int) -> str:
        return f"{self._prefix}-{flow:x}"

    def _handle(self, rec: Record, wall: int) -> Event | None:
        rtype = rec.type
        if rtype == REC_RELEASE:
            return None
        if rtype == REC_PROBE:
            return make_event(rec, wall_offset_ns=wall, flow_id=None, process=_NO_PROCESS)
        known: _Flow | None = None
        if rec.proto != _TCP or rec.flags & _F_MAPPED:
            if rtype == REC_NEW:
                known = self._track(rec)
            else:  # the kernel ended the socket's first flow at its release
                known = self._untrack(rec)
        if rec.flags & F_HIDDEN:
            return None
        process = (
            known.new.process if known is not None and known.new is not None else self._process(rec)
        )
        ev = make_event(rec, wall_offset_ns=wall, flow_id=self._flow_id(rec.flow), process=process)
        if known is not None and rtype == REC_NEW:
            known.new = ev
        return ev

    def _process(self, rec: Record) -> ProcessInfo:
        ident = rec.ident
        proc = self._proc
        if ident is None:
            uid = rec.uid
            return ProcessInfo(uid=uid, user=proc.user(uid) if proc is not None else None)
        key = (ident.tgid, ident.start_boottime_ns)
        cached = self._pcache.get(key)
        if cached is not None:
            self._pcache.move_to_end(key)
            return cached
        comm = ident.pcomm or ident.comm or None
        if proc is None:
            info = ProcessInfo(
                pid=ident.tgid, ppid=ident.ppid or None, uid=ident.uid, gid=ident.gid, comm=comm
            )
        else:
            info = proc.info(
                ident.tgid,
                start_time=ident.start_ticks(self._clk_tck),
                comm=comm,
                uid=ident.uid,
                gid=ident.gid,
            )
            # the kernel's fields win (a /proc read racing the process's exit can see a
            # detached pid as 0)
            if info.pid != ident.tgid:
                info = replace(info, pid=ident.tgid)
            if info.ppid is None and ident.ppid:
                info = replace(info, ppid=ident.ppid)
        self._pcache[key] = info
        if len(self._pcache) > 4096:
            self._pcache.popitem(last=False)
        return info

    # ------------------------------------------------------------------ datagram flows
    def _track(self, rec: Record) -> _Flow:
        key = flow_key(rec.cookie, rec.raddr, rec.rport, rec.proto)
        flows = self._dgram.setdefault(rec.cookie, {})
        if key not in flows:
            self._dgram_open += 1
        f = flows[key] = _Flow(key, rec.flow, rec.proto, None)
        return f

    def _untrack(self, rec: Record) -> _Flow | None:
        flows = self._dgram.get(rec.cookie)
        if flows is None:
            return None
        key = flow_key(rec.cookie, rec.raddr, rec.rport, rec.proto)
        f = flows.get(key)
        if f is None or f.flow != rec.flow:
            return None
        del flows[key]
        self._dgram_open -= 1
        if not flows:
            del self._dgram[rec.cookie]
        return f

    def _end_flow(self, f: _Flow, ts: float) -> Event | None:
        """A datagram flow's ``end``, its kernel entry read and deleted."""
        assert self._obj is not None
        raw = self._obj.lookup(self._flows_fd, f.key, FLOW_SIZE)
        counters = None
        if raw is not None:
            _ident, counters, flow, _dir, _flags = decode_flow(raw)
            if flow != f.flow:
                counters = None  # the entry was evicted and belongs to a newer flow
            else:
                self._obj.delete(self._flows_fd, f.key)
        if f.new is None:
            return None
        if counters is None:
            self.dgram_ended_evicted += 1
        return _with_counters(f.new, counters, ts)

    def _release(self, cookie: int, wall: int) -> Iterator[Event]:
        flows = self._dgram.pop(cookie, None)
        if not flows:
            return
        ts = time.time()
        for f in flows.values():
            self._dgram_open -= 1
            ev = self._end_flow(f, ts)
            if ev is not None:
                self.events += 1
                yield ev

    def _timeout(self, proto: int, both_ways: bool) -> float:
        t = self.timeouts
        if proto == _UDP:
            return t.udp_stream if both_ways else t.udp
        if proto in (_ICMP, _ICMPV6):
            return t.icmp
        return t.other

    def _sweep(self) -> Iterator[Event]:
        """End datagram flows idle longer than their timeout (conntrack's, as the flow
        table: UDP's, ICMP's, the generic one for the rest)."""
        if not self._dgram or self._obj is None:
            return
        now_ns = time.monotonic_ns()
        ts = time.time()
        for cookie in list(self._dgram):
            flows = self._dgram[cookie]
            for key in list(flows):
                f = flows[key]
                raw = self._obj.lookup(self._flows_fd, key, FLOW_SIZE)
                if raw is not None:
                    _i, c, flow, _d, _fl = decode_flow(raw)
                    if flow == f.flow:
                        timeout = self._timeout(f.proto, bool(c.tx_pkts and c.rx_pkts))
                        if now_ns - c.last_ns < timeout * 1e9:
                            continue
                del flows[key]
                self._dgram_open -= 1
                ev = self._end_flow(f, ts)
                if ev is not None:
                    self.events += 1
                    yield ev
            if not flows:
                del self._dgram[cookie]

    # ------------------------------------------------------------------ open flows
    def _iter_open_tcp(self, mode: int) -> list[Record]:
        if self._obj is None or "nw_flush" in self.unavailable:
            return []
        from netwarden.capture.libbpf import BpfError

        self._set_ctl(CTL_MODE, mode)
        link = None
        try:
            link = self._obj.program("nw_flush").attach_iter_map(self._socks_fd)
            data = link.read_iter()
        except BpfError as exc:
            log.warning("eBPF: cannot list the open TCP flows (%s)", exc.strerror)
            self.unavailable["nw_flush"] = exc.strerror or str(exc)
            return []
        finally:
            if link is not None:
                link.destroy()
        try:
            return decode_records(data)
        except RecordError as exc:
            self.records_bad += 1
            log.warning("eBPF: undecodable open-flow list (%s)", exc)
            return []

    def flush(self) -> Iterator[Event]:
        """``end`` for every flow still open (TCP and UDP), with the counters so far."""
        if self._obj is None:
            return
        wall = time.time_ns() - time.monotonic_ns()
        for rec in self._iter_open_tcp(CTL_FLUSH):
            if rec.netns and self.netns is not None and rec.netns != self.netns:
                continue
            ev = make_event(
                rec,
                wall_offset_ns=wall,
                flow_id=self._flow_id(rec.flow),
                process=self._process(rec),
            )
            self.events += 1
            yield ev
        ts = time.time()
        dgram, self._dgram = self._dgram, {}
        self._dgram_open = 0
        for flows in dgram.values():
            for f in flows.values():
                uev = self._end_flow(f, ts)
                if uev is not None:
                    self.events += 1
                    yield uev

    def open_tcp_flows(self) -> list[Event]:
        """The TCP flows open now, with their counters so far, as ``new`` events (a
        snapshot for callers that report progress; nothing is emitted or changed)."""
        wall = time.time_ns() - time.monotonic_ns()
        out = []
        for rec in self._iter_open_tcp(CTL_SNAPSHOT):
            ev = make_event(
                rec,
                wall_offset_ns=wall,
                flow_id=self._flow_id(rec.flow),
                process=self._process(rec),
            )
            out.append(replace(ev, event=EventType.NEW, duration=None))
        return out

    # ------------------------------------------------------------------ counters, teardown
    def hook_stats(self) -> dict[str, dict[str, int]]:
        """Per hook: programs run, records written, records lost (ring full), state errors."""
        if self._final_stats is not None:
            return self._final_stats
        if self._obj is None:
            return {}
        size = 8 * self._ncpus
        out: dict[str, dict[str, int]] = {}
        for h, hname in enumerate(HOOK_NAMES):
            row = {}
            for s, sname in enumerate(STAT_NAMES):
                raw = self._obj.lookup(
                    self._stats_fd, struct.pack("<I", h * len(STAT_NAMES) + s), size
                )
                row[sname] = decode_stats(raw, self._ncpus) if raw is not None else 0
            out[hname] = row
        return out

    def lost(self) -> int:
        """Records lost in the kernel because the ring buffer was full, all hooks."""
        return sum(row["lost"] for row in self.hook_stats().values())

    def summary(self) -> dict[str, Any]:
        hooks = self.hook_stats()
        return {
            "records": self.records,
            "records_bad": self.records_bad,
            "events": self.events,
            "events_lost": sum(r["lost"] for r in hooks.values()),
            "state_errors": sum(r["errors"] for r in hooks.values()),
            "udp_flows_open": self._dgram_open,  # datagram flows: UDP, raw, ICMP, packet
            "udp_flows_evicted": self.dgram_ended_evicted,
            "netns": "all" if self.netns is None else self.netns,
            "unavailable": dict(self.unavailable),
            "hooks": {k: v for k, v in hooks.items() if any(v.values())},
        }

    def close(self) -> None:
        """Detach every program and free everything (idempotent).

        From another thread while the source is being read: the reading thread finishes
        (ending the open flows) and closes it.
        """
        with self._lock:
            if self._closed:
                return
            self._stopping = True
            if self._busy is not None and self._busy != threading.get_ident():
                self._close_pending = True
                return
            self._closed = True
        self._close_now()

    def _close_now(self) -> None:
        if self._obj is not None:
            try:
                self._final_stats = self.hook_stats()
            except OSError:
                self._final_stats = {}
        if self._rb is not None:
            self._rb.free()
            self._rb = None

        for link in self._links:
            link.destroy()
        self._links.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        if self._cgroup_fd >= 0:
            os.close(self._cgroup_fd)
            self._cgroup_fd = -1


def check(obj_path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Whether the eBPF backend runs here (for ``netwarden doctor``): loads and attaches
    everything once, then detaches. Returns the optional hooks this kernel refuses (name →
    reason, empty when all work); raises MissingCapability when the backend cannot run."""
    src = EbpfSource(obj_path=obj_path, enrich=False, ring_size=1 << 16)
    try:
        return dict(src.unavailable)
    finally:
        src.close()


def _reason(lines: list[str], exc: OSError) -> str:
    """One line from libbpf's messages saying why a load failed."""
    interesting = [
        ln.strip()
        for ln in lines
        if ln.strip()
        and not ln.startswith(("libbpf: -- BEGIN", "libbpf: -- END"))
        and ("libbpf:" in ln or "invalid" in ln.lower() or "unknown" in ln.lower())
    ]
    for ln in interesting:
        if "not found in kernel" in ln or "unknown func" in ln or "failed to find" in ln:
            return ln.removeprefix("libbpf: ")
    for ln in reversed(interesting):
        if "failed to load" not in ln and "failed to load object" not in ln:
            return ln.removeprefix("libbpf: ")
    return exc.strerror or str(exc)
