"""The eBPF backend's records (ring buffer, flush iterator, datagram flow map) → values. Pure.

The layouts mirror ``src/netwarden/bpf/netwarden.h``; change both together. Integers are
little-endian (host order on the machines netwarden runs on), ports in host order, and
addresses 16 bytes with IPv4 as IPv4-mapped IPv6. A buffer too short for a record, or a
record of an unknown type, raises :class:`RecordError`; callers count and skip it.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final, NamedTuple

__all__ = [
    "CTL_FLOWS",
    "CTL_FLUSH",
    "CTL_MODE",
    "CTL_SNAPSHOT",
    "CTL_WAKEUP",
    "DIR_IN",
    "DIR_LOCAL",
    "DIR_OUT",
    "FLOW_KEY_SIZE",
    "FLOW_SIZE",
    "F_ECHO",
    "F_FINAL",
    "F_HIDDEN",
    "F_LISTENER",
    "F_NO_OWNER",
    "F_PACKET",
    "F_RAW",
    "HOOK_NAMES",
    "RECORD_SIZE",
    "RECORD_STRUCT",
    "REC_END",
    "REC_NEW",
    "REC_PROBE",
    "REC_RELEASE",
    "Counters",
    "Ident",
    "Record",
    "RecordError",
    "address",
    "decode_flow",
    "decode_record",
    "decode_records",
    "decode_stats",
    "family_of",
    "flow_key",
]

REC_NEW: Final = 1
REC_END: Final = 2
REC_PROBE: Final = 3
REC_RELEASE: Final = 4
_TYPES: Final = frozenset((REC_NEW, REC_END, REC_PROBE, REC_RELEASE))

DIR_OUT: Final = 0
DIR_IN: Final = 1
DIR_LOCAL: Final = 2

F_HIDDEN: Final = 0x01
F_NO_OWNER: Final = 0x02
F_LISTENER: Final = 0x04
F_FINAL: Final = 0x08
F_RAW: Final = 0x10  # a raw IP or ICMP (ping) socket's flow
F_PACKET: Final = 0x20  # a packet (AF_PACKET) socket's flow
F_ECHO: Final = 0x40  # an ICMP echo flow

# the control array's slots (NW_CTL_*)
CTL_MODE: Final = 0  # what the flush iterator does: CTL_SNAPSHOT or CTL_FLUSH
CTL_SNAPSHOT: Final = 0
CTL_FLUSH: Final = 1
CTL_FLOWS: Final = 1  # the flow counter
CTL_WAKEUP: Final = 2  # wake the reader once this many bytes of records wait (0: always)

#: Hook names by index (NW_H_*), as used in the per-hook counters.
HOOK_NAMES: Final[tuple[str, ...]] = (
    "sockops_connect",
    "sockops_accept",
    "sockops_listen",
    "inet_sock_set_state",
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "post_bind4",
    "post_bind6",
    "skb_egress",
    "skb_ingress",
    "sock_release",
    "tcp_send_reset",
    "kfree_skb",
    "flush",
    "sock_create",
    "net_dev_queue",
    "netif_receive_skb",
)
#: Counter names per hook (NW_S_*).
STAT_NAMES: Final[tuple[str, ...]] = ("calls", "events", "lost", "errors")

AF_INET: Final = 2
AF_INET6: Final = 10

# struct nw_ident: tgid tid ppid uid gid pad cgroup_id start_boottime comm[16] pcomm[16]
_IDENT_FMT: Final = "IIIIII QQ 16s16s"
# struct nw_counters: tx_bytes rx_bytes tx_pkts rx_pkts first_ns last_ns
_COUNTERS_FMT: Final = "QQQQQQ"
# struct nw_record
_RECORD = struct.Struct(
    "<BBBBBBH HHI QQQ 16s16s " + _IDENT_FMT + " " + _COUNTERS_FMT
)  # fmt: skip
RECORD_SIZE: Final = _RECORD.size  # 192
#: The record's layout, for a reader that takes the hot fields itself. ``unpack_from`` gives:
#: 0 type, 1 proto, 2 af, 3 dir, 4 hook, 5 flags, 6 lport, 7 rport, 9 netns, 10 ts_ns,
#: 11 cookie, 12 flow, 13 laddr, 14 raddr, 15 tgid, 16 tid, 17 ppid, 18 uid, 19 gid,
#: 21 cgroup_id, 22 start_boottime, 23 comm, 24 pcomm, 25..30 the counters (tx_bytes,
#: rx_bytes, tx_pkts, rx_pkts, first_ns, last_ns). Nothing is validated: see decode_record.
RECORD_STRUCT: Final = _RECORD

# struct nw_flow_key: cookie raddr[16] rport proto pad[5]
_FLOW_KEY = struct.Struct("<Q16sHB5x")
FLOW_KEY_SIZE: Final = _FLOW_KEY.size  # 32
# struct nw_flow: who counters flow dir flags pad[6]
_FLOW = struct.Struct("<" + _IDENT_FMT + " " + _COUNTERS_FMT + " QBB6x")
FLOW_SIZE: Final = _FLOW.size  # 136

_V4_PREFIX: Final = b"\0" * 10 + b"\xff\xff"


class RecordError(ValueError):
    """A buffer that is not a record this version understands."""


class Ident(NamedTuple):
    """The task captured at the hook."""

    tgid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    cgroup_id: int
    start_boottime_ns: int
    comm: str  # the thread's name
    pcomm: str  # the main thread's (process's) name

    def start_ticks(self, clk_tck: int = 100) -> int:
        """The start time as /proc/PID/stat field 22 gives it (clock ticks since boot)."""
        return self.start_boottime_ns // (1_000_000_000 // clk_tck)


class Counters(NamedTuple):
    tx_bytes: int
    rx_bytes: int
    tx_pkts: int
    rx_pkts: int
    first_ns: int
    last_ns: int


class Record(NamedTuple):
    """One record of the kernel side. ``ident`` is None when no process is known."""

    type: int
    proto: int
    af: int
    dir: int
    hook: int
    flags: int
    lport: int
    rport: int
    netns: int
    ts_ns: int
    cookie: int
    flow: int
    laddr: bytes  # 16 bytes, IPv4-mapped for IPv4
    raddr: bytes
    ident: Ident | None
    uid: int | None  # the socket's uid (also when no process is known)
    counters: Counters

    @property
    def family(self) -> int:
        """4 or 6: IPv4 when the addresses are IPv4(-mapped), as on the wire."""
        return family_of(self.af, self.raddr)

    @property
    def hidden(self) -> bool:
        return bool(self.flags & F_HIDDEN)

    @property
    def hook_name(self) -> str:
        return HOOK_NAMES[self.hook] if self.hook < len(HOOK_NAMES) else f"hook{self.hook}"


def family_of(af: int, raddr: bytes) -> int:
    """4 or 6: IPv4 when the socket is or the remote address is IPv4(-mapped)."""
    return 4 if af == AF_INET or raddr[:12] == _V4_PREFIX else 6


@lru_cache(maxsize=4096)
def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


@lru_cache(maxsize=8192)
def address(raw: bytes) -> IPv4Address | IPv6Address:
    """A 16-byte address as an ``ipaddress`` value; IPv4-mapped becomes IPv4."""
    if raw[:12] == _V4_PREFIX:
        return IPv4Address(raw[12:16])
    return IPv6Address(raw)


def _ident(fields: tuple[Any, ...]) -> Ident:
    tgid, tid, ppid, uid, gid, _pad, cg, start, comm, pcomm = fields
    return Ident(tgid, tid, ppid, uid, gid, cg, start, _text(comm), _text(pcomm))


def decode_record(buf: bytes | bytearray | memoryview, offset: int = 0) -> Record:
    """Decode one record at ``offset``."""
    if len(buf) - offset < RECORD_SIZE:
        raise RecordError(f"record truncated: {len(buf) - offset} of {RECORD_SIZE} bytes")
    f = _RECORD.unpack_from(buf, offset)
    rtype, proto, af, direction, hook, flags = f[:6]
    if rtype not in _TYPES:
        raise RecordError(f"unknown record type {rtype}")
    if af != AF_INET and af != AF_INET6:
        raise RecordError(f"unknown address family {af}")
    if direction > DIR_LOCAL:
        raise RecordError(f"unknown direction {direction}")
    ident: Ident | None = None
    uid: int | None = None
    if rtype in (REC_NEW, REC_END):
        uid = f[18]
        if not flags & F_NO_OWNER:
            ident = Ident(f[15], f[16], f[17], uid, f[19], f[21], f[22], _text(f[23]), _text(f[24]))
    return Record(
        rtype, proto, af, direction, hook, flags, f[6], f[7], f[9], f[10], f[11], f[12],
        f[13], f[14], ident, uid, Counters(*f[25:31]),
    )  # fmt: skip


def decode_records(buf: bytes | bytearray | memoryview) -> list[Record]:
    """Decode back-to-back records (the flush iterator's output). A partial tail raises."""
    if len(buf) % RECORD_SIZE:
        raise RecordError(f"{len(buf)} bytes is not a whole number of {RECORD_SIZE}-byte records")
    return [decode_record(buf, off) for off in range(0, len(buf), RECORD_SIZE)]


def flow_key(cookie: int, raddr: bytes, rport: int, proto: int) -> bytes:
    """The datagram flow map's key of a socket's flow with one remote: ``rport`` is the
    remote port, for ICMP the echo identifier (echo flows) or the message type."""
    if len(raddr) != 16:
        raise ValueError("raddr must be 16 bytes")
    return _FLOW_KEY.pack(cookie, raddr, rport, proto)


def decode_flow(buf: bytes | bytearray | memoryview) -> tuple[Ident, Counters, int, int, int]:
    """A datagram flow map value: (identity, counters, flow number, direction, flags)."""
    if len(buf) < FLOW_SIZE:
        raise RecordError(f"flow value truncated: {len(buf)} of {FLOW_SIZE} bytes")
    f = _FLOW.unpack_from(buf, 0)
    return _ident(f[:10]), Counters(*f[10:16]), f[16], f[17], f[18]


def decode_stats(buf: bytes | bytearray | memoryview, ncpus: int) -> int:
    """The sum over CPUs of one per-CPU u64 counter (a per-CPU array's value)."""
    if len(buf) < 8 * ncpus:
        raise RecordError(f"per-CPU value truncated: {len(buf)} bytes for {ncpus} CPUs")
    return sum(struct.unpack_from(f"<{ncpus}Q", buf, 0))
