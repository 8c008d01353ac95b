"""The capture ring against a real kernel: two namespaces joined by a veth pair.

Both layouts run every test that concerns them: TPACKET_V3 blocks and the immediate
TPACKET_V2 frames (``run --block``), whose packets longer than a frame are kept truncated.

Known UDP datagrams and a TCP connection go from namespace b to namespace a; the capture runs
in a (this thread is moved there while the socket is made). Counts are exact: filters keep
every unrelated packet (ARP, neighbour discovery, ...) out. Waiting is "until the expected
packets are in, or a generous deadline", never a timing assertion.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from netwarden.capture.afpacket import RingCapture
from netwarden.capture.bpf_filter import LINKTYPE_ETHERNET, LINKTYPE_RAW
from netwarden.errors import UsageError
from tests.integration.netns import Netns, VethPair, require_netns

DEADLINE = 20.0  # seconds to wait for packets that must come; never asserted as a timing


@dataclass(frozen=True)
class Seen:
    """One captured packet, copied out of the ring and decoded just enough."""

    linktype: int
    ifindex: int
    wirelen: int
    segs: int
    family: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    tcp_flags: int
    seq: int
    #: the L4 payload's length on the wire (the capture may hold less: a truncated frame)
    body_len: int
    payload: bytes


def decode(
    data: bytes, linktype: int, wirelen: int | None = None
) -> tuple[int, int, str, str, int, int, int, int, int, bytes]:
    """(family, proto, src, dst, sport, dport, tcp flags, seq, payload length on the wire,
    payload) of an IP packet ``wirelen`` long on the wire (by default: as captured)."""
    off = 0
    if linktype == LINKTYPE_ETHERNET:
        ethertype = struct.unpack_from("!H", data, 12)[0]
        assert ethertype in (0x0800, 0x86DD), f"not IP: ethertype {ethertype:#x}"
        off = 14
    version = data[off] >> 4
    if version == 4:
        ihl = (data[off] & 0x0F) * 4
        total = struct.unpack_from("!H", data, off + 2)[0]
        proto = data[off + 9]
        src = socket.inet_ntop(socket.AF_INET, data[off + 12 : off + 16])
        dst = socket.inet_ntop(socket.AF_INET, data[off + 16 : off + 20])
        l4, end = off + ihl, off + total
    else:
        assert version == 6, f"not IP: version {version}"
        plen = struct.unpack_from("!H", data, off + 4)[0]
        proto = data[off + 6]
        src = socket.inet_ntop(socket.AF_INET6, data[off + 8 : off + 24])
        dst = socket.inet_ntop(socket.AF_INET6, data[off + 24 : off + 40])
        l4, end = off + 40, off + 40 + plen
    sport, dport = struct.unpack_from("!HH", data, l4)
    flags = seq = 0
    if proto == 6:
        seq = struct.unpack_from("!I", data, l4 + 4)[0]
        hlen = (data[l4 + 12] >> 4) * 4
        flags = data[l4 + 13]
        body = l4 + hlen
    else:
        body = l4 + 8
    wire_end = end
    if end == off:  # IPv4 total length 0: a TSO super-packet; its length is the wire's
        end = len(data)
        wire_end = len(data) if wirelen is None else wirelen
    payload = bytes(data[body:end])
    return version, proto, src, dst, sport, dport, flags, seq, wire_end - body, payload


def collect(
    cap: RingCapture,
    done: Callable[[list[Seen]], bool],
    *,
    settle: int = 3,
) -> list[Seen]:
    """Packets until ``done(seen)`` (or the deadline), then ``settle`` more quiet timeouts
    so that anything unexpected still in flight shows up too."""
    seen: list[Seen] = []
    deadline = time.monotonic() + DEADLINE
    quiet = 0
    for batch in cap.batches(0.1):
        for _ts, data, wirelen, linktype, ifindex, segs in batch:
            assert len(data) <= wirelen
            fields = decode(bytes(data), linktype, wirelen)
            seen.append(Seen(linktype, ifindex, wirelen, segs, *fields))
        if done(seen) or time.monotonic() > deadline:
            quiet += 0 if batch else 1
            if quiet >= settle or time.monotonic() > deadline + 5:
                break
    return seen


def count_of(n: int) -> Callable[[list[Seen]], bool]:
    return lambda seen: len(seen) >= n


# ---- work done in namespace b (forked children) ---------------------------------------------


def send_udp(dst: str, port: int, payloads: list[bytes]) -> int:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for p in payloads:
            s.sendto(p, (dst, port))
    return len(payloads)


def tcp_client(dst: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((dst, port), timeout=DEADLINE) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
    return reply


def tcp_segments() -> tuple[int, int]:
    """(InSegs, OutSegs) of this network namespace's TCP (GSO packets count as segments)."""
    with open("/proc/self/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Tcp:")]
    stats = dict(zip(lines[0][1:], lines[1][1:], strict=True))
    return int(stats["InSegs"]), int(stats["OutSegs"])


def payloads(tag: str, n: int) -> list[bytes]:
    return [f"nwt-{tag}-{i:04d}".encode() * (1 + i % 7) for i in range(n)]


def capture_in(ns: Netns, iface: str | None, **kwargs: object) -> RingCapture:
    with ns.entered():
        return RingCapture(iface, **kwargs)  # type: ignore[arg-type]


pytestmark = pytest.mark.root

IMMEDIATE = 2048  # the frame size netwarden run --block uses


@pytest.fixture(params=[None, IMMEDIATE], ids=["blocks", "immediate"])
def frames(request: pytest.FixtureRequest) -> int | None:
    """The ring layout: TPACKET_V3 blocks (None) or immediate TPACKET_V2 frames."""
    value: int | None = request.param
    return value


# ---- exact UDP counts --------------------------------------------------------------------------


@pytest.mark.parametrize("iface", ["veth", None], ids=["iface", "all-interfaces"])
def test_udp_exact_counts_and_payloads(
    veth: VethPair, iface: str | None, frames: int | None
) -> None:
    port = 40123
    v4, v6 = payloads("v4", 25), payloads("v6", 15)
    noise = payloads("noise", 10)
    name = veth.a_if if iface == "veth" else None
    with capture_in(veth.a, name, filter_expr=f"udp port {port}", frame_size=frames) as cap:
        sender = veth.b.spawn(
            lambda: (
                send_udp(veth.a4, port, v4)
                + send_udp(veth.a6, port, v6)
                + send_udp(veth.a4, port + 1, noise)  # never matches the filter
            )
        )
        seen = collect(cap, count_of(len(v4) + len(v6)))
        assert sender.wait() == len(v4) + len(v6) + len(noise)
        packets, drops = cap.stats()

    assert len(seen) == len(v4) + len(v6)
    assert Counter(p.payload for p in seen) == Counter(v4 + v6)
    assert {(p.family, p.src, p.dst) for p in seen} == {
        (4, veth.b4, veth.a4),
        (6, veth.b6, veth.a6),
    }
    assert {(p.proto, p.dport) for p in seen} == {(17, port)}
    assert all(p.segs == 1 for p in seen)
    expected_linktype = LINKTYPE_ETHERNET if iface else LINKTYPE_RAW
    assert {p.linktype for p in seen} == {expected_linktype}
    with veth.a.entered():
        assert {cap.ifname(p.ifindex) for p in seen} == {veth.a_if}
    # the kernel counted only what matched: the noise never reached the ring
    assert (packets, drops) == (len(v4) + len(v6), 0)


def test_outgoing_packets_are_kept_on_non_loopback(veth: VethPair) -> None:
    port = 40200
    out = payloads("out", 12)
    with capture_in(veth.a, veth.a_if, filter_expr=f"udp dst port {port}") as cap:
        veth.a.call(send_udp, veth.b4, port, out)
        seen = collect(cap, count_of(len(out)))
    assert Counter(p.payload for p in seen) == Counter(out)
    assert {(p.src, p.dst) for p in seen} == {(veth.a4, veth.b4)}


# ---- loopback -------------------------------------------------------------------------------


@pytest.mark.parametrize("iface", ["lo", None], ids=["lo", "all-interfaces"])
def test_loopback_packets_are_seen_once(ns: Netns, iface: str | None, frames: int | None) -> None:
    port = 40300
    v4, v6 = payloads("lo4", 20), payloads("lo6", 20)
    with capture_in(ns, iface, filter_expr=f"udp port {port}", frame_size=frames) as cap:
        ns.call(lambda: send_udp("127.0.0.1", port, v4) + send_udp("::1", port, v6))
        seen = collect(cap, count_of(len(v4) + len(v6)))
        packets, _ = cap.stats()
    assert len(seen) == len(v4) + len(v6)
    assert Counter(p.payload for p in seen) == Counter(v4 + v6)
    assert packets == len(v4) + len(v6)


# ---- TCP, offloads --------------------------------------------------------------------------


def tcp_server(ns: Netns, addr: str, port: int) -> tuple[threading.Thread, list[bytes]]:
    """Accept one connection in ``ns``, read it all, answer with the byte count."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with ns.entered():
        srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1)
    srv.settimeout(DEADLINE)
    got: list[bytes] = []

    def serve() -> None:
        with srv, srv.accept()[0] as conn:
            data = b""
            while chunk := conn.recv(1 << 20):
                data += chunk
            got.append(data)
            conn.sendall(str(len(data)).encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, got


@pytest.mark.parametrize("iface", ["veth", None], ids=["iface", "all-interfaces"])
@pytest.mark.parametrize("family", [4, 6])
def test_tcp_connection_bytes_and_segments(
    veth: VethPair, iface: str | None, family: int, frames: int | None
) -> None:
    port = 40400
    a_addr, b_addr = (veth.a4, veth.b4) if family == 4 else (veth.a6, veth.b6)
    data = bytes(range(256)) * 1200  # 307200 bytes: offloaded as GSO super-packets
    name = veth.a_if if iface == "veth" else None
    segs_a0 = veth.a.call(tcp_segments)
    segs_b0 = veth.b.call(tcp_segments)
    with capture_in(veth.a, name, filter_expr=f"tcp port {port}", frame_size=frames) as cap:
        server, got = tcp_server(veth.a, a_addr, port)
        reply = veth.b.call(tcp_client, a_addr, port, data)
        server.join(DEADLINE)
        assert got == [data]
        assert reply == str(len(data)).encode()

        # wire segments each way, from the kernels' own TCP counters (b sends, a receives)
        def wire_segments() -> tuple[int, int]:
            _, a_out = veth.a.call(tcp_segments)
            _, b_out = veth.b.call(tcp_segments)
            return b_out - segs_b0[1], a_out - segs_a0[1]

        def in_sync(seen: list[Seen]) -> bool:
            b_to_a, a_to_b = wire_segments()
            fwd = sum(p.segs for p in seen if p.src == b_addr)
            back = sum(p.segs for p in seen if p.src == a_addr)
            return (fwd, back) == (b_to_a, a_to_b)

        seen = collect(cap, in_sync)
        expect_fwd, expect_back = wire_segments()
        vnet = cap.vnet_hdr

    fwd = sorted((p for p in seen if p.src == b_addr), key=lambda p: p.seq)
    back = [p for p in seen if p.src == a_addr]
    assert {(p.src, p.dst, p.dport) for p in fwd} == {(b_addr, a_addr, port)}
    assert sum(1 for p in fwd if p.tcp_flags & 0x12 == 0x02) == 1  # one SYN
    assert sum(1 for p in back if p.tcp_flags & 0x12 == 0x12) == 1  # one SYN-ACK
    # every segment's bytes are the sent bytes at its sequence offset, and the segments
    # cover the stream exactly (a segment the sender retransmitted under load, maybe cut
    # differently, is seen twice: overlaps are fine, gaps and strays are not)
    isn = next(p.seq for p in fwd if p.tcp_flags & 0x02) + 1
    parts = [((p.seq - isn) % 2**32, p) for p in fwd if p.body_len]
    assert all(p.payload == data[off : off + len(p.payload)] for off, p in parts)
    if frames is None:
        assert all(len(p.payload) == p.body_len for _, p in parts)  # kept whole
    else:
        # frames hold the first ~1950 bytes of a super-packet
        assert any(len(p.payload) < p.body_len for _, p in parts)
        assert all(len(p.payload) <= IMMEDIATE for p in seen)
    covered = 0
    for off, p in sorted(parts, key=lambda x: x[0]):
        assert off <= covered, f"a gap in the stream at {covered}"
        covered = max(covered, off + p.body_len)
    assert covered == len(data)
    # offloaded super-packets were seen, and count as their wire segments
    assert any(p.segs > 1 for p in fwd)
    assert sum(p.segs for p in fwd) == expect_fwd
    assert sum(p.segs for p in back) == expect_back
    assert vnet == (iface == "veth")


# ---- control ------------------------------------------------------------------------------


def test_stop_and_close_from_another_thread(veth: VethPair, frames: int | None) -> None:
    with capture_in(veth.a, None, filter_expr="udp port 1", frame_size=frames) as cap:
        fd = cap.fileno()
        assert fd >= 0
        batches = []
        timer = threading.Timer(0.3, cap.stop)
        timer.start()
        for batch in cap.batches(0.05):
            batches.append(batch)
        timer.join()
        assert batches and all(b == [] for b in batches)  # idle: empty lists on timeout
        assert list(cap.batches(0.05)) == []  # stopped stays stopped
    assert cap.fileno() == -1
    cap.close()  # idempotent

    cap = capture_in(veth.a, veth.a_if, frame_size=frames)
    closer = threading.Timer(0.3, cap.close)
    closer.start()
    for _ in cap.batches(0.05):
        pass
    closer.join()
    assert cap.fileno() == -1
    assert cap.stats() == cap.stats()  # last totals are kept after close


@pytest.mark.parametrize(
    ("block_timeout_ms", "frames"),
    [(50, None), (2000, None), (50, IMMEDIATE)],
    ids=["blocks-50ms", "blocks-2s", "immediate"],
)
def test_stop_hands_over_every_counted_packet(
    veth: VethPair, block_timeout_ms: int, frames: int | None
) -> None:
    port = 40500
    sent = payloads("stop", 30)
    with capture_in(
        veth.a,
        veth.a_if,
        filter_expr=f"udp port {port}",
        block_timeout_ms=block_timeout_ms,
        frame_size=frames,
    ) as cap:
        veth.b.call(send_udp, veth.a4, port, sent)
        cap.stop()  # before reading anything: the kernel may still hold its current block
        seen = [
            decode(bytes(data), linktype)[-1]
            for batch in cap.batches(DEADLINE)
            for _ts, data, _wirelen, linktype, _ifindex, _segs in batch
        ]
        packets, drops = cap.stats()
        veth.b.call(send_udp, veth.a4, port, sent)  # after stop: not taken any more
        assert cap.stats() == (packets, drops)
    assert Counter(seen) == Counter(sent)
    assert (packets, drops) == (len(sent), 0)


def test_promisc_membership_while_open(veth: VethPair) -> None:
    def flags() -> str:
        return veth.a.ip("-d", "link", "show", veth.a_if)

    with capture_in(veth.a, veth.a_if, promisc=True):
        assert "promiscuity 1" in flags()
    assert "promiscuity 0" in flags()


# ---- errors -------------------------------------------------------------------------------


def test_bad_filter_is_a_usage_error_with_libpcaps_message() -> None:
    with pytest.raises(UsageError) as info:
        RingCapture("lo", filter_expr="udp prot 53")
    assert info.value.option == "filter"
    assert "syntax error" in str(info.value)
    assert info.value.exit_code == 2


def test_unknown_interface_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as info:
        RingCapture("nwt-nosuch0")
    assert info.value.option == "-i"
    assert info.value.value == "nwt-nosuch0"
    assert "no such interface" in str(info.value)
    assert info.value.exit_code == 2


def test_interface_of_another_namespace_is_unknown(veth: VethPair) -> None:
    with pytest.raises(UsageError):
        RingCapture(veth.a_if)  # lives in namespace a, not here


PROBE = """
import sys
from netwarden.capture.afpacket import RingCapture
from netwarden.errors import MissingCapability
try:
    RingCapture(None)
except MissingCapability as exc:
    print("MissingCapability", exc.exit_code, exc)
    sys.exit(0)
print("captured without CAP_NET_RAW")
sys.exit(1)
"""


@pytest.mark.parametrize(
    "setpriv",
    [
        ["--reuid=65534", "--regid=65534", "--clear-groups"],
        ["--bounding-set=-net_raw"],
    ],
    ids=["nobody", "root-without-cap-net-raw"],
)
def test_without_cap_net_raw_is_missing_capability(setpriv: list[str]) -> None:
    require_netns()
    if not os.path.exists("/usr/bin/setpriv"):
        pytest.skip("needs setpriv (util-linux)")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    proc = subprocess.run(
        ["setpriv", *setpriv, sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={**os.environ, "PYTHONPATH": os.path.abspath(src)},
    )
    unusable = "Permission denied" in proc.stderr or "No module named" in proc.stderr
    if proc.returncode != 0 and "MissingCapability" not in proc.stdout and unusable:
        pytest.skip(f"this interpreter is not usable as that user: {proc.stderr[-200:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("MissingCapability 3 capturing needs CAP_NET_RAW; run as root or: ")
    assert "setcap cap_net_raw+ep" in line
    assert "\n" not in line
