"""nftables rendering (exact text), listing parsing, and the commands the Blocker sends
(through a recorder standing in for libnftables; the real kernel is in
tests/integration/test_blocker.py)."""

from __future__ import annotations

import json
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from netwarden.act import nft
from netwarden.act.blocker import Block, Blocker
from netwarden.act.libnftables import Nft, NftError
from netwarden.detect.policy import Policy, PolicyConfig
from netwarden.errors import MissingCapability, UsageError

RULESET = """\
table inet netwarden {
\tset blocked4 {
\t\ttype ipv4_addr
\t\tflags timeout
\t}
\tset blocknet4 {
\t\ttype ipv4_addr
\t\tflags interval,timeout
\t}
\tset blocked6 {
\t\ttype ipv6_addr
\t\tflags timeout
\t}
\tset blocknet6 {
\t\ttype ipv6_addr
\t\tflags interval,timeout
\t}
\tchain prerouting {
\t\ttype filter hook prerouting priority raw - 10; policy accept;
\t\ttcp flags & (ack | rst) == 0 jump blocked_source
\t}
\tchain prerouting_ct {
\t\ttype filter hook prerouting priority mangle - 10; policy accept;
\t\tct state new meta l4proto != tcp jump blocked_source
\t}
\tchain blocked_source {
\t\tip saddr @blocked4 counter drop
\t\tip saddr @blocknet4 counter drop
\t\tip6 saddr @blocked6 counter drop
\t\tip6 saddr @blocknet6 counter drop
\t}
}
"""


def net(text: str) -> nft.IPNetwork:
    return ip_network(text)


# ---------------------------------------------------------------------- rendering
def test_ruleset() -> None:
    assert nft.ruleset() == RULESET


def test_start_is_one_idempotent_transaction() -> None:
    elems = [
        nft.Element(net("192.0.2.7/32"), 3_599_500),
        nft.Element(net("2001:db8::7/128"), None),
        nft.Element(net("198.51.100.0/24"), 60_000),
        nft.Element(net("192.0.2.8/32"), 1),
    ]
    assert nft.start_commands(elems) == (
        "table inet netwarden\n"
        "delete table inet netwarden\n"
        + RULESET
        + "add element inet netwarden blocked4 { 192.0.2.7 timeout 3599500ms,"
        " 192.0.2.8 timeout 1ms }\n"
        "add element inet netwarden blocked6 { 2001:db8::7 }\n"
        "add element inet netwarden blocknet4 { 198.51.100.0/24 timeout 60000ms }\n"
    )


def test_replace_elements() -> None:
    assert nft.replace_elements([nft.Element(net("192.0.2.7/32"), 5000)]) == (
        "add element inet netwarden blocked4 { 192.0.2.7 }\n"
        "delete element inet netwarden blocked4 { 192.0.2.7 }\n"
        "add element inet netwarden blocked4 { 192.0.2.7 timeout 5000ms }\n"
    )


def test_delete_elements_and_table() -> None:
    assert nft.delete_elements([net("2001:db8::/48"), net("2001:db8::1/128")]) == (
        "delete element inet netwarden blocknet6 { 2001:db8::/48 }\n"
        "delete element inet netwarden blocked6 { 2001:db8::1 }\n"
    )
    assert nft.delete_table() == "table inet netwarden\ndelete table inet netwarden\n"
    assert nft.list_table("nwtest") == "list table inet nwtest\n"


def test_nothing_to_add_is_no_command() -> None:
    assert nft.add_elements([]) == ""


@pytest.mark.parametrize("bad", ["", "1abc", "a b", "a;flush ruleset", "x" * 40])
def test_table_names_are_checked(bad: str) -> None:
    with pytest.raises(ValueError):
        nft.ruleset(bad)


# What libnftables 1.0.6 printed for `list table inet netwarden` on this machine kind.
LISTING: dict[str, Any] = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5"}},
        {"table": {"family": "inet", "name": "netwarden", "handle": 1}},
        {
            "set": {
                "family": "inet",
                "name": "blocked4",
                "table": "netwarden",
                "type": "ipv4_addr",
                "handle": 4,
                "flags": ["timeout"],
                "elem": [
                    {"elem": {"val": "192.0.2.1", "timeout": 10, "expires": 9}},
                    "192.0.2.2",
                ],
            }
        },
        {
            "set": {
                "family": "inet",
                "name": "blocknet4",
                "table": "netwarden",
                "type": "ipv4_addr",
                "handle": 5,
                "flags": ["interval", "timeout"],
                "elem": [
                    {
                        "elem": {
                            "val": {"prefix": {"addr": "10.0.0.0", "len": 8}},
                            "timeout": 60,
                            "expires": 59,
                        }
                    },
                    {"range": ["10.0.0.1", "10.0.0.9"]},
                ],
            }
        },
        {"set": {"family": "inet", "name": "blocked6", "table": "netwarden", "elem": ["x"]}},
        {"set": {"family": "ip", "name": "blocked4", "table": "netwarden", "elem": ["1.1.1.1"]}},
        {"set": {"family": "inet", "name": "other", "table": "netwarden", "elem": ["1.1.1.1"]}},
        {"chain": {"family": "inet", "table": "netwarden", "name": "prerouting"}},
    ]
}


def test_parse_elements() -> None:
    assert nft.parse_elements(LISTING) == {
        "blocked4": [
            nft.KernelElement(net("192.0.2.1/32"), 10.0, 9.0),
            nft.KernelElement(net("192.0.2.2/32"), None, None),
        ],
        "blocknet4": [nft.KernelElement(net("10.0.0.0/8"), 60.0, 59.0)],
        "blocked6": [],
    }
    assert nft.parse_elements({}) == {}


# ---------------------------------------------------------------------- the Blocker
class Recorder:
    """Stands in for libnftables: records commands; ``table`` says whether the table exists."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.table = False
        self.fail_with: str | None = None

    def run(self, commands: str) -> str:
        self.commands.append(commands)
        if self.fail_with is not None:
            raise NftError(self.fail_with, commands)
        if commands.startswith("table inet netwarden\ndelete table"):
            self.table = "delete table inet netwarden\ntable inet netwarden {" in commands
            return ""
        if not self.table:
            raise NftError("Error: Could not process rule: No such file or directory", commands)
        return ""

    def run_json(self, commands: str) -> dict[str, Any]:
        self.commands.append(commands)
        return LISTING


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def blocker(tmp_path: Path, rec: Recorder, clock: Clock, **kw: Any) -> Blocker:
    return Blocker(tmp_path, nft=rec, clock=clock, **kw)


def state(tmp_path: Path) -> list[dict[str, Any]]:
    doc = json.loads((tmp_path / "blocks.json").read_text())
    assert doc["version"] == 1 and doc["table"] == "inet netwarden"
    return list(doc["blocks"])


def test_start_creates_the_table_and_block_adds_an_element(
    tmp_path: Path, rec: Recorder, clock: Clock
) -> None:
    b = blocker(tmp_path, rec, clock)
    assert b.start().restored == []
    assert rec.commands == [nft.start_commands()]
    blk = b.block("192.0.2.7", 3600.0, reason="port scan", ports=[443, 22, 22])
    assert blk == Block(net("192.0.2.7/32"), 1000.0, 4600.0, "port scan", (22, 443))
    assert rec.commands[1] == nft.replace_elements([nft.Element(net("192.0.2.7/32"), 3_600_000)])
    assert state(tmp_path) == [
        {"addr": "192.0.2.7", "since": 1000.0, "until": 4600.0, "reason": "port scan",
         "ports": [22, 443]}
    ]  # fmt: skip
    assert blk.to_dict() == state(tmp_path)[0]
    clock.t = 1600.0
    assert b.blocks() == [blk] and blk.remaining(clock.t) == 3000.0


def test_no_timeout(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    b = blocker(tmp_path, rec, clock)
    b.start()
    for d in (None, 0.0):
        blk = b.block("2001:db8::7", d)
        assert blk.until is None and blk.remaining(1e12) is None
    assert rec.commands[-1].endswith("add element inet netwarden blocked6 { 2001:db8::7 }\n")


def test_a_block_never_shortens_a_longer_one(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    b = blocker(tmp_path, rec, clock)
    b.start()
    long = b.block("192.0.2.7", 7200.0, reason="by hand")
    n = len(rec.commands)
    assert b.block("192.0.2.7", 60.0, reason="scan") == long
    assert len(rec.commands) == n  # nothing sent
    longer = b.block("192.0.2.7", 9000.0, reason="scan, offence 2")
    assert longer.until == 10000.0 and b.blocks() == [longer]
    assert rec.commands[-1] == nft.replace_elements([nft.Element(net("192.0.2.7/32"), 9_000_000)])


def test_the_guard_refuses(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    pol = Policy(PolicyConfig(allow=(net("10.0.0.0/8"),)), own_addresses=[net("192.0.2.1/32")[0]])
    b = blocker(tmp_path, rec, clock, guard=pol.refusal)
    b.start()
    for target, why in [
        ("10.1.1.1", "10.1.1.1 is allowlisted (10.0.0.0/8)"),
        ("192.0.2.1", "192.0.2.1 is an address of this host"),
        ("127.0.0.1", "127.0.0.1 is loopback"),
    ]:
        with pytest.raises(UsageError) as ei:
            b.block(target, 60.0)
        assert f"refusing to block it: {why}" in str(ei.value)
    assert rec.commands == [nft.start_commands()]
    assert not (tmp_path / "blocks.json").exists()


def test_overlapping_cidrs_are_refused(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    b = blocker(tmp_path, rec, clock)
    b.start()
    b.block("198.51.100.0/24", 60.0)
    with pytest.raises(UsageError) as ei:
        b.block("198.51.0.0/16", 60.0)
    assert "overlaps the blocked 198.51.100.0/24; unblock it first" in str(ei.value)
    b.block("198.51.100.7", 60.0)  # an address inside: its own set
    b.block("2001:db8::/64", 60.0)  # other family
    assert [x.addr for x in b.blocks()] == ["198.51.100.0/24", "198.51.100.7", "2001:db8::/64"]


def test_unblock(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    b = blocker(tmp_path, rec, clock)
    b.start()
    blk = b.block("192.0.2.7", 60.0)
    assert b.unblock("192.0.2.7") == blk
    assert rec.commands[-1] == "delete element inet netwarden blocked4 { 192.0.2.7 }\n"
    assert b.blocks() == [] and state(tmp_path) == []
    rec.table = False  # not in the kernel either
    assert b.unblock("192.0.2.7") is None


def test_expire_returns_what_ran_out(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    b = blocker(tmp_path, rec, clock)
    b.start()
    short = b.block("192.0.2.7", 10.0)
    forever = b.block("192.0.2.8", None)
    clock.t += 9.9
    assert b.expire() == []
    clock.t += 0.1
    assert b.expire() == [short]
    assert b.blocks() == [forever] and len(state(tmp_path)) == 1
    assert b.expire() == []


def test_restart_restores_the_remaining_time(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    pol = Policy(own_addresses=[])
    b = blocker(tmp_path, rec, clock, guard=pol.refusal)
    b.start()
    a = b.block("192.0.2.7", 100.0, reason="scan")
    c = b.block("198.51.100.0/24", None)
    gone = b.block("192.0.2.9", 10.0)
    own = b.block("192.0.2.10", 1000.0)
    # netwarden dies; 30 s later it starts again; 192.0.2.10 is now an address of this host
    clock.t += 30.0
    pol.set_own_addresses([own.net[0]])
    rec2 = Recorder()
    res = blocker(tmp_path, rec2, clock, guard=pol.refusal).start()
    assert res.restored == [a, c]
    assert res.expired == [gone]
    assert res.refused == [(own, "192.0.2.10 is an address of this host")]
    assert rec2.commands == [
        nft.start_commands(
            [
                nft.Element(net("192.0.2.7/32"), 70_000),
                nft.Element(net("198.51.100.0/24"), None),
            ]
        )
    ]
    assert [x["addr"] for x in state(tmp_path)] == ["192.0.2.7", "198.51.100.0/24"]


def test_a_block_without_the_table_creates_it_with_every_block(
    tmp_path: Path, rec: Recorder, clock: Clock
) -> None:
    """`netwarden block` while no daemon runs: the table appears with all persisted blocks."""
    b = blocker(tmp_path, rec, clock)
    b.start()
    b.block("192.0.2.7", 100.0)
    b.close()
    rec.table = False
    clock.t += 10.0
    cli = blocker(tmp_path, rec, clock)
    cli.block("192.0.2.8", 50.0)
    assert rec.commands[-1] == nft.start_commands(
        [nft.Element(net("192.0.2.7/32"), 90_000), nft.Element(net("192.0.2.8/32"), 50_000)]
    )
    assert rec.table


def test_close_deletes_the_table_and_keeps_the_state(
    tmp_path: Path, rec: Recorder, clock: Clock
) -> None:
    b = blocker(tmp_path, rec, clock)
    b.start()
    b.block("192.0.2.7", 100.0)
    b.close()
    assert rec.commands[-1] == nft.delete_table()
    assert len(state(tmp_path)) == 1


def test_kernel_elements(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    b = blocker(tmp_path, rec, clock)
    assert b.kernel_elements()["blocknet4"] == [nft.KernelElement(net("10.0.0.0/8"), 60.0, 59.0)]
    assert rec.commands == ["list table inet netwarden\n"]


def test_other_nft_errors_surface(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    b = blocker(tmp_path, rec, clock)
    b.start()
    rec.fail_with = "Error: Could not process rule: Device or resource busy"
    with pytest.raises(NftError) as ei:
        b.block("192.0.2.7", 100.0)
    assert ei.value.exit_code == 1
    assert str(ei.value) == "nftables: Error: Could not process rule: Device or resource busy"
    assert not (tmp_path / "blocks.json").exists()


def test_a_bad_state_file_is_set_aside(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    (tmp_path / "blocks.json").write_text("{not json")
    assert blocker(tmp_path, rec, clock).start().restored == []
    assert (tmp_path / "blocks.json.bad").read_text() == "{not json"
    (tmp_path / "blocks.json").write_text(
        json.dumps(
            {
                "version": 1,
                "blocks": [
                    {"addr": "nope", "since": 0},
                    {"addr": "192.0.2.7", "since": 1000.0, "until": None},
                ],
            }
        )
    )
    assert [x.addr for x in blocker(tmp_path, rec, clock).start().restored] == ["192.0.2.7"]


def test_missing_library_is_a_missing_capability() -> None:
    with pytest.raises(MissingCapability) as ei:
        Nft("libnftables-not-here.so.1")
    assert ei.value.exit_code == 3
    assert "apt-get install libnftables1" in str(ei.value)


def test_listing_blocks_needs_no_libnftables(tmp_path: Path, rec: Recorder, clock: Clock) -> None:
    b = blocker(tmp_path, rec, clock)
    b.start()
    blk = b.block("192.0.2.7", 100.0)
    # a reader (``netwarden blocks``) that could not load libnftables still lists
    reader = Blocker(tmp_path, clock=clock)
    assert reader.blocks() == [blk] and reader.get("192.0.2.7") == blk
    assert reader._runner is None


class FakeSets:
    """Stands in for the raw netlink writer (:class:`netwarden.act.nftnl.NftSets`): it
    shares the Recorder's idea of whether the table exists."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.calls: list[tuple[str, int | None]] = []

    def replace(self, addr: Any, timeout_ms: int | None) -> None:
        if not self.rec.table:
            raise NftError("Could not replace element: No such file or directory", "")
        self.calls.append((str(addr), timeout_ms))

    def close(self) -> None:
        pass


def with_sets(tmp_path: Path, rec: Recorder, clock: Clock) -> tuple[Blocker, FakeSets]:
    """A started blocker whose single addresses go to a FakeSets (as the daemon's do)."""
    sets = FakeSets(rec)
    b = blocker(tmp_path, rec, clock, sets=sets)
    b.start()
    return b, sets


def test_a_verdict_goes_to_the_kernel_first_and_is_synced_later(
    tmp_path: Path, rec: Recorder, clock: Clock
) -> None:
    b, sets = with_sets(tmp_path, rec, clock)
    n = len(rec.commands)
    blk = b.block("192.0.2.7", 600.0, reason="port scan", ports=[22], durable=False)
    assert sets.calls == [("192.0.2.7", 600_000)] and len(rec.commands) == n  # no libnftables
    assert state(tmp_path) == [blk.to_dict()]  # in the file already, fsync pending
    assert b._unsynced
    b.sync()
    assert not b._unsynced
    # the rules of the general path hold: a shorter verdict leaves the longer block alone
    assert b.block("192.0.2.7", 60.0, durable=False) == blk and len(sets.calls) == 1
    clock.t += 10.0
    longer = b.block("192.0.2.7", 6000.0, reason="offence 2", durable=False)
    assert sets.calls[-1] == ("192.0.2.7", 6_000_000) and b.blocks() == [longer]
    # a CIDR, and a hand-made block (durable), go through libnftables or the writer as before
    b.block("198.51.100.0/24", 60.0, durable=False)
    assert "blocknet4 { 198.51.100.0/24 timeout 60000ms }" in rec.commands[-1]
    b.block("192.0.2.9", 60.0)
    assert sets.calls[-1] == ("192.0.2.9", 60_000)
    assert [x.addr for x in b.blocks()] == ["192.0.2.7", "198.51.100.0/24", "192.0.2.9"]


def test_a_verdict_sees_a_block_made_by_another_process(
    tmp_path: Path, rec: Recorder, clock: Clock
) -> None:
    daemon, sets = with_sets(tmp_path, rec, clock)
    daemon.block("192.0.2.7", 60.0, durable=False)
    clock.t += 1.0
    blocker(tmp_path, rec, clock).block("192.0.2.8", 7200.0, reason="by hand")  # the CLI
    clock.t += 100.0
    # the daemon had not read that block yet: its verdict reaches the kernel first, then
    # the state file says a longer block is in force, which gets its remaining time back
    assert daemon.block("192.0.2.8", 60.0, durable=False).reason == "by hand"
    assert sets.calls == [("192.0.2.7", 60_000), ("192.0.2.8", 60_000), ("192.0.2.8", 7_100_000)]
    assert [(x.addr, x.until) for x in daemon.blocks()] == [("192.0.2.8", 8201.0)]
    # now it knows: a shorter verdict does not touch the kernel
    assert daemon.block("192.0.2.8", 30.0, durable=False).reason == "by hand"
    assert len(sets.calls) == 3


def test_a_verdict_without_the_table_recreates_it(
    tmp_path: Path, rec: Recorder, clock: Clock
) -> None:
    b, _sets = with_sets(tmp_path, rec, clock)
    b.block("192.0.2.7", 100.0, durable=False)
    rec.table = False  # somebody deleted it
    clock.t += 10.0
    b.block("192.0.2.8", 50.0, durable=False)
    assert rec.commands[-1] == nft.start_commands(
        [nft.Element(net("192.0.2.7/32"), 90_000), nft.Element(net("192.0.2.8/32"), 50_000)]
    )
    assert [x.addr for x in b.blocks()] == ["192.0.2.7", "192.0.2.8"]
