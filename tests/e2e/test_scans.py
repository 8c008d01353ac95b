"""Scan detection and blocking end to end: ``netwarden run --backend sniff --block`` in a
server namespace with a real service (TCP 22, 80, 443 on IPv4 and IPv6, UDP 5353), real nmap
in a scanner namespace, a bystander in a third namespace.

Mirrors Packetwatch's end-to-end suite (a normal client is never blocked, a slow scan is
not flagged, a fast scan is blocked, the allowlist and the host's own address are honoured)
and goes further: connect, SYN, IPv6, UDP and FIN/Xmas/NULL scans, expiry and unblock with
their events, escalation, a crash and a restart with the remaining time, ``--exec`` hooks,
``/metrics``, and that a clean exit leaves no nftables table.

Assertions are on content: the events' fields, nft's set elements, connection outcomes and
what nmap itself saw. Each test has its own daemon, listen port and state dir.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.scan_helpers import (
    TCP_PORTS,
    UDP_PORT,
    Daemon,
    Lab,
    daemon,
    nft_drops,
    nft_elements,
    nft_table_exists,
    nmap,
    ping_try,
    tcp_many,
    tcp_try,
    udp_try,
)

pytestmark = pytest.mark.root

# nmap with short timeouts: once the scanner is blocked its probes are never answered, and
# nmap's retransmissions would only make the test slower
FAST = ("-T4", "--max-retries", "1", "--max-rtt-timeout", "100ms")
# ... and where nmap's own findings are not looked at, stopped after 3 s: once the block
# lands (after a handful of probes) each further probe waits for its timeout, and nmap
# slows down as they go unanswered (200 filtered ports take it half a minute)
QUICK = (*FAST, "--host-timeout", "3s")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        # nmap's UDP scan waits for ICMP unreachables, which the kernel rate-limits
        lab.srv.run("sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
        lab.srv.run("sysctl", "-qw", "net.ipv6.icmp.ratelimit=0")
        lab.serve()
        yield lab


def stop_clean(d: Daemon) -> None:
    """SIGTERM: exit 0, and netwarden's table is gone (blocks.json stays for a restart)."""
    rc = d.stop()
    assert rc == 0, d.err[-10:]
    assert not nft_table_exists(d.ns), "a clean exit left the nftables table"
    assert not [e for e in d.events if e.get("event") == "?"], "a line that is not JSON"


def blocked4(lab: Lab) -> dict[str, float | None]:
    return nft_elements(lab.srv).get("blocked4", {})


def blocked6(lab: Lab) -> dict[str, float | None]:
    return nft_elements(lab.srv).get("blocked6", {})


def blocks_json(d: Daemon) -> dict[str, dict[str, Any]]:
    r = d.cli("blocks", "--json")
    assert r.returncode == 0, r.stderr
    return {b["addr"]: b for b in map(json.loads, r.stdout.splitlines())}


def metrics(lab: Lab, port: int) -> str:
    def get() -> str:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()

    return lab.srv.call(get)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def check_scan(e: dict[str, Any], scanner: str, target: str, *, allowed: bool) -> None:
    """The fields of a first detection of a port scan of ``target`` by ``scanner``."""
    assert e["scanner"] == scanner and e["src"] == scanner
    assert e["kind"] == "port" and e["dst"] == target and e["targets"] == 1
    assert e["allowed"] is allowed and e["summary"] is False
    assert e["family"] == (6 if ":" in scanner else 4)
    # more than --scan-ports (3) distinct ports, or 3 failed ones (docs/detection.md)
    assert 3 <= len(e["ports"]) <= 32 and e["ports"] == sorted(set(e["ports"]))
    assert e["probes"] >= 3 and e["until"] is None


def check_block(b: dict[str, Any], scan: dict[str, Any], seconds: float) -> None:
    assert b["scanner"] == scan["scanner"] and b["src"] == scan["scanner"]
    assert b["kind"] == "port" and b["ports"] == scan["ports"] and b["allowed"] is False
    assert b["direction"] == "in" and b["probes"] == scan["probes"]
    assert b["until"] == pytest.approx(b["ts"] + seconds, abs=2.0)


# --------------------------------------------------------------------------- not flagged
def test_service_reachable(lab: Lab, tmp_path: Path) -> None:
    """With the daemon blocking, normal clients reach every service, v4 and v6, TCP and
    UDP; their flows are seen; nobody is flagged; the sets stay empty."""
    with daemon(lab.srv, tmp_path, 9771, "--block") as d:
        # each client uses at most --scan-ports (3) ports, several times over
        for _ in range(3):
            for port in TCP_PORTS:
                assert lab.scan.call(tcp_try, lab.srv4, port, lab.scan4) == "ok"
                assert lab.scan.call(tcp_try, lab.srv6, port, lab.scan6) == "ok"
            for dst, src in ((lab.srv4, lab.scan4b), (lab.srv6, lab.scan6b)):
                assert lab.scan.call(udp_try, dst, UDP_PORT, src) == "ok"
                assert lab.scan.call(ping_try, dst, src) == "ok"
        assert lab.other.call(tcp_try, lab.srv_o4, 80) == "ok"
        assert lab.other.call(tcp_try, lab.srv_o6, 443) == "ok"
        d.wait_event("new", src=lab.other6, dport=443)
        seen = {(e["src"], e["dport"]) for e in d.of("new", direction="in", proto="tcp")}
        assert {(a, p) for a in (lab.scan4, lab.scan6) for p in TCP_PORTS} <= seen
        assert (lab.other4, 80) in seen
        for src in (lab.scan4b, lab.scan6b):
            assert d.of("new", src=src, dport=UDP_PORT, proto="udp")
            assert d.of("new", src=src, proto="icmpv6" if ":" in src else "icmp")
        assert nft_table_exists(lab.srv)
        assert nft_elements(lab.srv) == {
            "blocked4": {},
            "blocknet4": {},
            "blocked6": {},
            "blocknet6": {},
        }
        assert not d.of("scan") and not d.of("block")
        stop_clean(d)


def test_flurry_to_one_port_not_flagged(lab: Lab, tmp_path: Path) -> None:
    """Many connections to one port (a busy client) are not a scan."""
    with daemon(lab.srv, tmp_path, 9772, "--block") as d:
        assert lab.scan.call(tcp_many, lab.srv4, 80, 150, timeout=60) == ["ok"] * 150
        assert [lab.scan.call(udp_try, lab.srv4, UDP_PORT) for _ in range(20)] == ["ok"] * 20
        d.wait_event("new", src=lab.scan4, proto="udp")
        time.sleep(1.5)  # the flows' ends, the detector's ticks
        assert len(d.of("new", src=lab.scan4, dport=80)) == 150
        assert not d.of("scan") and not d.of("block")
        assert blocked4(lab) == {}
        assert lab.scan.call(tcp_try, lab.srv4, 22) == "ok"
        stop_clean(d)


def test_slow_scan_not_flagged(lab: Lab, tmp_path: Path) -> None:
    """A scan spreading its probes over more than the window is not flagged; the same
    ports in a burst are."""
    ports = "22,23,25,80,443"
    with daemon(lab.srv, tmp_path, 9773, "--block", "--scan-window", "3s") as d:
        # every probe fails (a half-open scan scores 3 points): 3 in 3 s would fire; with
        # 1.75 s between probes any 3 s holds at most 2, also with the daemon's batching.
        # (The window is longer than the flow table's 2 s linger after a RST: see the note
        # on ScanDetector and END events in the report.)
        slow = nmap(
            lab.scan, "-sS", "--scan-delay", "1750ms", "--max-retries", "0", "-p", ports, lab.srv4
        )
        assert slow.answered() == 5, slow
        assert slow.elapsed > 6.5
        time.sleep(2.5)  # the last flows end (their outcome can upgrade a score)
        assert len(d.of("new", src=lab.scan4, direction="in")) == 5
        assert not d.of("scan") and not d.of("block")
        assert blocked4(lab) == {}
        assert lab.scan.call(tcp_try, lab.srv4, 80) == "ok"
        # the control: the same ports at once
        nmap(lab.scan, "-sS", *FAST, "-p", ports, lab.srv4)
        scan = d.wait_event("scan", scanner=lab.scan4)
        check_scan(scan, lab.scan4, lab.srv4, allowed=False)
        assert set(scan["ports"]) <= {22, 23, 25, 80, 443}
        stop_clean(d)


# --------------------------------------------------------------------------- blocked
@pytest.mark.parametrize("kind", ["-sT", "-sS"])
def test_fast_scan_blocked_others_unaffected(lab: Lab, tmp_path: Path, kind: str) -> None:
    port = 9774 if kind == "-sT" else 9775
    with daemon(lab.srv, tmp_path, port, "--block") as d:
        # 60 ports: once the block lands every further probe times out, and nmap's scan
        # of filtered ports takes a while (what nmap saw is checked: no --host-timeout)
        first = nmap(lab.scan, kind, *FAST, "-p", "1-60", lab.srv4)
        assert first.answered() >= 4  # the probes before the block took effect
        scan = d.wait_event("scan", scanner=lab.scan4)
        check_scan(scan, lab.scan4, lab.srv4, allowed=False)
        assert scan["proto"] == "tcp" and scan["direction"] == "in"
        assert all(1 <= p <= 60 for p in scan["ports"])
        block = d.wait_event("block", scanner=lab.scan4)
        check_block(block, scan, 3600.0)
        # in the kernel, with its timeout; in the state dir with its reason
        left = blocked4(lab)[lab.scan4]
        # the kernel's timeout is the block's: what remains of it now (nmap -sT may have
        # spent a while on the filtered ports since)
        assert left is not None and 0 < left <= 3600
        assert left == pytest.approx(block["until"] - time.time(), abs=5.0)
        listed = blocks_json(d)[lab.scan4]
        assert listed["until"] == pytest.approx(block["until"], abs=0.01)
        assert listed["reason"].startswith("port scan: ") and listed["ports"] == scan["ports"]
        # the scanner's new connections are dropped silently, TCP, UDP and ICMP
        assert lab.scan.call(tcp_try, lab.srv4, 80) == "timeout"
        assert lab.scan.call(udp_try, lab.srv4, UDP_PORT) == "timeout"
        assert lab.scan.call(ping_try, lab.srv4) == "timeout"
        # a second scan finds nothing open
        again = nmap(
            lab.scan,
            "-sS",
            "--max-retries",
            "0",
            "--max-rtt-timeout",
            "50ms",
            "-p",
            "20-30,80,443",
            lab.srv4,
        )
        assert again.answered() == 0 and again.counts["filtered"] == 13
        # everyone else is unaffected: another namespace, another address of the scanner's
        assert lab.other.call(tcp_try, lab.srv_o4, 80) == "ok"
        assert lab.other.call(udp_try, lab.srv_o6, UDP_PORT) == "ok"
        assert lab.scan.call(tcp_try, lab.srv4, 80, lab.scan4b) == "ok"
        assert lab.scan.call(tcp_try, lab.srv6, 22, lab.scan6) == "ok"  # its IPv6 address
        # /metrics agrees
        text = metrics(lab, port)
        assert metric(text, 'netwarden_scans_detected_total{kind="port"}') == 1
        assert metric(text, "netwarden_blocked_hosts") == 1
        assert len(d.of("block")) == 1  # reported once; further probes only summarized
        stop_clean(d)
    # blocks.json outlives the clean exit (for the next start)
    assert lab.scan4 in (tmp_path / "blocks.json").read_text()


def test_ipv6_scan_blocked(lab: Lab, tmp_path: Path) -> None:
    with daemon(lab.srv, tmp_path, 9776, "--block") as d:
        nmap(lab.scan, "-6", "-sS", *QUICK, "-p", "1-200", lab.srv6)
        scan = d.wait_event("scan", scanner=lab.scan6)
        check_scan(scan, lab.scan6, lab.srv6, allowed=False)
        block = d.wait_event("block", scanner=lab.scan6)
        check_block(block, scan, 3600.0)
        assert block["family"] == 6
        left = blocked6(lab)[lab.scan6]
        # the kernel's timeout is what remains of the block's (nmap may have taken a while)
        assert left is not None and 0 < left <= 3600
        assert left == pytest.approx(block["until"] - time.time(), abs=5.0)
        assert blocked4(lab) == {}
        assert lab.scan.call(tcp_try, lab.srv6, 80, lab.scan6) == "timeout"
        assert lab.scan.call(udp_try, lab.srv6, UDP_PORT, lab.scan6) == "timeout"
        assert lab.scan.call(ping_try, lab.srv6, lab.scan6) == "timeout"
        # the address is blocked, not the host: its other IPv6 and its IPv4 address connect
        assert lab.scan.call(tcp_try, lab.srv6, 80, lab.scan6b) == "ok"
        assert lab.scan.call(tcp_try, lab.srv4, 80, lab.scan4) == "ok"
        assert lab.other.call(tcp_try, lab.srv_o6, 443) == "ok"
        stop_clean(d)


def test_udp_scan_detected_and_blocked(lab: Lab, tmp_path: Path) -> None:
    with daemon(lab.srv, tmp_path, 9777, "--block") as d:
        first = nmap(lab.scan, "-sU", *FAST, "-p", "5340-5369", lab.srv4)
        assert first.counts["closed"] >= 3  # ICMP port unreachable: the probes got in
        scan = d.wait_event("scan", scanner=lab.scan4)
        check_scan(scan, lab.scan4, lab.srv4, allowed=False)
        assert scan["proto"] == "udp" and scan["ipproto"] == 17
        assert all(5340 <= p <= 5369 for p in scan["ports"])
        d.wait_event("block", scanner=lab.scan4)
        assert lab.scan4 in blocked4(lab)
        assert lab.scan.call(udp_try, lab.srv4, UDP_PORT) == "timeout"
        assert lab.other.call(udp_try, lab.srv_o4, UDP_PORT) == "ok"
        stop_clean(d)


@pytest.mark.parametrize("kind", ["-sF", "-sX", "-sN"])
def test_stealth_scans_detected_and_dropped(lab: Lab, tmp_path: Path, kind: str) -> None:
    """FIN, Xmas and NULL probes: detected, then dropped by the block (they carry neither
    ACK nor RST, so the raw-priority rule sees them)."""
    port = {"-sF": 9778, "-sX": 9779, "-sN": 9780}[kind]
    with daemon(lab.srv, tmp_path, port, "--block") as d:
        nmap(lab.scan, kind, *QUICK, "-p", "1-200", lab.srv4)
        scan = d.wait_event("scan", scanner=lab.scan4)
        check_scan(scan, lab.scan4, lab.srv4, allowed=False)
        assert scan["proto"] == "tcp"
        d.wait_event("block", scanner=lab.scan4)
        before = nft_drops(lab.srv)
        # the same probes again: no answers at all now (closed ports would send RSTs)
        again = nmap(
            lab.scan,
            kind,
            "--max-retries",
            "0",
            "--max-rtt-timeout",
            "50ms",
            "-p",
            "1-50",
            lab.srv4,
        )
        assert again.counts["closed"] == 0 and again.counts["open|filtered"] == 50
        assert nft_drops(lab.srv) >= before + 50
        assert lab.other.call(tcp_try, lab.srv_o4, 22) == "ok"
        stop_clean(d)


# --------------------------------------------------------------------------- never blocked
def test_allowlisted_source_logged_not_blocked(lab: Lab, tmp_path: Path) -> None:
    with daemon(lab.srv, tmp_path, 9781, "--block", "--allow", f"{lab.scan4}/32") as d:
        nmap(lab.scan, "-sS", *FAST, "-p", "1-300", lab.srv4)
        scan = d.wait_event("scan", scanner=lab.scan4)
        check_scan(scan, lab.scan4, lab.srv4, allowed=True)
        # the same scan from the scanner's other address (not allowlisted) is blocked
        nmap(lab.scan, "-sS", *QUICK, "-S", lab.scan4b, "-e", lab.scan_if, "-p", "1-300", lab.srv4)
        d.wait_event("block", scanner=lab.scan4b)
        assert not d.of("block", scanner=lab.scan4)
        assert set(blocked4(lab)) == {lab.scan4b}
        assert lab.scan.call(tcp_try, lab.srv4, 80, lab.scan4) == "ok"
        assert lab.scan.call(tcp_try, lab.srv4, 80, lab.scan4b) == "timeout"
        # and by hand: refused, exit 2, saying why
        r = d.cli("block", lab.scan4, "--allow", f"{lab.scan4}/32")
        assert r.returncode == 2 and "allowlisted" in r.stderr
        stop_clean(d)


def test_own_address_logged_not_blocked(lab: Lab, tmp_path: Path) -> None:
    """The host scanning itself (nmap in the server namespace): a scan event with
    ``allowed: true``, no block."""
    with daemon(lab.srv, tmp_path, 9782, "--block") as d:
        nmap(lab.srv, "-sS", *FAST, "-p", "1-300", lab.srv4)
        scan = d.wait_event("scan", scanner=lab.srv4)
        check_scan(scan, lab.srv4, lab.srv4, allowed=True)
        assert scan["direction"] == "local"
        time.sleep(1.0)
        assert not d.of("block")
        assert blocked4(lab) == {}
        r = d.cli("block", lab.srv4)
        assert r.returncode == 2 and "address of this host" in r.stderr
        assert lab.scan.call(tcp_try, lab.srv4, 80) == "ok"
        stop_clean(d)


# --------------------------------------------------------------------------- lifecycle
def test_expiry_rescan_escalation_and_unblock(lab: Lab, tmp_path: Path) -> None:
    """--block-for 3s: the block runs out (an ``unblock`` event, access back, the detector
    has forgotten the scanner); a new scan is blocked again for 4 times as long
    (escalation); ``netwarden unblock`` ends it (another ``unblock`` event)."""
    # nmap slows down once its probes go unanswered and may outlast a block: stopped after
    # 2 s here, so neither scan goes on past its block (that would be a new scan)
    quick = (*FAST, "--host-timeout", "2s")
    with daemon(lab.srv, tmp_path, 9783, "--block", "--block-for", "3s") as d:
        nmap(lab.scan, "-sS", *quick, "-p", "1-300", lab.srv4)
        block = d.wait_event("block", scanner=lab.scan4)
        assert block["until"] == pytest.approx(block["ts"] + 3, abs=0.5)
        assert lab.scan.call(tcp_try, lab.srv4, 80) == "timeout"
        # expiry: the kernel drops the element, the daemon reports it
        expired = d.wait_event("unblock", timeout=10, scanner=lab.scan4)
        assert expired["ts"] >= block["until"] - 0.1 and expired["direction"] == "in"
        assert expired["until"] == pytest.approx(block["until"], abs=0.01)
        assert blocked4(lab) == {}
        assert lab.scan.call(tcp_try, lab.srv4, 80) == "ok"
        assert blocks_json(d) == {}
        # scanning again is detected again (memory cleared) and blocked for longer
        nmap(lab.scan, "-sS", *quick, "-p", "1-300", lab.srv4)
        blocks = d.select(lambda e: e["event"] == "block" and e["scanner"] == lab.scan4)
        deadline = time.monotonic() + 10
        while len(blocks) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            blocks = d.select(lambda e: e["event"] == "block" and e["scanner"] == lab.scan4)
        assert len(blocks) == 2 and len(d.of("scan", scanner=lab.scan4, summary=False)) == 2
        second = blocks[1]
        assert second["until"] == pytest.approx(second["ts"] + 12, abs=0.5)
        deadline = time.monotonic() + 5
        while lab.scan4 not in blocks_json(d) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "offence 2" in blocks_json(d)[lab.scan4]["reason"]
        assert lab.scan.call(tcp_try, lab.srv4, 80) == "timeout"
        # by hand
        r = d.cli("unblock", lab.scan4)
        assert r.returncode == 0 and r.stdout.strip() == f"unblocked {lab.scan4}"
        deadline = time.monotonic() + 10
        while len(d.of("unblock", scanner=lab.scan4)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        unblocks = d.of("unblock", scanner=lab.scan4)
        assert len(unblocks) == 2 and unblocks[1]["until"] == pytest.approx(second["until"])
        assert blocked4(lab) == {}
        assert lab.scan.call(tcp_try, lab.srv4, 80) == "ok"
        r = d.cli("unblock", lab.scan4)
        assert r.returncode == 1 and "was not blocked" in r.stdout
        stop_clean(d)


def test_kill_9_then_restart_restores_the_block(lab: Lab, tmp_path: Path) -> None:
    with daemon(lab.srv, tmp_path, 9784, "--block", "--block-for", "60s") as d:
        nmap(lab.scan, "-sS", *QUICK, "-p", "1-300", lab.srv4)
        block = d.wait_event("block", scanner=lab.scan4)
        d.kill()
    # a crash leaves the table (the kernel keeps the element's timeout running)
    assert nft_table_exists(lab.srv) and lab.scan4 in blocked4(lab)
    time.sleep(1.5)
    with daemon(lab.srv, tmp_path, 9785, "--block", "--block-for", "60s") as d2:
        # restored with what remained, not a fresh 60 s
        left = blocked4(lab)[lab.scan4]
        assert left is not None
        assert left == pytest.approx(block["until"] - time.time(), abs=1.0)
        assert left < 58.6
        assert blocks_json(d2)[lab.scan4]["until"] == pytest.approx(block["until"], abs=0.01)
        assert lab.scan.call(tcp_try, lab.srv4, 80) == "timeout"
        assert lab.other.call(tcp_try, lab.srv_o4, 80) == "ok"
        # and it works: a new scanner is detected and blocked by the restarted daemon
        nmap(lab.scan, "-sS", *QUICK, "-S", lab.scan4b, "-e", lab.scan_if, "-p", "1-300", lab.srv4)
        b2 = d2.wait_event("block", scanner=lab.scan4b)
        assert b2["until"] == pytest.approx(b2["ts"] + 60, abs=1.0)
        assert set(blocked4(lab)) == {lab.scan4, lab.scan4b}
        stop_clean(d2)
    kept = json.loads((tmp_path / "blocks.json").read_text())["blocks"]
    assert {b["addr"] for b in kept} == {lab.scan4, lab.scan4b}


def test_exec_hook_gets_the_event(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "hook"
    out.mkdir()
    hook = tmp_path / "hook.py"
    hook.write_text(
        "import json, os, sys\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('NETWARDEN_')}\n"
        "name = os.path.join(sys.argv[1], env['NETWARDEN_EVENT'] + '-' + sys.argv[2])\n"
        "with open(name + '.tmp', 'w') as f:\n"
        "    json.dump({'argv': sys.argv[1:], 'env': env}, f)\n"
        "os.rename(name + '.tmp', name + '.json')\n"
    )
    # an argument with a space and a quote: split as a shell would, never run by one
    cmd = f'{sys.executable} {hook} {out} "it\'s one arg"'
    state = tmp_path / "state"
    with daemon(lab.srv, state, 9786, "--block", "--exec", cmd) as d:
        nmap(lab.scan, "-sS", *QUICK, "-p", "1-300", lab.srv4)
        scan = d.wait_event("scan", scanner=lab.scan4)
        block = d.wait_event("block", scanner=lab.scan4)
        d.cli("unblock", lab.scan4)
        d.wait_event("unblock", scanner=lab.scan4)
        deadline = time.monotonic() + 10
        files = {"scan", "block", "unblock"}
        while time.monotonic() < deadline:
            if all((out / f"{k}-it's one arg.json").exists() for k in files):
                break
            time.sleep(0.1)
        got = {k: json.loads((out / f"{k}-it's one arg.json").read_text()) for k in files}
        stop_clean(d)
    for k in files:
        assert got[k]["argv"] == [str(out), "it's one arg"]
    env = got["scan"]["env"]
    assert env["NETWARDEN_EVENT"] == "scan"
    assert env["NETWARDEN_SCANNER"] == env["NETWARDEN_SRC"] == lab.scan4
    assert env["NETWARDEN_DST"] == lab.srv4
    assert env["NETWARDEN_KIND"] == "port" and env["NETWARDEN_ALLOWED"] == "0"
    assert env["NETWARDEN_PORTS"] == ",".join(str(p) for p in scan["ports"])
    assert env["NETWARDEN_UNTIL"] == "" and env["NETWARDEN_SPORT"] == ""
    assert json.loads(env["NETWARDEN_JSON"]) == scan
    env = got["block"]["env"]
    assert env["NETWARDEN_EVENT"] == "block" and env["NETWARDEN_SCANNER"] == lab.scan4
    assert float(env["NETWARDEN_UNTIL"]) == pytest.approx(block["until"])
    assert json.loads(env["NETWARDEN_JSON"]) == block
    env = got["unblock"]["env"]
    assert env["NETWARDEN_EVENT"] == "unblock" and env["NETWARDEN_SCANNER"] == lab.scan4


# --------------------------------------------------------------------------- XDP
def test_xdp_fast_path_blocks_at_the_threshold_probe(lab: Lab, tmp_path: Path) -> None:
    """`run --block --xdp IFACE`: the kernel drops the scanner from its threshold probe on,
    the daemon reports the scan and the block (nft too), and a clean exit detaches XDP."""
    from netwarden.doctor import check_xdp

    if not check_xdp().ok:
        pytest.skip("no eBPF here for XDP")

    def xdp_progs() -> list[Any]:
        out = json.loads(lab.srv.run("/usr/sbin/bpftool", "-j", "net", "show").stdout)
        return [x for entry in out for x in entry.get("xdp", [])]

    with daemon(lab.srv, tmp_path, 9787, "--block", "--xdp", lab.srv_if) as d:
        assert [p["devname"] for p in xdp_progs()] == [lab.srv_if], d.err
        res = nmap(
            lab.scan,
            "-sS",
            "-T5",
            "--max-retries",
            "0",
            "--max-rtt-timeout",
            "50ms",
            "--host-timeout",
            "60s",
            "-p",
            "1-1000",
            lab.srv4,
        )
        # more than --scan-ports (3) distinct ports: the 4th probe is dropped in the kernel
        assert res.answered() <= 3, res
        scan = d.wait_event("scan", scanner=lab.scan4)
        assert scan["kind"] == "port" and len(scan["ports"]) == 4
        block = d.wait_event("block", scanner=lab.scan4)
        assert block["until"] is not None
        assert lab.scan4 in blocks_json(d)
        assert lab.scan.call(tcp_try, lab.srv4, 80) == "timeout"
        assert lab.other.call(tcp_try, lab.srv_o4, 80) == "ok"
        stop_clean(d)
    assert xdp_progs() == []
