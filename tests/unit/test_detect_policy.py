"""The block policy: scan events in, exact decisions out; refusals; escalation."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest

from netwarden.detect.policy import Decision, Policy, PolicyConfig, as_network
from netwarden.errors import UsageError
from netwarden.events import (
    Direction,
    Event,
    EventType,
    IPAddress,
    ProcessInfo,
    Proto,
    ScanInfo,
    ScanKind,
)

SCANNER = ip_address("203.0.113.66")
HOST = ip_address("192.0.2.10")
HOST6 = ip_address("2001:db8::10")
HOUR = 3600.0


def scan(
    scanner: IPAddress = SCANNER,
    *,
    kind: ScanKind = ScanKind.PORT,
    ports: tuple[int, ...] = (22, 23, 80, 443),
    targets: int = 1,
    direction: Direction = Direction.IN,
    process: ProcessInfo = ProcessInfo(),  # noqa: B008 - frozen, never mutated
    summary: bool = False,
    dst: IPAddress | None = HOST,
) -> Event:
    return Event(
        ts=0.0,
        event=EventType.SCAN,
        proto=Proto.TCP,
        ipproto=6,
        family=scanner.version,
        src=scanner,
        dst=dst,
        direction=direction,
        process=process,
        scan=ScanInfo(
            scanner=scanner,
            kind=kind,
            ports=ports,
            targets=targets,
            window=60.0,
            probes=len(ports),
            summary=summary,
        ),
    )


def allowed(e: Event) -> Event:
    assert e.scan is not None
    return replace(e, scan=replace(e.scan, allowed=True))


def policy(**kw: object) -> Policy:
    own = kw.pop("own", (HOST, HOST6))
    est = kw.pop("established", None)
    return Policy(
        PolicyConfig(**kw),  # type: ignore[arg-type]
        own_addresses=own,  # type: ignore[arg-type]
        has_established=est,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------- decisions
def test_an_inbound_port_scan_is_blocked_for_block_for() -> None:
    e = scan()
    assert policy().decide(e, 100.0) == Decision(
        block=True,
        reason="port scan: 4 ports of 192.0.2.10 in 1m",
        event=e,
        duration=HOUR,
        offence=1,
    )


def test_a_sweep_reason() -> None:
    e = scan(kind=ScanKind.SWEEP, ports=(445,), targets=26, dst=None)
    d = policy().decide(e, 0.0)
    assert (d.block, d.reason) == (True, "sweep: 26 hosts on port 445 in 1m")


def test_repeat_offenders_are_banned_longer() -> None:
    p = policy(block_for=HOUR)
    got = []
    now = 0.0
    for _ in range(6):
        d = p.decide(scan(), now)
        got.append((d.duration, d.offence))
        assert d.duration is not None
        now += d.duration + 60.0  # comes back a minute after each block ends
    assert got == [
        (HOUR, 1),
        (4 * HOUR, 2),
        (16 * HOUR, 3),
        (64 * HOUR, 4),
        (7 * 24 * HOUR, 5),  # capped at max_block_for
        (7 * 24 * HOUR, 6),
    ]
    assert p.decide(scan(), now).reason.endswith("; offence 7")


def test_offences_are_forgotten_after_offence_memory() -> None:
    p = policy(block_for=HOUR, offence_memory=86400.0)
    assert p.decide(scan(), 0.0).duration == HOUR
    # the block ended at 3600; back 86400 s after that: a first offence again
    assert p.decide(scan(), HOUR + 86400.0).offence == 1
    assert p.decide(scan(), HOUR + 86401.0).offence == 2


def test_block_for_zero_means_no_timeout() -> None:
    d = policy(block_for=0.0).decide(scan(), 0.0)
    assert (d.block, d.duration, d.offence) == (True, None, 1)


def test_offenders_are_bounded() -> None:
    p = policy(max_offenders=10)
    for i in range(30):
        p.decide(scan(ip_address(f"198.51.100.{i + 1}")), 0.0)
    assert p.offenders_evicted == 20
    assert p.offences(ip_address("198.51.100.1")) == 0
    assert p.offences(ip_address("198.51.100.30")) == 1


@pytest.mark.parametrize(
    ("scanner", "cfg", "reason"),
    [
        ("127.0.0.1", {}, "127.0.0.1 is loopback (never blocked)"),
        ("::1", {}, "::1 is loopback (never blocked)"),
        ("127.9.9.9", {"allow_self": False}, "127.9.9.9 is loopback (never blocked)"),
        (
            "10.1.2.3",
            {"allow": (ip_network("10.0.0.0/8"),)},
            "10.1.2.3 is allowlisted (10.0.0.0/8)",
        ),
        ("192.0.2.10", {}, "192.0.2.10 is an address of this host"),
        ("2001:db8::10", {}, "2001:db8::10 is an address of this host"),
        ("::ffff:192.0.2.10", {}, "192.0.2.10 is an address of this host"),
    ],
)
def test_protected_scanners_are_logged_as_allowed_never_blocked(
    scanner: str, cfg: dict[str, object], reason: str
) -> None:
    e = scan(ip_address(scanner))
    assert policy(**cfg).decide(e, 0.0) == Decision(False, reason, allowed(e))


def test_own_addresses_are_not_protected_with_no_allow_self() -> None:
    d = policy(allow_self=False).decide(scan(HOST), 0.0)
    assert d.block and not d.event.scan.allowed  # type: ignore[union-attr]


def test_own_addresses_follow_the_host() -> None:
    p = policy(own=())
    new = ip_address("192.0.2.99")
    assert p.decide(scan(new), 0.0).block
    p.set_own_addresses([new.packed])
    assert p.decide(scan(new), 0.0).reason == "192.0.2.99 is an address of this host"


def test_an_outbound_scan_is_reported_not_blocked() -> None:
    nmap = ProcessInfo(pid=4242, comm="nmap", unit="session-3.scope")
    e = scan(ip_address("192.0.2.77"), direction=Direction.OUT, process=nmap)
    assert policy(own=()).decide(e, 0.0) == Decision(
        False, "outbound scan by pid 4242 (nmap): reported, not blocked", e
    )


def test_the_peer_of_an_established_connection_is_not_blocked() -> None:
    seen: list[IPAddress] = []

    def est(a: IPAddress) -> bool:
        seen.append(a)
        return True

    e = scan()
    assert policy(established=est).decide(e, 0.0) == Decision(
        False, "203.0.113.66 has an established connection", e
    )
    assert seen == [SCANNER]


def test_summaries_and_blocking_off_decide_nothing() -> None:
    assert policy().decide(scan(summary=True), 0.0).reason == (
        "summary of a scanner already reported"
    )
    d = policy(blocking=False).decide(scan(), 0.0)
    assert (d.block, d.reason) == (False, "blocking is off")
    assert policy().offences(SCANNER) == 0


def test_decide_wants_a_scan_event() -> None:
    e = scan()
    with pytest.raises(ValueError):
        policy().decide(replace(e, scan=None), 0.0)


# ---------------------------------------------------------------------- blocks by hand
@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("127.0.0.1", "127.0.0.1 is loopback"),
        ("0.0.0.0/0", "0.0.0.0/0 is every address"),
        ("::/0", "::/0 is every address"),
        ("0.0.0.0", "0.0.0.0 is the unspecified address"),
        ("192.0.2.10", "192.0.2.10 is an address of this host"),
        ("192.0.2.0/24", "192.0.2.0/24 contains 192.0.2.10, an address of this host"),
        ("2001:db8::/32", "2001:db8::/32 contains 2001:db8::10, an address of this host"),
        ("10.9.0.0/16", "10.9.0.0/16 is allowlisted (10.0.0.0/8)"),
        ("8.0.0.0/6", "8.0.0.0/6 overlaps allowlisted (10.0.0.0/8)"),
    ],
)
def test_blocking_a_protected_address_by_hand_is_refused(target: str, message: str) -> None:
    p = policy(allow=(ip_network("10.0.0.0/8"),))
    with pytest.raises(UsageError) as ei:
        p.check_block(target)
    assert ei.value.exit_code == 2
    assert f"refusing to block it: {message}" in str(ei.value)


def test_blocking_by_hand_gives_the_network() -> None:
    p = policy()
    assert p.check_block("198.51.100.7") == ip_network("198.51.100.7/32")
    assert p.check_block("198.51.100.0/24") == ip_network("198.51.100.0/24")
    assert p.refusal(ip_address("198.51.100.7")) is None


@pytest.mark.parametrize(
    ("text", "net"),
    [
        ("192.0.2.7", "192.0.2.7/32"),
        (" 2001:db8::7 ", "2001:db8::7/128"),
        ("::ffff:192.0.2.7", "192.0.2.7/32"),
        ("::ffff:192.0.2.0/120", "192.0.2.0/24"),
        ("198.51.100.0/24", "198.51.100.0/24"),
    ],
)
def test_as_network(text: str, net: str) -> None:
    assert as_network(text) == ip_network(net)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("192.0.2.7/24", "has host bits set; did you mean 192.0.2.0/24?"),
        ("example.com", "not an address or CIDR"),
        ("192.0.2.300", "not an address or CIDR"),
    ],
)
def test_as_network_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError) as ei:
        as_network(text, "block")
    assert message in str(ei.value) and "block" in str(ei.value)


def test_an_ipv4_mapped_scanner_is_its_ipv4_address() -> None:
    p = policy()
    mapped = ip_address("::ffff:203.0.113.66")
    assert p.decide(scan(mapped), 0.0).offence == 1
    assert p.decide(scan(SCANNER), 1.0).offence == 2
    assert p.offences(SCANNER) == p.offences(mapped) == 2


def _reference_refusal(pol: Policy, addr: IPAddress) -> bool:
    """Whether an address is protected, by the networks' own arithmetic (the slow way)."""
    net = as_network(addr)
    a = net.network_address
    if a.is_unspecified or a.is_loopback:
        return True
    if any(n.version == a.version and a in n for n in pol.config.allow):
        return True
    return pol.config.allow_self and a in {HOST, HOST6}


@pytest.mark.parametrize(
    "text",
    [
        "0.0.0.0", "127.0.0.1", "127.255.255.254", "128.0.0.1", "10.0.0.1", "10.255.255.255",
        "11.0.0.0", "192.0.2.10", "192.0.2.11", "::", "::1", "::2", "2001:db8::10",
        "2001:db8::11", "fd00::1", "fdff:ffff::1", "fe00::1", "::ffff:10.1.2.3",
        "::ffff:192.0.2.10", "::ffff:127.0.0.1", "::ffff:198.51.100.1",
    ],
)  # fmt: skip
def test_the_fast_address_check_agrees_with_network_arithmetic(text: str) -> None:
    pol = Policy(
        PolicyConfig(allow=(ip_network("10.0.0.0/8"), ip_network("fd00::/8"))),
        own_addresses=[HOST, HOST6],
    )
    addr = ip_address(text)
    assert (pol.refusal(addr) is not None) == _reference_refusal(pol, addr)
    d = pol.decide(scan(addr), 0.0)
    assert d.block is not _reference_refusal(pol, addr)
    assert d.event.scan is not None and d.event.scan.allowed is _reference_refusal(pol, addr)
