"""The SQLite audit store: upserts, filters, retention, migration, corruption."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwarden.errors import UsageError
from netwarden.events import (
    Direction,
    Event,
    EventType,
    ProcessInfo,
    Proto,
    ScanInfo,
    ScanKind,
)
from netwarden.store.sqlite import SCHEMA_VERSION, FlowFilter, open_store


def flow(
    fid: str,
    kind: EventType,
    ts: float,
    dst: str = "198.51.100.7",
    dport: int = 443,
    pid: int | None = 42,
    comm: str | None = "curl",
    obytes: int = 100,
    direction: Direction = Direction.OUT,
    **kw: object,
) -> Event:
    return Event(
        ts=ts, event=kind, proto=Proto.TCP, ipproto=6, family=4,
        src=ip_address("192.0.2.1"), dst=ip_address(dst), sport=40000, dport=dport,
        flow=fid, direction=direction, orig_bytes=obytes, resp_bytes=2 * obytes, orig_pkts=3,
        resp_pkts=4, duration=1.5 if kind is EventType.END else None,
        process=ProcessInfo(pid=pid, comm=comm, uid=1000), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_new_then_end_is_one_row_with_final_counters(tmp_path: Path) -> None:
    s = open_store(str(tmp_path))
    s.add(flow("a", EventType.NEW, 10.0, obytes=60))
    assert s.flush() == 1
    s.add(flow("a", EventType.END, 11.5, pid=None, comm=None, obytes=500))
    s.flush()
    rows = s.flows()
    assert len(rows) == 1
    r = rows[0]
    assert r["event"] == "end" and r["orig_bytes"] == 500 and r["resp_bytes"] == 1000
    assert r["pid"] == 42 and r["comm"] == "curl"  # attribution kept from the new event
    assert Event.from_dict(r).dst == ip_address("198.51.100.7")
    s.close()


def test_filters(tmp_path: Path) -> None:
    s = open_store(str(tmp_path))
    s.add(flow("a", EventType.END, 100.0, dst="198.51.100.7", dport=443))
    s.add(flow("b", EventType.END, 200.0, dst="198.51.100.200", dport=80, pid=7, comm="wget"))
    s.add(flow("c", EventType.END, 300.0, dst="203.0.113.5", dport=53))
    s.flush()

    def ids(**kw: object) -> list[str]:
        return [r["flow"] for r in s.flows(FlowFilter(**kw))]  # type: ignore[arg-type]

    assert ids() == ["a", "b", "c"]
    assert ids(dst="198.51.100.0/24") == ["a", "b"]
    assert ids(dst="203.0.113.5") == ["c"]
    assert ids(src="192.0.2.0/24", port=80) == ["b"]
    assert ids(comm="wget") == ["b"] and ids(pid=42) == ["a", "c"]
    assert ids(since=150.0) == ["b", "c"] and ids(until=150.0) == ["a"]
    assert ids(limit=1) == ["c"]
    with pytest.raises(UsageError, match="--dst"):
        s.flows(FlowFilter(dst="nonsense"))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flows=st.lists(
        st.tuples(
            st.sampled_from(list(Direction)),
            st.sampled_from([EventType.NEW, EventType.END]),
            st.integers(0, 5),  # the remote, from a few
            st.one_of(st.none(), st.integers(0, 10**9)),
            st.one_of(st.none(), st.floats(0, 1000, allow_nan=False)),
            st.one_of(st.none(), st.sampled_from(["", "curl", "a,b:c", "ssh\x1f", "ünï"])),
        ),
        max_size=40,
    ),
    limit=st.one_of(st.none(), st.integers(1, 40)),
    since=st.one_of(st.none(), st.floats(1000, 1040)),
)
def test_remote_totals_are_the_python_summary(
    tmp_path_factory: pytest.TempPathFactory,
    flows: list[tuple[Direction, EventType, int, int | None, float | None, str | None]],
    limit: int | None,
    since: float | None,
) -> None:
    """stats.json's rows added up by SQLite are exactly report.aggregate's by ip, over the
    same latest flows (any direction, new or end, missing bytes, odd process names)."""
    from netwarden.stats.report import aggregate, summarize_store

    s = open_store(str(tmp_path_factory.mktemp("st")))
    for i, (direction, kind, r, obytes, dur, comm) in enumerate(flows):
        e = flow(f"f{i}", kind, 1000.0 + i, dst=f"198.51.100.{r}", comm=comm, pid=None,
                 direction=direction)  # fmt: skip
        s.add(replace(e, orig_bytes=obytes, duration=dur, src=ip_address(f"203.0.113.{r}")))
    s.flush()
    summary = summarize_store(s, since, limit)
    rows = list(summary.rows())
    assert rows == aggregate(s.flows(FlowFilter(since=since, limit=limit)))
    assert summary.count == len(rows) and summary.conns == sum(r["conns"] for r in rows)
    assert summary.bytes == sum(r["bytes"] for r in rows)
    s.close()


def test_scan_events_and_retention(tmp_path: Path) -> None:
    s = open_store(str(tmp_path))
    scan = ScanInfo(
        scanner=ip_address("203.0.113.66"),
        kind=ScanKind.PORT,
        ports=(1, 2, 3, 4),
        targets=1,
        window=60.0,
    )
    s.add(
        Event(
            ts=50.0,
            event=EventType.SCAN,
            proto=Proto.TCP,
            ipproto=6,
            family=4,
            src=ip_address("203.0.113.66"),
            dst=None,
            scan=scan,
        )
    )
    s.add(flow("old", EventType.END, 10.0))
    s.add(flow("new", EventType.END, 1000.0))
    s.flush()
    ev = s.events(kinds=["scan"])
    assert ev[0]["scanner"] == "203.0.113.66" and ev[0]["ports"] == [1, 2, 3, 4]
    assert s.retain(max_age=500, now=1100.0) == 2
    assert [r["flow"] for r in s.flows()] == ["new"]
    assert s.integrity() == "ok"


def test_schema_version_and_reopen(tmp_path: Path) -> None:
    s = open_store(str(tmp_path))
    s.add(flow("a", EventType.NEW, 1.0))
    s.close()
    conn = sqlite3.connect(tmp_path / "netwarden.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    s = open_store(str(tmp_path), readonly=True)
    assert [r["flow"] for r in s.flows()] == ["a"]


def test_corrupt_database_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "netwarden.db").write_bytes(b"this is not sqlite at all" * 100)
    s = open_store(str(tmp_path))
    s.add(flow("a", EventType.NEW, 1.0))
    s.flush()
    assert [r["flow"] for r in s.flows()] == ["a"]
    aside = [p for p in os.listdir(tmp_path) if ".corrupt-" in p]
    assert aside and "moved aside" in caplog.text


def test_unwritable_state_dir(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--state-dir"):
        open_store("/proc/netwarden-nope")
    with pytest.raises(UsageError, match="no audit store"):
        open_store(str(tmp_path / "empty"), readonly=True)
