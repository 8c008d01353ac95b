"""The XDP fast path (netwarden.act.xdp) against the real kernel, in namespaces.

The program is attached to the server side of the veth pair of a :class:`Lab` (server, a
scanner with two addresses per family, a bystander in a third namespace); the service
answers on TCP 22/80/443 and UDP 5353. Checks: blocked sources' new connections are dropped
(TCP SYN, new UDP, ICMP echo; IPv4 and IPv6; addresses and CIDRs) while others pass and
established connections, replies to connected UDP sockets and neighbour discovery keep
working; the kernel's own expiry; the in-kernel threshold stops a fast nmap scan at the
threshold probe (exactly N ports answered), reports it, honours the allowlist and a
report-only mode; detaching, and a crash of the process that attached, leave nothing.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from ipaddress import ip_network

import pytest

from netwarden.act.xdp import MAX_SCAN_PORTS, XdpBlocker, find_object
from netwarden.errors import MissingCapability, RuntimeFailure, UsageError
from tests.e2e.scan_helpers import Lab, nmap, ping_try, tcp_many, tcp_try, udp_try

pytestmark = pytest.mark.root

# nmap as fast as it goes, not waiting for probes the program dropped
NMAP_FAST = ("-sS", "-T5", "--max-retries", "0", "--max-rtt-timeout", "20ms", "--min-rate",
             "5000")  # fmt: skip


@pytest.fixture
def lab() -> Iterator[Lab]:
    try:
        find_object()
    except MissingCapability as exc:
        pytest.skip(str(exc))
    with Lab() as lab:
        lab.serve()
        yield lab


@pytest.fixture
def xdp(lab: Lab) -> Iterator[XdpBlocker]:
    with lab.srv.entered():
        blocker = XdpBlocker(lab.srv_if)
        try:
            blocker.attach()
        except MissingCapability as exc:
            pytest.skip(str(exc))
    try:
        yield blocker
    finally:
        blocker.detach()


def xdp_on(lab: Lab) -> list[dict[str, object]]:
    """What ``bpftool net show`` lists as XDP in the server namespace."""
    out = json.loads(lab.srv.run("bpftool", "-j", "net", "show").stdout)
    return [x for entry in out for x in entry.get("xdp", [])]


def prog_exists(prog_id: int) -> bool:
    return subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)],
                          capture_output=True).returncode == 0  # fmt: skip


def wait_gone(prog_id: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while prog_exists(prog_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --------------------------------------------------------------------------- blocks
def test_attach_shows_the_program(lab: Lab, xdp: XdpBlocker) -> None:
    assert xdp.attached and xdp.attached_mode in ("native", "generic")
    listed = xdp_on(lab)
    mode = {"native": "driver", "generic": "generic"}[xdp.attached_mode]
    assert [(x["devname"], x["mode"], x["id"]) for x in listed] == [(lab.srv_if, mode, xdp.prog_id)]
    shown = json.loads(lab.srv.run("bpftool", "-j", "prog", "show", "id", str(xdp.prog_id)).stdout)
    assert shown["name"] == "netwarden" and shown["type"] == "xdp"
    # nothing blocked: everything passes, and is counted
    assert lab.scan.call(tcp_try, lab.srv4, 80, lab.scan4) == "ok"
    c = xdp.counters()
    # seen, but nothing to judge: no source is blocked and the threshold is off
    assert c["packets"] > 0 and c["new"] == 0 and c["dropped_blocked"] == 0


def test_blocked_sources_dropped_others_and_established_pass(lab: Lab, xdp: XdpBlocker) -> None:
    # before the block: an established TCP connection of the address about to be blocked,
    # and a UDP service on the scanner's side that the server talks to
    with lab.scan.entered():
        est = socket.create_connection((lab.srv4, 80), timeout=2, source_address=(lab.scan4, 0))
        echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo.bind((lab.scan4, 7777))
    assert est.recv(64) == b"netwarden-test\n"

    def udp_echo() -> None:
        while True:
            try:
                d, peer = echo.recvfrom(512)
                echo.sendto(d, peer)
            except OSError:
                return

    threading.Thread(target=udp_echo, daemon=True).start()
    try:
        until = time.time() + 60
        xdp.block(lab.scan4, until)
        xdp.block(lab.scan6)  # no timeout
        for dst, src in ((lab.srv4, lab.scan4), (lab.srv6, lab.scan6)):
            assert lab.scan.call(tcp_try, dst, 80, src, 0.5) == "timeout"
            assert lab.scan.call(udp_try, dst, 5353, src, 0.5) == "timeout"
            assert lab.scan.call(ping_try, dst, src, 0.5) == "timeout"
        for dst, src in ((lab.srv4, lab.scan4b), (lab.srv6, lab.scan6b)):
            assert lab.scan.call(tcp_try, dst, 80, src) == "ok"
            assert lab.scan.call(udp_try, dst, 5353, src) == "ok"
            assert lab.scan.call(ping_try, dst, src) == "ok"
        # the bystander's link has no program: nothing changes for it
        assert lab.other.call(tcp_try, lab.srv_o4, 443) == "ok"

        # established TCP carries ACK: it passes, also after ARP had to be redone
        lab.srv.ip("neigh", "flush", "dev", lab.srv_if)
        lab.scan.ip("neigh", "flush", "dev", lab.scan_if)
        est.sendall(b"still here")
        assert est.recv(64) == b"still here"

        # UDP: a reply to a connected socket passes; an unconnected one's reply is "new"
        # at XDP (there is no conntrack this early; nftables would let it pass)
        def udp_from_srv(connected: bool) -> str:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(0.5)
            try:
                if connected:
                    s.connect((lab.scan4, 7777))
                    s.send(b"q")
                else:
                    s.sendto(b"q", (lab.scan4, 7777))
                return "ok" if s.recv(16) == b"q" else "bad"
            except TimeoutError:
                return "timeout"
            finally:
                s.close()

        assert lab.srv.call(udp_from_srv, True) == "ok"
        assert lab.srv.call(udp_from_srv, False) == "timeout"

        blocks = {str(b.net): b for b in xdp.blocked()}
        assert set(blocks) == {f"{lab.scan4}/32", f"{lab.scan6}/128"}
        b4 = blocks[f"{lab.scan4}/32"]
        assert b4.until == pytest.approx(until, abs=0.01) and not b4.auto
        assert b4.drops >= 3  # SYN, datagram, echo request (plus the unconnected reply)
        assert blocks[f"{lab.scan6}/128"].until is None
        c = xdp.counters()
        assert c["dropped_blocked"] == sum(b.drops for b in blocks.values())

        # unblock: back at once
        assert xdp.unblock(lab.scan4) and xdp.unblock(lab.scan6)
        assert not xdp.unblock(lab.scan4)
        assert lab.scan.call(tcp_try, lab.srv4, 80, lab.scan4) == "ok"
        assert lab.scan.call(tcp_try, lab.srv6, 80, lab.scan6) == "ok"
        assert xdp.blocked() == []
    finally:
        est.close()
        echo.close()


def test_cidr_blocks_and_kernel_expiry(lab: Lab, xdp: XdpBlocker) -> None:
    net4 = ip_network(f"{lab.scan4}/24", strict=False)
    net6 = ip_network(f"{lab.scan6}/64", strict=False)
    until = time.time() + 1.5
    xdp.block(net4, until)
    xdp.block(str(net6), until)
    for src in (lab.scan4, lab.scan4b):
        assert lab.scan.call(tcp_try, lab.srv4, 22, src, 0.3) == "timeout"
    assert lab.scan.call(tcp_try, lab.srv6, 22, lab.scan6b, 0.3) == "timeout"
    assert lab.other.call(tcp_try, lab.srv_o4, 22) == "ok"
    assert {b.net for b in xdp.blocked()} == {net4, net6}
    # past its time the program ignores the entry (no user space involved) ...
    time.sleep(max(0.0, until - time.time()) + 0.2)
    assert lab.scan.call(tcp_try, lab.srv4, 22, lab.scan4) == "ok"
    assert lab.scan.call(tcp_try, lab.srv6, 22, lab.scan6) == "ok"
    # ... and expire() tidies the maps
    gone = xdp.expire()
    assert {b.net for b in gone} == {net4, net6}
    assert xdp.blocked() == []
    # a block in the past is a no-op; a bad target is a usage error
    xdp.block(lab.scan4, time.time() - 1)
    assert xdp.blocked() == []
    with pytest.raises(UsageError):
        xdp.block("10.0.0.1/8")


# --------------------------------------------------------------------------- threshold
@pytest.mark.parametrize("family", [4, 6])
def test_threshold_drops_a_fast_scan_at_the_threshold_probe(
    lab: Lab, xdp: XdpBlocker, family: int
) -> None:
    scanner, target = (lab.scan4, lab.srv4) if family == 4 else (lab.scan6, lab.srv6)
    xdp.configure(scan_ports=3, window=10.0, block_for=60.0)
    # a normal client first: three ports, many times, and a flurry to one port
    for _ in range(3):
        for port in (22, 80, 443):
            assert lab.scan.call(tcp_try, target, port, scanner) == "ok"
    assert lab.scan.call(tcp_many, target, 80, 50, scanner) == ["ok"] * 50
    assert xdp.poll() == []
    assert {t.src for t in xdp.tracked()} == {ip_network(scanner).network_address}
    # the scanner (a fresh address: the client above is at 3 ports already)
    scanner = lab.scan4b if family == 4 else lab.scan6b
    extra = ("-S", scanner, "-e", lab.scan_if)
    r = nmap(lab.scan, *(["-6"] if family == 6 else []), *NMAP_FAST, *extra, "-p", "1-1000",
             target)  # fmt: skip
    # exactly --scan-ports ports answered: the 4th distinct port's SYN was dropped in the
    # kernel, and everything after it
    assert r.answered() == 3, r
    assert r.counts["filtered"] == 997
    det = xdp.poll(timeout_ms=1000)
    assert len(det) == 1
    d = det[0]
    assert str(d.src) == scanner and str(d.dst) == target
    assert len(d.ports) == 4 and all(1 <= p <= 1000 for p in d.ports)
    assert d.blocked and d.ipproto == 6
    assert d.until == pytest.approx(d.at + 60.0, abs=0.01)
    assert d.at == pytest.approx(time.time(), abs=5.0)
    blocks = xdp.blocked()
    assert [(str(b.net.network_address), b.auto) for b in blocks] == [(scanner, True)]
    assert blocks[0].drops >= 997
    c = xdp.counters()
    assert c["detected"] == 1 and c["auto_blocks"] == 1 and c["dropped_threshold"] == 1
    assert c["events_lost"] == 0
    # the scanner stays out; the client and the bystander do not notice
    assert lab.scan.call(tcp_try, target, 80, scanner, 0.3) == "timeout"
    client = lab.scan4 if family == 4 else lab.scan6
    assert lab.scan.call(tcp_try, target, 80, client) == "ok"
    assert lab.other.call(tcp_try, lab.srv_o4, 80) == "ok"


def test_threshold_allowlist_and_report_only(lab: Lab, xdp: XdpBlocker) -> None:
    xdp.configure(scan_ports=3, window=10.0, block_for=60.0)
    xdp.set_allow([f"{lab.scan4}/32", lab.scan6])
    r = nmap(lab.scan, *NMAP_FAST, "-p", "1-300", lab.srv4)
    assert r.answered() == 300  # allowlisted: never counted
    assert xdp.poll() == [] and xdp.blocked() == []
    assert xdp.counters()["allowed"] >= 300
    xdp.set_allow([])  # replaced: nothing allowed any more
    # report only: the crossing is reported, nothing is dropped
    xdp.configure(scan_ports=3, window=10.0, block_for=60.0, blocking=False)
    r = nmap(lab.scan, *NMAP_FAST, "-p", "1-300", lab.srv4)
    assert r.answered() == 300
    det = xdp.poll(timeout_ms=1000)
    assert det and all(not d.blocked and d.until is None for d in det)
    assert str(det[0].src) == lab.scan4
    assert xdp.blocked() == [] and xdp.counters()["dropped_threshold"] == 0
    # off
    xdp.configure(scan_ports=None)
    nmap(lab.scan, *NMAP_FAST, "-p", "1-100", lab.srv4)
    assert xdp.poll() == []
    with pytest.raises(UsageError):
        xdp.configure(scan_ports=MAX_SCAN_PORTS + 1)


# --------------------------------------------------------------------------- leaving
def test_detach_leaves_nothing(lab: Lab) -> None:
    with lab.srv.entered():
        x = XdpBlocker(lab.srv_if, mode="generic").attach()
    prog_id = x.prog_id
    assert x.attached_mode == "generic"
    x.block(lab.scan4)
    assert lab.scan.call(tcp_try, lab.srv4, 80, lab.scan4, 0.3) == "timeout"
    x.detach()
    assert not x.attached
    assert xdp_on(lab) == []
    assert wait_gone(prog_id), "the program is still loaded after detach"
    assert lab.scan.call(tcp_try, lab.srv4, 80, lab.scan4) == "ok"
    # a second instance attaches cleanly, a third refuses to replace it
    with lab.srv.entered(), XdpBlocker(lab.srv_if) as again:
        assert xdp_on(lab)[0]["id"] == again.prog_id
        with pytest.raises(RuntimeFailure, match="already has an XDP program"):
            XdpBlocker(lab.srv_if).attach()
    assert xdp_on(lab) == []


def test_crash_leaves_nothing(lab: Lab) -> None:
    """The program is attached through a BPF link: kill -9 of its process detaches it (and
    its blocks go with it; netwarden restores them from blocks.json on the next start)."""
    code = (
        "import sys, time\n"
        "from netwarden.act.xdp import XdpBlocker\n"
        "x = XdpBlocker(sys.argv[1]).attach()\n"
        "x.block(sys.argv[2])\n"
        "print(x.prog_id, flush=True)\n"
        "time.sleep(60)\n"
    )
    p = lab.spawn(lab.srv, sys.executable, "-c", code, lab.srv_if, lab.scan4,
                  stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None
    prog_id = int(p.stdout.readline())
    assert [x["id"] for x in xdp_on(lab)] == [prog_id]
    assert lab.scan.call(tcp_try, lab.srv4, 80, lab.scan4, 0.3) == "timeout"
    p.kill()
    p.wait(10)
    assert wait_gone(prog_id)
    assert xdp_on(lab) == []
    assert lab.scan.call(tcp_try, lab.srv4, 80, lab.scan4) == "ok"
