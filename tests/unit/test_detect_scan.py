"""The scan detector: sequences of events in, the exact ``scan`` events out."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterable
from dataclasses import replace
from ipaddress import IPv4Address, ip_address, ip_network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwarden.detect.scan import DetectorConfig, ScanDetector
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
    Source,
)

SCANNER = ip_address("203.0.113.66")
OTHER = ip_address("198.51.100.9")
HOST = ip_address("192.0.2.10")
HOST6 = ip_address("2001:db8::10")
SCANNER6 = ip_address("2001:db8:bad::1")
NO_PROCESS = ProcessInfo()
NMAP = ProcessInfo(pid=4242, uid=0, comm="nmap", unit="session-3.scope", cmdline="nmap -sS x")

IN, OUT, LOCAL, TRANSIT = Direction.IN, Direction.OUT, Direction.LOCAL, Direction.TRANSIT
NEW, END, PROBE = EventType.NEW, EventType.END, EventType.PROBE
_PROTOS = {"tcp": (Proto.TCP, 6), "udp": (Proto.UDP, 17), "icmp": (Proto.ICMP, 1)}


def ev(
    kind: EventType = NEW,
    src: IPAddress = SCANNER,
    dst: IPAddress = HOST,
    dport: int | None = 22,
    *,
    proto: str = "tcp",
    direction: Direction = IN,
    resp_pkts: int = 0,
    orig_pkts: int = 1,
    duration: float | None = None,
    process: ProcessInfo = NO_PROCESS,
    ts: float = 0.0,
) -> Event:
    p, n = _PROTOS[proto]
    return Event(
        ts=ts,
        event=kind,
        proto=p,
        ipproto=n,
        family=src.version,
        src=src,
        dst=dst,
        sport=None if dport is None else 40000,
        dport=dport,
        direction=direction,
        orig_pkts=orig_pkts,
        resp_pkts=resp_pkts,
        duration=duration,
        process=process,
        attribution=Attribution.KERNEL if process.pid else Attribution.NONE,
        source=Source.EBPF,
    )


def scan(
    ts: float,
    kind: ScanKind,
    ports: tuple[int, ...],
    *,
    scanner: IPAddress = SCANNER,
    dst: IPAddress | None = HOST,
    dport: int | None = None,
    targets: int = 1,
    probes: int,
    proto: str = "tcp",
    direction: Direction = IN,
    process: ProcessInfo = NO_PROCESS,
    window: float = 60.0,
    summary: bool = False,
) -> Event:
    """The exact scan event the detector is expected to emit."""
    p, n = _PROTOS[proto]
    return Event(
        ts=ts,
        event=EventType.SCAN,
        proto=p,
        ipproto=n,
        family=scanner.version,
        src=scanner,
        dst=dst,
        dport=dport,
        direction=direction,
        process=process,
        attribution=Attribution.KERNEL if process.pid and not summary else Attribution.NONE,
        source=Source.EBPF,
        scan=ScanInfo(
            scanner=scanner,
            kind=kind,
            ports=ports,
            targets=targets,
            window=window,
            probes=probes,
            summary=summary,
        ),
    )


def play(det: ScanDetector, script: Iterable[tuple[float, Event]]) -> list[Event]:
    """Feed (now, event) pairs; everything the detector says, in order."""
    out: list[Event] = []
    for now, e in script:
        out += det.feed(e, now)
    return out


def ports_script(
    ports: Iterable[int], t0: float = 0.0, step: float = 1.0, **kw: Any
) -> list[tuple[float, Event]]:
    """One new flow per port from SCANNER to HOST, ``step`` seconds apart."""
    return [(t0 + i * step, ev(dport=p, **kw)) for i, p in enumerate(ports)]


# ---------------------------------------------------------------------- port scans
def test_fourth_distinct_port_triggers_a_port_scan() -> None:
    det = ScanDetector()
    assert play(det, ports_script([22, 80, 443])) == []
    assert det.feed(ev(dport=23), 3.0) == [scan(3.0, ScanKind.PORT, (22, 23, 80, 443), probes=4)]
    assert det.is_scanner(SCANNER)
    assert det.stats()["port_scans"] == 1


def test_repeated_ports_count_once() -> None:
    det = ScanDetector()
    assert play(det, ports_script([22, 80, 22, 80, 443, 443, 22])) == []


def test_ports_of_different_hosts_do_not_add_up() -> None:
    det = ScanDetector()
    script = [(0.0, ev(dport=p)) for p in (1, 2, 3)]
    script += [(1.0, ev(dst=OTHER, dport=p)) for p in (4, 5, 6)]
    assert play(det, script) == []


def test_different_sources_do_not_add_up() -> None:
    det = ScanDetector()
    script = [(0.0, ev(dport=p)) for p in (1, 2, 3)]
    script += [(1.0, ev(src=OTHER, dport=p)) for p in (4, 5, 6)]
    assert play(det, script) == []


def test_the_window_slides() -> None:
    det = ScanDetector()
    assert play(det, ports_script([1, 2, 3], step=10.0)) == []  # t = 0, 10, 20
    # at 61 the port seen at 0 is out of the window: 2, 3, 4 -> nothing
    assert det.feed(ev(dport=4), 61.0) == []
    # at 65: 2 (10), 3 (20), 4 (61), 5 (65): the 4th within 60 s
    assert det.feed(ev(dport=5), 65.0) == [scan(65.0, ScanKind.PORT, (2, 3, 4, 5), probes=4)]


def test_the_window_is_inclusive() -> None:
    det = ScanDetector()
    play(det, ports_script([1, 2, 3], step=0.0))  # all at 0
    assert det.feed(ev(dport=4), 60.0) == [scan(60.0, ScanKind.PORT, (1, 2, 3, 4), probes=4)]


def test_seeing_a_port_again_refreshes_it() -> None:
    det = ScanDetector()
    play(det, [(0.0, ev(dport=1)), (1.0, ev(dport=2)), (2.0, ev(dport=3)), (50.0, ev(dport=1))])
    # port 1 was last seen at 50: at 100 the window holds 1 (50) and 4 (100) only
    assert det.feed(ev(dport=4), 100.0) == []
    assert det.feed(ev(dport=5), 101.0) == []
    assert det.feed(ev(dport=6), 102.0) == [scan(102.0, ScanKind.PORT, (1, 4, 5, 6), probes=4)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=12),
    ports=st.lists(st.integers(0, 65535), min_size=1, max_size=40, unique=True),
    times=st.lists(st.floats(0, 59.999), min_size=40, max_size=40),
)
def test_plain_attempts_trigger_exactly_at_n_plus_one(
    n: int, ports: list[int], times: list[float]
) -> None:
    """INTERFACE.md: with answered attempts, the N+1th distinct port within the window
    triggers, never earlier, whatever the order and the times within the window."""
    det = ScanDetector(DetectorConfig(scan_ports=n))
    stamps = sorted(times[: len(ports)])
    for i, (p, t) in enumerate(zip(ports, stamps, strict=True)):
        out = det.feed(ev(dport=p), t)
        if i < n:
            assert out == []
        elif i == n:
            want = tuple(sorted(ports[: n + 1]))[:32]
            assert out == [scan(t, ScanKind.PORT, want, probes=n + 1)]
            break


# ---------------------------------------------------------------------- scoring
def test_three_closed_ports_are_enough() -> None:
    det = ScanDetector()
    assert det.feed(ev(PROBE, dport=1), 0.0) == []
    assert det.feed(ev(PROBE, dport=2), 1.0) == []
    assert det.feed(ev(PROBE, dport=3), 2.0) == [scan(2.0, ScanKind.PORT, (1, 2, 3), probes=3)]


def test_two_failed_attempts_are_not_a_scan_even_with_scan_ports_1() -> None:
    det = ScanDetector(DetectorConfig(scan_ports=1))
    assert det.feed(ev(PROBE, dport=1), 0.0) == []  # 3 points > 2, but one port is no scan
    assert det.feed(ev(PROBE, dport=1), 1.0) == []
    assert det.feed(ev(dport=2), 2.0) == [scan(2.0, ScanKind.PORT, (1, 2), probes=2)]


def test_a_probe_and_a_flow_on_the_same_port_count_once() -> None:
    det = ScanDetector()
    script = [(0.0, ev(dport=1)), (0.0, ev(PROBE, dport=1)), (1.0, ev(dport=2))]
    assert play(det, script) == []  # 3 + 2 = 5 points, not > 6


def test_an_unanswered_end_upgrades_the_attempt_and_can_trigger() -> None:
    det = ScanDetector()
    assert play(det, ports_script([1, 2, 3])) == []  # 6 points
    # the flow to port 2 ends unanswered (a dropped SYN): 2 -> 3 points, 7 > 6
    out = det.feed(ev(END, dport=2, resp_pkts=0, duration=30.0, ts=31.0), 31.0)
    assert out == [scan(31.0, ScanKind.PORT, (1, 2, 3), probes=3)]


@pytest.mark.parametrize(
    ("proto", "orig", "resp", "failed"),
    [
        ("tcp", 1, 1, True),  # SYN -> RST
        ("tcp", 2, 1, True),  # half-open: SYN, SYN+ACK, RST
        ("tcp", 3, 0, True),  # SYN retried, no answer
        ("tcp", 4, 3, False),  # a real connection
        ("udp", 1, 0, True),  # no answer or ICMP unreachable
        ("udp", 1, 1, False),
        ("icmp", 1, 0, True),
        ("icmp", 1, 1, False),
    ],
)
def test_which_ends_are_failed_attempts(proto: str, orig: int, resp: int, failed: bool) -> None:
    det = ScanDetector()
    port = None if proto == "icmp" else 7
    det.feed(ev(dport=port, proto=proto), 0.0)
    det.feed(ev(END, dport=port, proto=proto, orig_pkts=orig, resp_pkts=resp, duration=1), 1.0)
    # two more answered ports: 2 + 2 + 2 = 6 is no scan, 3 + 2 + 2 = 7 is
    out = play(det, [(2.0, ev(dport=p)) for p in (100, 101)])
    if proto == "icmp":
        assert out == []  # ICMP has no port: it counts for sweeps only
    else:
        assert bool(out) is failed


def test_an_end_without_its_new_counts_at_its_start() -> None:
    det = ScanDetector()
    # a flow that began at 5 and ended unanswered at 100: it began outside the window
    assert det.feed(ev(END, dport=3, resp_pkts=0, duration=95.0, ts=100.0), 100.0) == []
    assert det.stats()["entries"] == 0
    play(det, ports_script([1, 2], t0=100.0))  # 4 points
    # a flow that began at 101 and ended unanswered at 102: 3 points more, 7 > 6
    assert det.feed(ev(END, dport=4, resp_pkts=0, duration=1.0, ts=102.0), 102.0) == [
        scan(102.0, ScanKind.PORT, (1, 2, 4), probes=3)
    ]


# ---------------------------------------------------------------------- sweeps
def hosts(n: int, base: str = "192.0.2.0") -> list[IPAddress]:
    start = int(ip_address(base))
    return [IPv4Address(start + 1 + i) for i in range(n)]


def test_the_26th_host_on_one_port_is_a_sweep() -> None:
    det = ScanDetector()
    targets = hosts(26)
    script = [(float(i), ev(dst=h, dport=445, direction=TRANSIT)) for i, h in enumerate(targets)]
    out = play(det, script)
    assert out == [
        scan(
            25.0,
            ScanKind.SWEEP,
            (445,),
            dst=None,
            dport=445,
            targets=26,
            probes=26,
            direction=TRANSIT,
        )
    ]


def test_an_icmp_ping_sweep() -> None:
    det = ScanDetector()
    script = [
        (float(i), ev(dst=h, dport=None, proto="icmp", direction=TRANSIT))
        for i, h in enumerate(hosts(26))
    ]
    out = play(det, script)
    assert out == [
        scan(
            25.0,
            ScanKind.SWEEP,
            (),
            dst=None,
            targets=26,
            probes=26,
            proto="icmp",
            direction=TRANSIT,
        )
    ]


def test_an_unanswered_ping_sweep_needs_17_hosts() -> None:
    det = ScanDetector()
    out = []
    for i, h in enumerate(hosts(17)):
        t = float(i)
        det.feed(ev(dst=h, dport=None, proto="icmp", direction=TRANSIT), t)
        end = ev(END, dst=h, dport=None, proto="icmp", direction=TRANSIT, duration=0.0)
        out += det.feed(end, t)
    assert [(e.scan.kind, e.scan.targets) for e in out if e.scan] == [(ScanKind.SWEEP, 17)]
    assert out[0].ts == 16.0


def test_kernel_icmp_errors_sent_by_this_host_are_no_sweep() -> None:
    det = ScanDetector()
    # port unreachables this host sends to 40 different senders: no process owns them
    script = [
        (0.0, ev(src=HOST, dst=h, dport=None, proto="icmp", direction=OUT))
        for h in hosts(40, "198.51.100.0")
    ]
    assert play(det, script) == []


def test_udp_scan_in_ipv6() -> None:
    det = ScanDetector()
    script = [
        (float(i), ev(src=SCANNER6, dst=HOST6, dport=p, proto="udp"))
        for i, p in enumerate((53, 123, 161))
    ]
    script += [
        (3.0, ev(END, src=SCANNER6, dst=HOST6, dport=p, proto="udp", duration=0.0))
        for p in (53, 123)
    ]
    # 53 and 123 unanswered (3 points each) + 161 pending (2): 8 > 6
    assert play(det, script) == [
        scan(3.0, ScanKind.PORT, (53, 123, 161), scanner=SCANNER6, dst=HOST6, probes=3, proto="udp")
    ]


# ---------------------------------------------------------------------- local processes
def test_a_local_process_scanning_out_is_named() -> None:
    det = ScanDetector()
    remote = ip_address("198.51.100.20")
    script = [
        (float(i), ev(src=HOST, dst=remote, dport=p, direction=OUT, process=NMAP))
        for i, p in enumerate((21, 22, 25, 80))
    ]
    assert play(det, script) == [
        scan(
            3.0,
            ScanKind.PORT,
            (21, 22, 25, 80),
            scanner=HOST,
            dst=remote,
            probes=4,
            direction=OUT,
            process=NMAP,
        )
    ]


def test_local_processes_are_told_apart_by_pid() -> None:
    det = ScanDetector()
    remote = ip_address("198.51.100.20")
    other = ProcessInfo(pid=77, comm="curl")
    script = [(0.0, ev(src=HOST, dst=remote, dport=p, direction=OUT, process=NMAP)) for p in (1, 2)]
    script += [
        (0.0, ev(src=HOST, dst=remote, dport=p, direction=OUT, process=other)) for p in (3, 4)
    ]
    assert play(det, script) == []
    assert not det.is_scanner(HOST)


def test_a_loopback_scan_by_a_local_process() -> None:
    det = ScanDetector()
    lo = ip_address("127.0.0.1")
    script = [
        (0.0, ev(src=lo, dst=lo, dport=p, direction=LOCAL, process=NMAP)) for p in (1, 2, 3, 4)
    ]
    out = play(det, script)
    assert out == [
        scan(
            0.0,
            ScanKind.PORT,
            (1, 2, 3, 4),
            scanner=lo,
            dst=lo,
            probes=4,
            direction=LOCAL,
            process=NMAP,
        )
    ]


# ---------------------------------------------------------------------- known scanners
def test_a_known_scanners_probes_are_summarized() -> None:
    det = ScanDetector(DetectorConfig(summary_interval=10.0))
    play(det, ports_script([1, 2, 3, 4]))  # detected at 3
    out = play(det, [(4.0 + i, ev(PROBE, dport=100 + i)) for i in range(9)])  # 4 .. 12
    assert out == []
    out = det.feed(ev(PROBE, dport=5, dst=OTHER), 13.0)
    assert out == [
        scan(
            13.0,
            ScanKind.PORT,
            (5, *range(100, 109)),
            dst=None,
            targets=2,
            probes=10,
            window=10.0,
            summary=True,
        )
    ]
    assert det.stats()["summarized_probes"] == 10
    # ends of a known scanner's flows are not counted again
    assert det.feed(ev(END, dport=100, duration=1.0), 14.0) == []


def test_tick_emits_due_summaries_and_flushes_idle_scanners() -> None:
    det = ScanDetector(DetectorConfig(summary_interval=10.0, scanner_idle=30.0))
    play(det, ports_script([1, 2, 3, 4]))  # detected at 3
    det.feed(ev(PROBE, dport=9), 5.0)
    assert det.tick(12.0) == []
    assert det.tick(13.0) == [
        scan(13.0, ScanKind.PORT, (9,), dst=None, probes=1, window=10.0, summary=True)
    ]
    assert det.tick(20.0) == []  # nothing new
    det.feed(ev(PROBE, dport=10), 21.0)
    assert det.tick(22.0) == []
    assert det.tick(23.0) == [
        scan(23.0, ScanKind.PORT, (10,), dst=None, probes=1, window=10.0, summary=True)
    ]
    # idle since 21: forgotten 30 s later
    assert det.tick(50.0) == [] and det.is_scanner(SCANNER)
    assert det.tick(51.0) == [] and not det.is_scanner(SCANNER)


def test_an_idle_scanner_is_forgotten_with_its_pending_summary() -> None:
    det = ScanDetector(DetectorConfig(summary_interval=100.0, scanner_idle=30.0))
    play(det, ports_script([1, 2, 3, 4]))  # detected at 3
    det.feed(ev(PROBE, dport=9), 5.0)
    assert det.tick(34.0) == []
    assert det.tick(35.0) == [
        scan(35.0, ScanKind.PORT, (9,), dst=None, probes=1, window=32.0, summary=True)
    ]
    assert not det.is_scanner(SCANNER)


def test_summary_ports_are_the_lowest_32() -> None:
    det = ScanDetector(DetectorConfig(summary_interval=10.0))
    play(det, ports_script([1, 2, 3, 4]))
    for p in range(1000, 900, -1):
        det.feed(ev(PROBE, dport=p), 5.0)
    (s,) = det.tick(13.0)
    assert s.scan is not None
    assert s.scan.ports == tuple(range(901, 933)) and s.scan.probes == 100


def test_forget_starts_over() -> None:
    det = ScanDetector()
    play(det, ports_script([1, 2, 3, 4]))
    assert det.forget(SCANNER, 9.0) == 1
    assert not det.is_scanner(SCANNER)
    assert play(det, ports_script([5, 6, 7], t0=10.0)) == []
    assert det.feed(ev(dport=8), 13.0) == [scan(13.0, ScanKind.PORT, (5, 6, 7, 8), probes=4)]


def test_forget_a_network() -> None:
    det = ScanDetector()
    play(det, ports_script([1, 2]))
    play(det, ports_script([1, 2], src=OTHER))
    assert det.forget(ip_network("203.0.113.0/24"), 1.0) == 1
    assert det.stats()["suspects"] == 1 and det.stats()["entries"] == 2


def test_after_forget_the_outcomes_of_earlier_attempts_do_not_count() -> None:
    """A scanner unblocked (or whose block ran out) at t=20 is not blocked again for the
    probes it made before: their flows ending later (unanswered) are ignored; an attempt
    started after the unblock counts, and after one window the memory of the unblock goes."""
    det = ScanDetector(DetectorConfig(scan_window=60.0))
    play(det, ports_script([1, 2, 3, 4]))
    det.forget(SCANNER, 20.0)
    assert det.stats()["cleared"] == 1
    for i, p in enumerate(range(10, 40)):  # started at 5..19, ended unanswered at 22
        assert det.feed(ev(END, dport=p, duration=17.0 - i * 0.5, ts=22.0), 22.0) == []
    assert det.stats()["suspects"] == 0
    # started after the unblock: counted (3 failed ports are a scan)
    out = [det.feed(ev(END, dport=p, duration=1.0, ts=25.0), 25.0) for p in (50, 51, 52)]
    assert out[:2] == [[], []] and out[2][0].scan is not None
    assert out[2][0].scan.ports == (50, 51, 52)
    det.tick(81.0)
    assert det.stats()["cleared"] == 0


# ---------------------------------------------------------------------- bounds
def spoofed(i: int) -> IPAddress:
    return IPv4Address(0x0A000000 + i)


def test_sources_are_lru_bounded_and_evictions_counted() -> None:
    det = ScanDetector(DetectorConfig(max_sources=100))
    for i in range(1000):
        det.feed(ev(src=spoofed(i)), 0.0)
    st_ = det.stats()
    assert st_["suspects"] == 100 and st_["sources_evicted"] == 900 and st_["entries"] == 100


def test_a_flood_of_spoofed_sources_does_not_evict_a_known_scanner() -> None:
    det = ScanDetector(DetectorConfig(max_sources=100, summary_interval=10.0))
    play(det, ports_script([1, 2, 3, 4]))
    for i in range(10_000):
        det.feed(ev(src=spoofed(i), dport=i % 7), 5.0)
    assert det.is_scanner(SCANNER)
    det.feed(ev(PROBE, dport=99), 6.0)
    (s,) = det.tick(13.0)
    assert s.src == SCANNER and s.scan is not None and s.scan.probes == 1


def test_a_scanner_among_the_flood_is_still_caught_if_faster_than_the_churn() -> None:
    det = ScanDetector(DetectorConfig(max_sources=1000))
    out = []
    for i in range(4000):
        if i % 100 == 0:
            out += det.feed(ev(dport=i // 100 + 1), 1.0)
        det.feed(ev(src=spoofed(i)), 1.0)
    assert [e.src for e in out] == [SCANNER]


def test_total_entries_are_bounded() -> None:
    det = ScanDetector(DetectorConfig(max_sources=1000, max_entries=50))
    for i in range(100):
        for p in (1, 2, 3):
            det.feed(ev(src=spoofed(i), dport=p), 0.0)
    assert det.stats()["entries"] <= 50 and det.stats()["sources_evicted"] > 0


def test_attempts_per_source_are_bounded() -> None:
    det = ScanDetector(DetectorConfig(max_attempts=10))
    cap = DetectorConfig(max_attempts=10).attempts_per_source
    assert cap == 3 + 25 + 2
    # a "diagonal" pattern: 3 ports per host, a new port set per host: no rule fires
    for h, target in enumerate(hosts(100)):
        for p in range(3):
            assert det.feed(ev(dst=target, dport=3 * h + p), 0.0) == []
    assert det.stats()["entries"] == cap and det.stats()["attempts_dropped"] == 300 - cap


def test_tick_drops_stale_suspects() -> None:
    det = ScanDetector()
    play(det, ports_script([1, 2]))
    det.feed(ev(src=OTHER), 50.0)
    det.tick(100.0)
    assert det.stats()["suspects"] == 1  # OTHER, seen at 50
    det.tick(111.0)
    assert det.stats()["suspects"] == 0 and det.stats()["entries"] == 0


def test_memory_per_tracked_source() -> None:
    """docs/detection.md quotes these figures (about 430 bytes for a one-attempt source,
    about 140 bytes per further attempt); the bound here only catches regressions."""
    det = ScanDetector(DetectorConfig(max_sources=100_000, max_entries=1_000_000))
    n = 5_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            det.feed(ev(src=spoofed(i)), 0.0)
        gc.collect()
        per_source = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert per_source < 700


# ---------------------------------------------------------------------- other input
def test_other_events_are_ignored() -> None:
    det = ScanDetector()
    s = scan(0.0, ScanKind.PORT, (1,), probes=1)
    no_dst = replace(ev(dport=1), dst=None)
    assert play(det, [(0.0, s), (0.0, no_dst)] * 10) == []
    assert det.stats()["attempts"] == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"scan_ports": 0},
        {"scan_hosts": 0},
        {"scan_window": 0.0},
        {"failed_points": 1},
        {"max_sources": 0},
    ],
)
def test_bad_config_names_the_key(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError) as ei:
        DetectorConfig(**bad)  # type: ignore[arg-type]
    assert next(iter(bad)) in str(ei.value)


# ---------------------------------------------------------------------- with the flow table
def test_a_slow_syn_scan_through_the_flow_table() -> None:
    """SYNs to closed ports answered by RST, 20 s apart: the flow table ends each flow 2 s
    after its RST with one answering packet (a failed attempt, 3 points): the third closed
    port is a scan as soon as its SYN is seen (3 + 3 + 2 > 6), where answered connections
    would need a fourth port."""
    from netwarden.stats.flows import FlowTable

    syn, rst_ack = 0x02, 0x14
    events: list[Event] = []
    table = FlowTable(events.append, local_addrs=[HOST.packed], id_prefix="t")
    det = ScanDetector()
    out: list[tuple[float, Event]] = []

    def packet(
        t: float, src: IPAddress, dst: IPAddress, ports: tuple[int, int], flags: int
    ) -> None:
        table.packet(t, (4, 6, src.packed, dst.packed, *ports, 40, flags, 0, 0, None, 0))
        table.expire(t)
        for e in events:
            out.extend((t, s) for s in det.feed(e, t))
        events.clear()

    for i, port in enumerate((21, 23, 25)):
        t = 20.0 * i
        packet(t, SCANNER, HOST, (40000 + i, port), syn)
        packet(t + 0.001, HOST, SCANNER, (port, 40000 + i), rst_ack)
        packet(t + 2.5, SCANNER, OTHER, (1, 1), syn)  # time passes: flows end
    assert [(t, s.scan) for t, s in out] == [
        (40.0, ScanInfo(SCANNER, ScanKind.PORT, (21, 23, 25), 1, 60.0, probes=3))
    ]


def test_an_end_reported_late_counts_at_the_flow_start() -> None:
    """The packet backend reports a RST-ended flow ~2 s after its last packet: the attempt
    belongs to the flow's start, not to the report time minus the duration."""
    det = ScanDetector(DetectorConfig(scan_window=2.0))
    # ports 1 and 2 at 0.0 and 1.25 (answered by RST), their ends reported 2.2 s later
    assert det.feed(ev(NEW, dport=1, ts=0.0), 0.0) == []
    assert det.feed(ev(NEW, dport=2, ts=1.25), 1.25) == []
    assert det.feed(ev(END, dport=1, resp_pkts=1, duration=0.0, ts=0.0), 2.2) == []
    # port 3 at 2.5: port 1's attempt (at 0.0) has left the 2 s window
    assert det.feed(ev(NEW, dport=3, ts=2.5), 2.5) == []
