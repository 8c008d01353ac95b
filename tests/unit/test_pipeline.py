"""The pipeline's order of work: detection before outputs, derived events after the batch,
the store written before its backlog grows without bound. Fakes for the source and the
defense; a real store in a temp dir."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from netwarden import pipeline as pl
from netwarden.config import Config
from netwarden.events import Direction, Event, EventType, Proto, ScanInfo, ScanKind
from netwarden.stats.names import NameCache
from netwarden.store.sqlite import open_store

SRC = ip_address("192.0.2.9")
DST = ip_address("198.51.100.1")


def flow(port: int, kind: EventType = EventType.NEW, fid: str | None = None) -> Event:
    return Event(
        ts=1.0,
        event=kind,
        proto=Proto.TCP,
        ipproto=6,
        family=4,
        src=SRC,
        dst=DST,
        sport=40000,
        dport=port,
        flow=fid or f"f-{port}",
        direction=Direction.IN,
    )


class Detector:
    def stats(self) -> dict[str, int]:
        return {"sources_evicted": 0, "attempts_dropped": 0}


class FakeDefense:
    """Flags a scan at port 4 (and says what it saw when)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.detector = Detector()
        self.emit: Any = None

    def blocked_count(self) -> int:
        return 0

    def feed(self, e: Event, now: float) -> None:
        self.log.append(f"judge {e.dport}")
        if e.dport == 4:
            info = ScanInfo(scanner=SRC, kind=ScanKind.PORT, ports=(1, 2, 3, 4), targets=1)
            self.emit(Event(ts=now, event=EventType.SCAN, proto=Proto.TCP, ipproto=6,
                            family=4, src=SRC, dst=DST, scan=info))  # fmt: skip

    def refresh(self) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


class Printer:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.autoflush = True

    def __call__(self, e: Event) -> None:
        self.log.append(f"out {e.event} {e.dport if e.scan is None else 'scan'}")

    def flush(self) -> None:
        self.log.append("flush")


class Source:
    name = "fake"


class InlineSource(Source):
    """Like the packet backend: has a lock and judges events as it makes them."""

    def __init__(self) -> None:
        self.lock: Any = None
        self.judge: Any = None

    def make(self, events: list[Event]) -> list[Event]:
        with self.lock:
            for e in events:
                self.judge(e)
        return events


def make(tmp_path: Path, source: Any, log: list[str], store: bool = False) -> pl.Pipeline:
    cfg = Config(state_dir=str(tmp_path))
    return pl.Pipeline(
        cfg,
        source,
        printer=Printer(log),
        store=open_store(str(tmp_path)) if store else None,
        defense=FakeDefense(log),
    )


def test_a_batch_is_judged_before_it_is_written_out(tmp_path: Path) -> None:
    log: list[str] = []
    p = make(tmp_path, Source(), log)
    p.handle_batch([flow(1), flow(2), flow(3), flow(4), flow(5)])
    assert log == [
        *(f"judge {i}" for i in range(1, 6)),
        *(f"out new {i}" for i in range(1, 6)),
        "out scan scan",  # after the new events that caused it
        "flush",  # once per batch: the printer no longer flushes each line
    ]
    assert p.printer is not None and not p.printer.autoflush  # type: ignore[attr-defined]


def test_a_packet_source_judges_each_event_as_it_is_made(tmp_path: Path) -> None:
    log: list[str] = []
    src = InlineSource()
    p = make(tmp_path, src, log)
    assert src.lock is p.lock and src.judge is not None
    events = src.make([flow(3), flow(4)])
    assert log == ["judge 3", "judge 4"]  # the verdict needs no output first
    p.handle_batch(events)  # not judged twice
    assert log == ["judge 3", "judge 4", "out new 3", "out new 4", "out scan scan", "flush"]


def test_derived_events_outside_a_batch_go_out_at_once(tmp_path: Path) -> None:
    log: list[str] = []
    p = make(tmp_path, Source(), log)
    assert p.defense is not None
    p.defense.emit(flow(9, EventType.UNBLOCK))  # e.g. an expiry on the ticker
    assert log == ["out unblock 9", "flush"]


def test_a_large_store_backlog_wakes_the_ticker_then_is_written_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pl, "FLUSH_BACKLOG", 4)
    monkeypatch.setattr(pl, "WRITE_BACKLOG", 8)
    log: list[str] = []
    p = make(tmp_path, Source(), log, store=True)
    assert p.store is not None
    p.handle_batch([flow(100 + i) for i in range(3)])
    assert not p.wake.is_set() and p.store.backlog() == 3
    p.handle_batch([flow(200 + i) for i in range(3)])
    assert p.wake.is_set() and p.store.backlog() == 6  # the ticker's job
    p.handle_batch([flow(300 + i) for i in range(3)])
    assert p.store.backlog() == 0  # 9 > 8: written before more packets are taken
    assert len(p.store.flows()) == 9
    p.close()


def test_stats_json_is_written_row_by_row(tmp_path: Path) -> None:
    """stats.json: Sniffer's header, then one row per line, most bytes first; the same as
    stats() (which the file streams, so 100,000 rows are never all dicts at once)."""
    resolved: list[tuple[str, bool]] = []

    def resolve(addr: str) -> tuple[list[str], float]:
        resolved.append((addr, (tmp_path / "stats.json").exists()))
        return [f"h{addr[-1]}.example"], 60.0

    p = pl.Pipeline(
        Config(state_dir=str(tmp_path)),
        Source(),
        store=open_store(str(tmp_path)),
        names=NameCache(resolve),
    )
    assert p.store is not None
    now = time.time()
    p.stats_start = now - 120.0
    for i, other in enumerate(["203.0.113.1", "203.0.113.2", "203.0.113.1"]):
        e = flow(80 + i, EventType.END)
        p.store.add(
            replace(e, ts=now, src=ip_address(other), orig_bytes=100 * (i + 1), duration=0.5)
        )
    path = p.write_stats()
    text = Path(path).read_text()
    doc = json.loads(text)
    assert doc["users"] == 2 and [r["key"] for r in doc["rows"]] == ["203.0.113.1", "203.0.113.2"]
    assert doc["rows"][0]["bytes"] == 400 and doc["rows"][0]["conns"] == 2
    minutes = (doc["current"] - p.stats_start) / 60.0
    assert doc["hits_per_minute"] == pytest.approx(3 / minutes, abs=1e-3)
    rows = [line for line in text.splitlines() if line.startswith("  {")]
    assert [json.loads(line.rstrip(","))["key"] for line in rows] == [
        "203.0.113.1",
        "203.0.113.2",
    ]
    # no reverse lookup ran while the dump was being written: they start after it, and
    # their names are in the next dump
    p.names.wait()
    assert sorted(resolved) == [("203.0.113.1", True), ("203.0.113.2", True)]
    assert doc["rows"][0]["names"] == []
    again = json.loads(Path(p.write_stats()).read_text())
    assert [r["names"] for r in again["rows"]] == [["h1.example"], ["h2.example"]]
    assert len(resolved) == 2
    # the streamed file is stats() (the dict), to the row
    assert {k: v for k, v in again.items() if k != "current"} == {
        k: v for k, v in p.stats().items() if k != "current"
    }
    assert [{**r, "names": [], "names_expire": None} for r in again["rows"]] == doc["rows"]
    # and with nothing seen
    p.stats_start = time.time() + 60
    assert json.loads(Path(p.write_stats()).read_text())["rows"] == []
    p.close()


class Lock:
    """Records whether it is held."""

    def __init__(self) -> None:
        self.held = False

    def __enter__(self) -> None:
        self.held = True

    def __exit__(self, *exc: object) -> None:
        self.held = False


class Ring:
    """Stands in for the capture ring: hands over ``batches``; ``ready()`` says whether the
    next one is non-empty (it was in the ring already)."""

    def __init__(self, batches: list[list[tuple[object, ...]]]) -> None:
        self._batches = batches
        self._next = 0

    def batches(self, timeout: float) -> Any:
        for i, b in enumerate(self._batches):
            self._next = i + 1
            yield b

    def ready(self) -> bool:
        return self._next < len(self._batches) and bool(self._batches[self._next])


def test_the_packet_source_changes_its_flow_table_only_under_its_lock() -> None:
    """The daemon's ticker snapshots the flow table under the pipeline's lock; the capture
    loop must change it under the same lock (it used to race: "OrderedDict mutated during
    iteration")."""
    from netwarden.capture.packets import SniffSource, _EventSource
    from netwarden.events import Source as Kind
    from tests import pktbuild as pb

    data = pb.ether(pb.ipv4("192.0.2.9", "198.51.100.1", 6, pb.tcp(40000, 80, 0x02)))
    src = SniffSource.__new__(SniffSource)  # no ring: a fake one below
    _EventSource.__init__(
        src, Kind.SNIFF, local_addrs=[DST.packed], timeouts=None, tcp_connections_only=False
    )
    now = time.time()  # the source expires flows by the wall clock
    src.ring = Ring([[(now, data, len(data), 1, 1, 1)], []])  # type: ignore[assignment]
    src.poll_interval = 0.1
    lock = Lock()
    src.lock = lock
    seen: list[bool] = []
    judged: list[bool] = []
    feed = src.counter.feed

    def checked(batch: Any) -> None:
        seen.append(lock.held)
        feed(batch)

    src.counter.feed = checked  # type: ignore[method-assign]
    src.judge = lambda e: judged.append(lock.held)
    batches = list(src.batches())
    assert seen == [True] and judged == [True, True]  # the new, and the end at the stop
    assert [[e.event for e in b] for b in batches] == [[EventType.NEW], [], [EventType.END]]
    assert not lock.held


def test_packets_already_in_the_ring_are_judged_before_the_outputs() -> None:
    """Three SYNs in three ring batches, all ready at once: each is judged as it is counted,
    and the events come out together after the last (a probe never waits for the outputs
    of the packets before it); then an empty poll, then the ends at the stop."""
    from netwarden.capture.packets import SniffSource, _EventSource
    from netwarden.events import Source as Kind
    from tests import pktbuild as pb

    now = time.time()
    rings = []
    for port in (22, 23, 25):
        data = pb.ether(pb.ipv4("192.0.2.9", "198.51.100.1", 6, pb.tcp(40000, port, 0x02)))
        rings.append([(now, data, len(data), 1, 1, 1)])
    src = SniffSource.__new__(SniffSource)
    _EventSource.__init__(
        src, Kind.SNIFF, local_addrs=[DST.packed], timeouts=None, tcp_connections_only=False
    )
    src.ring = Ring([*rings, []])  # type: ignore[assignment]
    src.poll_interval = 0.1
    order: list[str] = []
    src.judge = lambda e: order.append(f"judge {e.event.value} {e.dport}")
    out = []
    for events in src.batches():
        order.append(f"out {len(events)}")
        out.append([(e.event.value, e.dport) for e in events])
    assert order == [
        "judge new 22", "judge new 23", "judge new 25", "out 3", "out 0",
        "judge end 22", "judge end 23", "judge end 25", "out 3",
    ]  # fmt: skip
    assert out[0] == [("new", 22), ("new", 23), ("new", 25)]
