"""The one currency of netwarden: :class:`Event` and the values it carries.

Every backend converts what it sees into :class:`Event` objects at its edge; nothing
downstream sees raw packets, netlink dicts or ctypes structs. Events are immutable.

The attribute names are the field names of INTERFACE.md's event table, so
``event.to_dict()`` / ``event.to_json()`` give exactly the documented JSON line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from enum import StrEnum
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

IPAddress = IPv4Address | IPv6Address


class EventType(StrEnum):
    NEW = "new"
    END = "end"
    PROBE = "probe"
    SCAN = "scan"
    BLOCK = "block"
    UNBLOCK = "unblock"


class Proto(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ICMPV6 = "icmpv6"
    SCTP = "sctp"
    IP = "ip"

    @classmethod
    def from_number(cls, ipproto: int) -> Proto:
        return _PROTO_BY_NUMBER.get(ipproto, cls.IP)


_PROTO_BY_NUMBER = {6: Proto.TCP, 17: Proto.UDP, 1: Proto.ICMP, 58: Proto.ICMPV6, 132: Proto.SCTP}
#: Protocol name by IP protocol number, for the hot path (plain strings, no enum lookups).
PROTO_NAMES: dict[int, str] = {n: str(p) for n, p in _PROTO_BY_NUMBER.items()}


class Direction(StrEnum):
    OUT = "out"
    IN = "in"
    LOCAL = "local"
    TRANSIT = "transit"


class Attribution(StrEnum):
    KERNEL = "kernel"
    HOLD = "hold"
    SOCKET = "socket"
    NONE = "none"


class Source(StrEnum):
    EBPF = "ebpf"
    CONNTRACK = "conntrack"
    SNIFF = "sniff"
    REPLAY = "replay"


class ScanKind(StrEnum):
    PORT = "port"
    SWEEP = "sweep"
    #: a block made by hand (``netwarden block``, ``POST /api/blocks``)
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """The local process that owns the local end of a flow."""

    pid: int | None = None
    ppid: int | None = None
    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    comm: str | None = None
    exe: str | None = None
    cmdline: str | None = None
    unit: str | None = None
    container: str | None = None


@dataclass(frozen=True, slots=True)
class ScanInfo:
    """What a ``scan``/``block``/``unblock`` event adds."""

    scanner: IPAddress
    kind: ScanKind
    ports: tuple[int, ...] = ()
    targets: int = 0
    window: float = 0.0
    until: float | None = None
    allowed: bool = False
    #: attempts (new flows and probes) this record covers: those that triggered the detection,
    #: or, for a summary, those seen since the previous one
    probes: int = 0
    #: a periodic summary of a scanner already reported, not a new detection
    summary: bool = False


_NO_PROCESS = ProcessInfo()


@lru_cache(maxsize=4096)  # a spoofed flood would fill a larger one with one-off addresses
def _addr_text(addr: IPv4Address | IPv6Address) -> str:
    """``str(addr)``, memoized: ipaddress formatting costs microseconds per call."""
    return str(addr)


#: The event fields in INTERFACE.md order: the JSON keys and the store's columns.
FIELDS: tuple[str, ...] = (
    "ts", "event", "flow", "proto", "ipproto", "family", "direction",
    "src", "sport", "dst", "dport",
    "orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts", "duration",
    "iface", "netns",
    "pid", "ppid", "uid", "gid", "user", "comm", "exe", "cmdline", "unit", "container",
    "attribution", "source",
)  # fmt: skip
PROCESS_FIELDS: tuple[str, ...] = (
    "pid", "ppid", "uid", "gid", "user", "comm", "exe", "cmdline", "unit", "container",
)  # fmt: skip
SCAN_FIELDS: tuple[str, ...] = (
    "scanner", "kind", "ports", "targets", "window", "until", "allowed", "probes", "summary",
)  # fmt: skip


@dataclass(frozen=True, slots=True, init=False)
class Event:
    """One record: a flow seen or ended, a probe, a scan, a block or an unblock."""

    ts: float
    event: EventType
    proto: Proto
    ipproto: int
    family: int
    src: IPAddress | None
    dst: IPAddress | None
    sport: int | None = None
    dport: int | None = None
    flow: str | None = None
    direction: Direction = Direction.TRANSIT
    orig_bytes: int = 0
    resp_bytes: int = 0
    orig_pkts: int = 0
    resp_pkts: int = 0
    duration: float | None = None
    iface: str | None = None
    netns: int | None = None
    process: ProcessInfo = _NO_PROCESS
    attribution: Attribution = Attribution.NONE
    source: Source = Source.SNIFF
    scan: ScanInfo | None = None

    def __init__(
        self,
        ts: float,
        event: EventType,
        proto: Proto,
        ipproto: int,
        family: int,
        src: IPAddress | None,
        dst: IPAddress | None,
        sport: int | None = None,
        dport: int | None = None,
        flow: str | None = None,
        direction: Direction = Direction.TRANSIT,
        orig_bytes: int = 0,
        resp_bytes: int = 0,
        orig_pkts: int = 0,
        resp_pkts: int = 0,
        duration: float | None = None,
        iface: str | None = None,
        netns: int | None = None,
        process: ProcessInfo = _NO_PROCESS,
        attribution: Attribution = Attribution.NONE,
        source: Source = Source.SNIFF,
        scan: ScanInfo | None = None,
    ) -> None:
        # Written out: the generated __init__ of a frozen dataclass calls object.__setattr__
        # per field (about 7 µs per event here); the slots' own setters cost far less.
        # Same fields, defaults and order as declared above.
        s = _SLOT_SETTERS
        s[0](self, ts)
        s[1](self, event)
        s[2](self, proto)
        s[3](self, ipproto)
        s[4](self, family)
        s[5](self, src)
        s[6](self, dst)
        s[7](self, sport)
        s[8](self, dport)
        s[9](self, flow)
        s[10](self, direction)
        s[11](self, orig_bytes)
        s[12](self, resp_bytes)
        s[13](self, orig_pkts)
        s[14](self, resp_pkts)
        s[15](self, duration)
        s[16](self, iface)
        s[17](self, netns)
        s[18](self, process)
        s[19](self, attribution)
        s[20](self, source)
        s[21](self, scan)

    # The process fields, flat, as the interface names them.
    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def ppid(self) -> int | None:
        return self.process.ppid

    @property
    def uid(self) -> int | None:
        return self.process.uid

    @property
    def gid(self) -> int | None:
        return self.process.gid

    @property
    def user(self) -> str | None:
        return self.process.user

    @property
    def comm(self) -> str | None:
        return self.process.comm

    @property
    def exe(self) -> str | None:
        return self.process.exe

    @property
    def cmdline(self) -> str | None:
        return self.process.cmdline

    @property
    def unit(self) -> str | None:
        return self.process.unit

    @property
    def container(self) -> str | None:
        return self.process.container

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values (addresses and enums as strings)."""
        p = self.process
        src = self.src
        dst = self.dst
        # written out field by field: this runs for every event of every output
        d: dict[str, Any] = {
            "ts": self.ts,
            "event": self.event.value,
            "flow": self.flow,
            "proto": self.proto.value,
            "ipproto": self.ipproto,
            "family": self.family,
            "direction": self.direction.value,
            "src": None if src is None else _addr_text(src),
            "sport": self.sport,
            "dst": None if dst is None else _addr_text(dst),
            "dport": self.dport,
            "orig_bytes": self.orig_bytes,
            "resp_bytes": self.resp_bytes,
            "orig_pkts": self.orig_pkts,
            "resp_pkts": self.resp_pkts,
            "duration": self.duration,
            "iface": self.iface,
            "netns": self.netns,
            "pid": p.pid,
            "ppid": p.ppid,
            "uid": p.uid,
            "gid": p.gid,
            "user": p.user,
            "comm": p.comm,
            "exe": p.exe,
            "cmdline": p.cmdline,
            "unit": p.unit,
            "container": p.container,
            "attribution": self.attribution.value,
            "source": self.source.value,
        }
        if self.scan is not None:
            s = self.scan
            d["scanner"] = str(s.scanner)
            d["kind"] = str(s.kind)
            d["ports"] = list(s.ports)
            d["targets"] = s.targets
            d["window"] = s.window
            d["until"] = s.until
            d["allowed"] = s.allowed
            d["probes"] = s.probes
            d["summary"] = s.summary
        return d

    def to_json(self) -> str:
        """The JSON line the CLI prints for this event (without the newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Rebuild an event from :meth:`to_dict` output (JSON lines, the store)."""

        def addr(v: Any) -> IPAddress | None:
            return None if v is None else ip_address(v)

        process = ProcessInfo(**{k: d.get(k) for k in PROCESS_FIELDS})
        scan = None
        if d.get("scanner") is not None:
            scan = ScanInfo(
                scanner=ip_address(d["scanner"]),
                kind=ScanKind(d["kind"]),
                ports=tuple(d.get("ports") or ()),
                targets=int(d.get("targets") or 0),
                window=float(d.get("window") or 0.0),
                until=d.get("until"),
                allowed=bool(d.get("allowed", False)),
                probes=int(d.get("probes") or 0),
                summary=bool(d.get("summary", False)),
            )
        return cls(
            ts=float(d["ts"]),
            event=EventType(d["event"]),
            proto=Proto(d["proto"]),
            ipproto=int(d["ipproto"]),
            family=int(d["family"]),
            src=addr(d.get("src")),
            dst=addr(d.get("dst")),
            sport=d.get("sport"),
            dport=d.get("dport"),
            flow=d.get("flow"),
            direction=Direction(d.get("direction") or "transit"),
            orig_bytes=int(d.get("orig_bytes") or 0),
            resp_bytes=int(d.get("resp_bytes") or 0),
            orig_pkts=int(d.get("orig_pkts") or 0),
            resp_pkts=int(d.get("resp_pkts") or 0),
            duration=d.get("duration"),
            iface=d.get("iface"),
            netns=d.get("netns"),
            process=process,
            attribution=Attribution(d.get("attribution") or "none"),
            source=Source(d.get("source") or "sniff"),
            scan=scan,
        )


#: The slot setters of Event's fields, in declaration order (see Event.__init__).
_SLOT_SETTERS = tuple(getattr(Event, f.name).__set__ for f in fields(Event))
