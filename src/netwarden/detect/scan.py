"""Port-scan and sweep detection: flow and probe events in, ``scan`` events out.

Pure: no I/O, no clock (``now`` is an argument, Unix seconds, never decreasing), no global
state. The rules and the reasons behind them are in docs/detection.md.

API (what ``netwarden run`` wires)::

    det = ScanDetector(DetectorConfig(scan_ports=3, scan_hosts=25, scan_window=60.0))
    for scan in det.feed(event, now):   # event: a ``new``, ``end`` or ``probe`` Event
        ...                             # scan: an Event with event=scan and .scan set
    for scan in det.tick(now):          # call about once a second: periodic summaries
        ...                             # of known scanners, expiry of idle state
    det.forget(addr_or_network, now)    # on unblock and on block expiry
    det.is_scanner(addr)                # a known scanner (its probes are being summarized)
    det.stats()                         # counters and sizes, for metrics

What counts
    Every ``new`` flow and every ``probe`` event is an *attempt* by the flow's initiator
    (``src``) on a target (``dst``) and a port (``dport``; ICMP and other portless protocols
    count for sweeps only, keyed by protocol). ``end`` events do not add attempts: they tell
    the attempt's outcome (see *Scoring*); an ``end`` whose ``new`` was never seen counts as
    an attempt at its start time. Other event types are ignored.

Who is the scanner
    Inbound and transit flows: the remote address (``src``). Outbound and local flows: the
    local process, keyed by address *and* pid when the pid is known; the ``scan`` event then
    carries the process fields (pid, comm, unit, ...) of the flow that triggered it.

Rules (the window slides; an attempt is remembered by the time it was last seen)
    port scan: one source reaches more than ``scan_ports`` distinct ports of one host within
    ``scan_window`` seconds; sweep: one source reaches more than ``scan_hosts`` hosts on one
    port (or with one portless protocol, e.g. an ICMP ping sweep) within the window.

Scoring
    An attempt scores 2 points when it was answered (or its outcome is not known yet) and
    ``failed_points`` (default 3, i.e. 1.5 attempts) when it failed: a ``probe`` event (FIN,
    Xmas, NULL, a SYN answered by RST or dropped, UDP answered by ICMP unreachable), or a flow
    that ended with no answer (``resp_pkts == 0``) or, for TCP, with at most one answering
    packet (a lone RST, or the SYN+ACK of a half-open scan). Per distinct port (or host) the
    higher score counts. A rule fires when the points exceed ``2 * scan_ports`` (or
    ``2 * scan_hosts``) with at least two distinct ports (hosts). With only successful
    attempts this is exactly "more than N distinct", the N+1th triggers; with failed ones
    fewer are needed (3 closed ports instead of 4 with the defaults, 17 hosts instead of 26).

Once a source is a known scanner
    It is reported once; its further attempts (``new`` and ``probe``) are counted, and
    every ``summary_interval`` seconds in which it made attempts, one ``scan`` event with
    ``summary=True`` carries their count (``probes``), the lowest 32 ports and the number of
    targets (at most 256 are told apart). After ``scanner_idle`` seconds without attempts it
    is forgotten (a pending summary is emitted first), as it is by :meth:`forget`.

After :meth:`forget` (an unblock, a block that ran out)
    The source starts afresh: only attempts it makes from then on count. The outcomes of
    attempts it made before (``end`` events of flows started earlier, e.g. the probes of
    the scan that got it blocked, ending when their linger runs out) are ignored for one
    window, so a scanner is never blocked twice for the same probes.

Bounds (nothing grows with the number of sources beyond these; every drop is counted)
    suspects (sources not yet reported): at most ``max_sources``, least recently active
    evicted first, and at most ``max_entries`` remembered attempts in total; each source keeps
    at most ``max(max_attempts, scan_ports + scan_hosts + 2)`` attempts (its oldest go first).
    Known scanners live in their own LRU of ``max_scanners``, so a flood of one-packet
    (spoofed) sources churns the suspects only and never evicts a scanner being summarized.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from netwarden.errors import UsageError
from netwarden.events import (
    Attribution,
    Direction,
    Event,
    EventType,
    IPAddress,
    ProcessInfo,
    Proto,
    ScanInfo,
    ScanKind,
)

__all__ = ["DetectorConfig", "ScanDetector"]

_OK = 2  # points of an attempt that was answered, or whose outcome is not known yet
_V6 = 1 << 128  # added to an IPv6 address's integer so it never equals an IPv4 one
_MAX_REPORTED_PORTS = 32
_MAX_SUMMARY_TARGETS = 256
_NO_PROCESS = ProcessInfo()
_LOCAL_SIDE = (Direction.OUT, Direction.LOCAL)

# A source's key: its address as an int, or (address, pid) for a local process.
_Key = int | tuple[int, int]

# An attempt: (time last seen, target as int, port key, points). Port keys are the port
# (0..65535), or -ipproto for a protocol without ports (-1 = ICMP, -58 = ICMPv6).
_Attempt = tuple[float, int, int, int]


def _aint(a: IPAddress) -> int:
    return int(a) if a.version == 4 else int(a) | _V6


def _addr(i: int) -> IPAddress:
    return IPv6Address(i ^ _V6) if i >= _V6 else IPv4Address(i)


def _ts(att: _Attempt) -> float:
    return att[0]


def _key_addr(key: _Key) -> IPAddress:
    return _addr(key if isinstance(key, int) else key[0])


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """The detector's settings. ``scan_*`` are the ``run`` flags of the same names."""

    scan_ports: int = 3
    scan_hosts: int = 25
    scan_window: float = 60.0
    #: points of a failed attempt; an answered one scores 2 (see the module docstring)
    failed_points: int = 3
    #: seconds between two summaries of a known scanner
    summary_interval: float = 60.0
    #: seconds without attempts after which a known scanner is forgotten
    scanner_idle: float = 300.0
    max_sources: int = 16384
    max_entries: int = 32768
    max_attempts: int = 64
    max_scanners: int = 4096

    def __post_init__(self) -> None:
        positive_ints = ("scan_ports", "scan_hosts", "max_sources", "max_entries")
        for name in (*positive_ints, "max_attempts", "max_scanners"):
            if getattr(self, name) < 1:
                raise UsageError("must be 1 or more", option=name, value=getattr(self, name))
        for name in ("scan_window", "summary_interval", "scanner_idle"):
            if not getattr(self, name) > 0:
                raise UsageError("must be more than 0", option=name, value=getattr(self, name))
        if self.failed_points < _OK:
            raise UsageError(
                "a failed attempt cannot weigh less than an answered one (2)",
                option="failed_points",
                value=self.failed_points,
                allowed="2 or more",
            )

    @property
    def attempts_per_source(self) -> int:
        """The attempts one source keeps: enough for a full port scan and a full sweep."""
        return max(self.max_attempts, self.scan_ports + self.scan_hosts + 2)


class _Suspect:
    """A source not (yet) reported: its attempts within the window, oldest first."""

    __slots__ = ("attempts", "direction", "last", "process")

    def __init__(self, direction: Direction, process: ProcessInfo) -> None:
        self.direction = direction
        self.process = process
        self.last = 0.0
        self.attempts: list[_Attempt] = []


class _Scanner:
    """A reported scanner: what its attempts since the last summary add up to."""

    __slots__ = (
        "addr",
        "direction",
        "family",
        "ipproto",
        "kind",
        "last",
        "ports",
        "probes",
        "process",
        "since",
        "source",
        "targets",
        "total",
    )

    def __init__(self, e: Event, addr: IPAddress, kind: ScanKind, process: ProcessInfo) -> None:
        self.addr = addr
        self.kind = kind
        self.direction = e.direction
        self.process = process
        self.family = e.family
        self.ipproto = e.ipproto
        self.source = e.source
        self.since = 0.0
        self.last = 0.0
        self.probes = 0
        self.total = 0
        self.ports: set[int] = set()
        self.targets: set[int] = set()

    def count(self, target: int, port: int, now: float) -> None:
        self.last = now
        self.probes += 1
        self.total += 1
        if len(self.targets) < _MAX_SUMMARY_TARGETS:
            self.targets.add(target)
        if port >= 0 and port not in self.ports:
            ports = self.ports
            if len(ports) < _MAX_REPORTED_PORTS:
                ports.add(port)
            else:
                highest = max(ports)
                if port < highest:
                    ports.remove(highest)
                    ports.add(port)


class ScanDetector:
    """Feed it events with :meth:`feed`; it returns the ``scan`` events they trigger."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = c = config or DetectorConfig()
        self._window = c.scan_window
        self._port_limit = 2 * c.scan_ports
        self._host_limit = 2 * c.scan_hosts
        self._per_source = c.attempts_per_source
        self._suspects: OrderedDict[_Key, _Suspect] = OrderedDict()
        self._scanners: OrderedDict[_Key, _Scanner] = OrderedDict()
        #: sources forgotten within the window: when (attempts started before do not count)
        self._cleared: OrderedDict[_Key, float] = OrderedDict()
        self._entries = 0
        # counters (see stats())
        self.attempts = 0
        self.port_scans = 0
        self.sweeps = 0
        self.summaries = 0
        self.summarized = 0
        self.sources_evicted = 0
        self.attempts_dropped = 0
        self.scanners_evicted = 0

    # ------------------------------------------------------------------ input
    def feed(self, e: Event, now: float) -> list[Event]:
        """Account one event seen at ``now``; return the ``scan`` events it triggers (0-2)."""
        kind = e.event
        if kind is EventType.NEW or kind is EventType.PROBE:
            is_end = False
        elif kind is EventType.END:
            is_end = True
        else:
            return []
        src = e.src
        dst = e.dst
        if src is None or dst is None:
            return []
        direction = e.direction
        local_side = direction in _LOCAL_SIDE
        if e.ipproto in (1, 58) and local_side and e.process.pid is None:
            # ICMP sent by no process is the kernel's (errors answering other traffic)
            return []
        a = _aint(src)
        pid = e.process.pid if local_side else None
        key: _Key = a if pid is None else (a, pid)
        port = e.dport if e.dport is not None else -e.ipproto
        target = _aint(dst)

        scanner = self._scanners.get(key)
        if scanner is not None:
            if is_end:
                return []
            self._scanners.move_to_end(key)
            scanner.count(target, port, now)
            if now - scanner.since >= self.config.summary_interval:
                return [self._summary(scanner, now)]
            return []

        if is_end:
            # the outcome of an attempt counted at its ``new``, or an attempt at its start
            points = self._end_points(e)
            # an end event's ts is the flow's last packet: the attempt was at its start
            at = min(e.ts, now) - (e.duration or 0.0)
            if at < now - self._window:
                return []
            if self._cleared and at <= self._cleared.get(key, -1.0):
                return []  # started before the source was forgotten (unblocked)
        else:
            points = self.config.failed_points if kind is EventType.PROBE else _OK
            at = now
        return self._attempt(e, key, target, port, points, at, is_end, now)

    def _end_points(self, e: Event) -> int:
        if e.resp_pkts == 0 or (e.ipproto == 6 and e.resp_pkts <= 1):
            return self.config.failed_points
        return _OK

    def _attempt(
        self,
        e: Event,
        key: _Key,
        target: int,
        port: int,
        points: int,
        at: float,
        is_end: bool,
        now: float,
    ) -> list[Event]:
        suspects = self._suspects
        s = suspects.get(key)
        local_side = e.direction in _LOCAL_SIDE
        if s is None:
            s = _Suspect(e.direction, e.process if local_side else _NO_PROCESS)
            suspects[key] = s
        else:
            suspects.move_to_end(key)
            if local_side and e.process.pid is not None:
                s.process = e.process  # the latest view of the process (comm, unit, ...)
        s.last = now
        atts = s.attempts
        horizon = now - self._window
        stale = 0
        while stale < len(atts) and atts[stale][0] < horizon:
            stale += 1
        if stale:
            del atts[:stale]
            self._entries -= stale

        # the same target and port seen again: keep the higher score, the later time
        for i, old in enumerate(atts):
            if old[1] == target and old[2] == port:
                del atts[i]
                self._entries -= 1
                if points < old[3]:
                    points = old[3]
                if is_end or old[0] > at:
                    at = old[0]
                break
        else:
            self.attempts += 1
        bisect.insort(atts, (at, target, port, points), key=_ts)
        self._entries += 1
        if len(atts) > self._per_source:
            del atts[0]
            self._entries -= 1
            self.attempts_dropped += 1

        # the port scan of this target and the sweep on this port, in one pass
        vports = vpoints = hosts = hpoints = 0
        for _t, t, p, pts in atts:
            if t == target and p >= 0:
                vports += 1
                vpoints += pts
            if p == port:
                hosts += 1
                hpoints += pts
        out: list[Event] = []
        if port >= 0 and vports >= 2 and vpoints > self._port_limit:
            out.append(self._detected(e, key, s, ScanKind.PORT, target, port, now))
        elif hosts >= 2 and hpoints > self._host_limit:
            out.append(self._detected(e, key, s, ScanKind.SWEEP, target, port, now))
        self._bound(key)
        return out

    def _bound(self, keep: _Key) -> None:
        suspects = self._suspects
        limit = self.config.max_sources
        entries = self.config.max_entries
        while suspects and (len(suspects) > limit or self._entries > entries):
            k, s = next(iter(suspects.items()))
            if k == keep and len(suspects) == 1:
                break
            del suspects[k]
            self._entries -= len(s.attempts)
            self.sources_evicted += 1

    # ------------------------------------------------------------------ output
    def _detected(
        self,
        e: Event,
        key: _Key,
        s: _Suspect,
        kind: ScanKind,
        target: int,
        port: int,
        now: float,
    ) -> Event:
        atts = s.attempts
        if kind is ScanKind.PORT:
            group = [a for a in atts if a[1] == target and a[2] >= 0]
            ports = tuple(sorted(a[2] for a in group)[:_MAX_REPORTED_PORTS])
            targets = 1
            dst: IPAddress | None = _addr(target)
            dport = None
            self.port_scans += 1
        else:
            group = [a for a in atts if a[2] == port]
            ports = (port,) if port >= 0 else ()
            targets = len(group)
            dst = None
            dport = port if port >= 0 else None
            self.sweeps += 1
        del self._suspects[key]
        self._entries -= len(atts)
        addr = _key_addr(key)
        scanner = _Scanner(e, addr, kind, s.process)
        scanner.since = scanner.last = now
        scanner.total = len(group)
        self._scanners[key] = scanner
        while len(self._scanners) > self.config.max_scanners:
            self._scanners.popitem(last=False)
            self.scanners_evicted += 1
        info = ScanInfo(
            scanner=addr,
            kind=kind,
            ports=ports,
            targets=targets,
            window=self._window,
            probes=len(group),
        )
        return Event(
            ts=now,
            event=EventType.SCAN,
            proto=e.proto,
            ipproto=e.ipproto,
            family=e.family,
            src=addr,
            dst=dst,
            dport=dport,
            direction=e.direction,
            iface=e.iface,
            netns=e.netns,
            process=s.process,
            attribution=e.attribution if s.process is not _NO_PROCESS else Attribution.NONE,
            source=e.source,
            scan=info,
        )

    def _summary(self, sc: _Scanner, now: float) -> Event:
        info = ScanInfo(
            scanner=sc.addr,
            kind=sc.kind,
            ports=tuple(sorted(sc.ports)),
            targets=len(sc.targets),
            window=now - sc.since,
            probes=sc.probes,
            summary=True,
        )
        self.summaries += 1
        self.summarized += sc.probes
        sc.since = now
        sc.probes = 0
        sc.ports = set()
        sc.targets = set()
        return Event(
            ts=now,
            event=EventType.SCAN,
            proto=Proto.from_number(sc.ipproto),
            ipproto=sc.ipproto,
            family=sc.family,
            src=sc.addr,
            dst=None,
            direction=sc.direction,
            process=sc.process,
            source=sc.source,
            scan=info,
        )

    # ------------------------------------------------------------------ time and memory
    def tick(self, now: float) -> list[Event]:
        """Emit the summaries that are due; forget idle scanners and stale suspects."""
        out: list[Event] = []
        interval = self.config.summary_interval
        idle = now - self.config.scanner_idle
        scanners = self._scanners
        while scanners:
            k, sc = next(iter(scanners.items()))
            if sc.last > idle:
                break
            if sc.probes:
                out.append(self._summary(sc, now))
            del scanners[k]
        for sc in scanners.values():
            if sc.probes and now - sc.since >= interval:
                out.append(self._summary(sc, now))
        horizon = now - self._window
        cleared = self._cleared
        while cleared and next(iter(cleared.values())) < horizon:
            cleared.popitem(last=False)
        suspects = self._suspects
        while suspects:
            k, s = next(iter(suspects.items()))
            if s.last >= horizon:
                break
            del suspects[k]
            self._entries -= len(s.attempts)
        return out

    def forget(self, target: IPAddress | IPv4Network | IPv6Network, now: float) -> int:
        """Clear what is remembered of a source address (or of every source in a network).

        Used on unblock and on block expiry. The outcomes (``end`` events) of attempts the
        source started before ``now`` are ignored from then on. Sources keyed by a local
        process (pid) are not touched. Returns how many sources were forgotten.
        """
        if isinstance(target, IPv4Address | IPv6Address):
            key = _aint(target)
            self._clear(key, now)
            n = 0
            s = self._suspects.pop(key, None)
            if s is not None:
                self._entries -= len(s.attempts)
                n += 1
            if self._scanners.pop(key, None) is not None:
                n += 1
            return n
        net = target
        n = 0
        for table in (self._suspects, self._scanners):
            doomed = [
                k
                for k, v in table.items()
                if isinstance(k, int) and _addr(k).version == net.version and _addr(k) in net
            ]
            for k in doomed:
                v = table.pop(k)
                self._clear(k, now)
                if isinstance(v, _Suspect):
                    self._entries -= len(v.attempts)
            n += len(doomed)
        return n

    def _clear(self, key: _Key, now: float) -> None:
        cleared = self._cleared
        cleared.pop(key, None)
        cleared[key] = now
        while len(cleared) > self.config.max_sources:
            cleared.popitem(last=False)

    def is_scanner(self, addr: IPAddress) -> bool:
        """Whether ``addr`` is a known (reported, not yet forgotten) scanner."""
        return _aint(addr) in self._scanners

    def stats(self) -> dict[str, Any]:
        """Counters (monotonic) and current sizes, for metrics and ``status``."""
        return {
            "attempts": self.attempts,
            "port_scans": self.port_scans,
            "sweeps": self.sweeps,
            "summaries": self.summaries,
            "summarized_probes": self.summarized,
            "sources_evicted": self.sources_evicted,
            "attempts_dropped": self.attempts_dropped,
            "scanners_evicted": self.scanners_evicted,
            "suspects": len(self._suspects),
            "scanners": len(self._scanners),
            "entries": self._entries,
            "cleared": len(self._cleared),
        }
