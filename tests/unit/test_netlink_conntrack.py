"""ConntrackSource's event logic and the /proc socket search, without a kernel: recorded
ctnetlink events fed in order, and a fake /proc tree."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from netwarden.capture.conntrack import ConntrackSource, tracking_rule_script
from netwarden.capture.sockdiag import ProcSocketIndex
from netwarden.events import Attribution, Direction, EventType, Source
from tests.unit.test_netlink_wire import META, datagrams

LOCAL = frozenset({socket.inet_aton("10.99.0.2"), socket.inet_pton(socket.AF_INET6, "fd00:99::2")})


def source(**kw: object) -> ConntrackSource:
    return ConntrackSource(local_addrs=LOCAL, attribute=False, **kw)  # type: ignore[arg-type]


def test_recorded_events_give_new_and_end_per_flow() -> None:
    src = source()
    for d in datagrams("netlink_ct_events.bin"):
        src.feed(d)
    events = src.take_events()
    news = [e for e in events if e.event is EventType.NEW]
    ends = [e for e in events if e.event is EventType.END]
    assert len(news) == 4 and len(ends) == 4
    assert {e.flow for e in news} == {e.flow for e in ends}
    assert all(e.source is Source.CONNTRACK for e in events)
    assert all(e.direction is Direction.OUT for e in events)
    assert all(e.attribution is Attribution.NONE for e in events)
    (l4, lp4), (r4, rp4) = META["tcp4"]
    tcp4 = [e for e in events if e.sport == lp4 and e.family == 4]
    assert [e.event for e in tcp4] == [EventType.NEW, EventType.END]
    new, end = tcp4
    assert (str(new.src), new.sport, str(new.dst), new.dport) == (l4, lp4, r4, rp4)
    assert end.orig_pkts == 5 and end.orig_bytes == 286
    assert end.resp_pkts == 4 and end.resp_bytes == 237
    assert end.duration is not None and 0 < end.duration < 5
    udp = next(e for e in ends if e.proto == "udp")
    assert udp.orig_bytes == 33 and udp.resp_bytes == 33
    icmp = next(e for e in ends if e.proto == "icmp")
    assert icmp.sport is None and icmp.dport is None
    assert src.summary()["malformed_messages"] == 0


def test_tcp_close_ends_the_flow_before_destroy() -> None:
    src = source()
    events = []
    v6_end_at = None
    for i, d in enumerate(datagrams("netlink_ct_events.bin")):
        src.feed(d)
        src.flush_closing()  # (the loop does this once per batch of datagrams)
        for e in src.take_events():
            events.append(e)
            if e.event is EventType.END and e.family == 6:
                v6_end_at = i
    # the IPv6 connection was reset (CLOSE): it ends at that update, before its DESTROY
    assert v6_end_at is not None and v6_end_at < 15
    assert sum(1 for e in events if e.family == 6 and e.event is EventType.END) == 1


def test_destroy_without_new_still_ends_once() -> None:
    src = source()
    destroys = datagrams("netlink_ct_events.bin")[-4:]
    for d in destroys:
        src.feed(d)
    events = src.take_events()
    # the reset IPv6 flow (state CLOSE at destroy) is taken as ended before we started
    assert [e.event for e in events] == [EventType.END] * 3
    assert src.summary()["unknown_end"] == 3
    for d in destroys:  # the same destroys again: nothing new
        src.feed(d)
    assert src.take_events() == []


def test_duplicate_new_is_ignored_and_protocol_filter() -> None:
    src = source(protocols={17})
    first = datagrams("netlink_ct_events.bin")
    for d in first + first[:8]:
        src.feed(d)
    events = src.take_events()
    assert {e.proto for e in events} == {"udp"}
    assert [e.event for e in events] == [EventType.NEW, EventType.END, EventType.NEW]
    # a reused conntrack id gets a distinct flow id
    assert events[2].flow != events[0].flow


def test_garbage_datagrams_are_counted() -> None:
    src = source()
    src.feed(b"\xff" * 3)
    src.feed(b"\x20\x00\x00\x00\x00\x01\x00\x00" + b"\0" * 24)
    src.feed(b"\x10\x00\x00\x00\x00\x01" + b"\0" * 2)
    assert src.take_events() == []
    assert src.summary()["malformed_messages"] >= 1


def test_tracking_script_is_idempotent() -> None:
    script = tracking_rule_script()
    assert script.startswith("table inet netwarden_ct\ndelete table inet netwarden_ct\n")
    assert "ct state new" in script


# --------------------------------------------------------------------------- /proc search
def fake_proc(root: Path, procs: dict[int, tuple[int, list[str]]]) -> None:
    for pid, (_uid, links) in procs.items():
        fd = root / str(pid) / "fd"
        fd.mkdir(parents=True)
        for i, target in enumerate(links):
            os.symlink(target, fd / str(i))
        (root / str(pid) / "cgroup").write_text("0::/\n")


def test_proc_index_finds_and_caches(tmp_path: Path) -> None:
    fake_proc(
        tmp_path,
        {
            10: (0, ["/dev/null", "socket:[111]"]),
            20: (0, ["socket:[222]", "pipe:[5]", "socket:[333]"]),
            30: (0, ["anon_inode:[eventpoll]"]),
        },
    )
    idx = ProcSocketIndex(str(tmp_path), cgroup_root=None)
    assert idx.find(222) == 20
    # every socket of the scanned process is remembered
    assert idx.find(333) == 20
    assert idx.stats.inode_cached == 1
    assert idx.find(111) == 10
    assert idx.find(999) is None
    assert idx.find(0) is None


def test_proc_index_is_bounded(tmp_path: Path) -> None:
    procs = {pid: (0, [f"socket:[{pid}]"]) for pid in range(100, 140)}
    fake_proc(tmp_path, procs)
    idx = ProcSocketIndex(str(tmp_path), cgroup_root=None, max_pids=5)
    # newest (highest) pids first: found within the bound
    assert idx.find(139) == 139
    # an old pid beyond the bound is not found, and the search stopped at the bound
    idx2 = ProcSocketIndex(str(tmp_path), cgroup_root=None, max_pids=5)
    assert idx2.find(100) is None
    assert idx2.stats.pids_scanned == 5


def test_proc_index_allowance(tmp_path: Path) -> None:
    fake_proc(tmp_path, {1: (0, ["socket:[1]"])})
    now = [0.0]
    idx = ProcSocketIndex(
        str(tmp_path), cgroup_root=None, allowance_per_second=0.0, clock=lambda: now[0]
    )
    assert idx.find(1) is None
    assert idx.stats.proc_skipped == 1


def test_proc_index_prefers_the_cgroup(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    (cg / "a").mkdir(parents=True)
    (cg / "b").mkdir()
    proc = tmp_path / "proc"
    fake_proc(proc, {5: (0, ["socket:[55]"]), 9: (0, ["socket:[99]"])})
    (proc / "5" / "cgroup").write_text("0::/a\n")
    (proc / "9" / "cgroup").write_text("0::/b\n")
    idx = ProcSocketIndex(str(proc), cgroup_root=str(cg), max_pids=1)
    # pid 9 is newer but in another cgroup: the cgroup's process is searched first
    assert idx.find(55, cgroup_id=os.stat(cg / "a").st_ino) == 5
