"""End to end: real traffic between two network namespaces, seen by ``netwarden sniff``.

Namespace ``srv`` runs an HTTP server (``python -m http.server``, on its IPv4 and its IPv6
address) and a UDP echo service; namespace ``cli`` runs curl, a UDP client and
``nmap -sS``. In ``srv``, ``netwarden sniff -i VETH --json`` and ``tcpdump -i VETH -w FILE``
capture the same link at the same time. Then:

- every connection appears in ``sniff`` (``new`` and ``end``) with the client as ``src``,
  the server's address and port as ``dst``, direction ``in``;
- the UDP flows count exactly the datagrams sent (IP header + 8 + payload bytes each);
- each port nmap probed is a TCP flow: SYN, SYN-ACK, RST for the open port; SYN, RST for
  the closed ones;
- every flow's counters equal those computed here from the tcpdump capture (by a small
  reader independent of netwarden's decoders), and ``netwarden replay`` of that capture
  gives the same flows with the same counters and directions.

Offloads (TSO/GSO/GRO) are off on the veths for that comparison: tcpdump writes a GSO
super-packet as one packet, while ``sniff`` counts its segments ("bytes are counted as on
the wire", INTERFACE.md), so with offloads on the two differ by design. A second test keeps
them on and checks that ``sniff`` counts what the wire would carry.

The link is kept silent apart from the test traffic (see ``VethPair``), so flows are
compared whole, not filtered.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Netns, Proc, VethPair, need_root

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

HTTP_PORT = 8080
UDP_PORT = 9999
SINK_PORT = 8081  # TCP: reads until EOF (uploads from cli)
CLOSED_PORTS = (22, 81, 9999)  # nothing listens on these TCP ports in srv
UDP_SIZES = (1, 64, 512, 1000, 1400)  # payload bytes; under the MTU for IPv4 and IPv6
BLOB_SIZE = 150_000  # the HTTP response body: many full-sized segments
UPLOAD_SIZE = 300_000
MTU = 1500

UDP_ECHO = r"""
import selectors, socket, sys
port = int(sys.argv[1])
sel = selectors.DefaultSelector()
for fam, addr in ((socket.AF_INET, sys.argv[2]), (socket.AF_INET6, sys.argv[3])):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr, port))
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        data, peer = key.fileobj.recvfrom(65535)
        key.fileobj.sendto(data, peer)
"""

UDP_CLIENT = r"""
import json, socket, sys
addr, port, sizes = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((addr, port))
echoed = []
for i, n in enumerate(sizes):
    s.send(bytes([i % 256]) * n)
    echoed.append(len(s.recv(65535)))
print(json.dumps({"local": s.getsockname()[:2], "echoed": echoed}))
"""

TCP_SINK = r"""
import socket, sys, threading
port = int(sys.argv[1])
def serve(fam, addr):
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen()
    while True:
        c, _ = ls.accept()
        while c.recv(65536):
            pass
        c.close()
for fam, addr in ((socket.AF_INET, sys.argv[2]), (socket.AF_INET6, sys.argv[3])):
    threading.Thread(target=serve, args=(fam, addr)).start()
"""

TCP_UPLOAD = r"""
import json, socket, sys
addr, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((addr, port), timeout=10)
s.sendall(b"u" * size)
s.shutdown(socket.SHUT_WR)
s.recv(1)  # the sink's FIN
print(json.dumps({"local": s.getsockname()[:2]}))
s.close()
"""


def netwarden_argv() -> list[str]:
    exe = Path(sys.executable).parent / "netwarden"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "netwarden.cli"]


def need_tools(*tools: str) -> None:
    need_root()
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


# --------------------------------------------------------------------------- the oracle
FlowKey = tuple[str, str, int | None, str, int | None]  # proto, src, sport, dst, dport
COUNTERS = ("orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes")
_PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}


class Capture:
    """A tcpdump file of Ethernet frames read independently of netwarden's decoders.

    ``flows`` maps (proto, src, sport, dst, dport) to per-direction packet and IP-byte counts
    and the list of TCP flags each side sent; the initiator is the sender of the first
    packet. With ``resegment``, a TCP super-packet (larger than the MTU: TSO/GSO/GRO) counts
    as the MTU-sized segments it is on the wire, each with its own IP and TCP headers.
    """

    def __init__(self, path: Path, *, resegment: bool = False) -> None:
        data = path.read_bytes()
        magic = data[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            end = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            end = ">"
        else:
            raise AssertionError(f"{path}: not a pcap file (magic {magic.hex()})")
        linktype = struct.unpack_from(end + "I", data, 20)[0] & 0xFFFF
        assert linktype == 1, f"{path}: link type {linktype}, expected Ethernet"
        self.packets = 0
        self.super_packets = 0  # frames longer than the MTU
        self.flows: dict[FlowKey, dict[str, Any]] = {}
        off = 24
        while off + 16 <= len(data):
            _s, _u, caplen, wirelen = struct.unpack_from(end + "IIII", data, off)
            self._frame(data[off + 16 : off + 16 + caplen], wirelen, resegment)
            off += 16 + caplen

    def _frame(self, frame: bytes, wirelen: int, resegment: bool) -> None:
        self.packets += 1
        if wirelen > MTU + 14:
            self.super_packets += 1
        etype = struct.unpack_from("!H", frame, 12)[0]
        ip = frame[14:]
        if etype == 0x0800:
            iplen = struct.unpack_from("!H", ip, 2)[0]
            proto, src, dst, l4 = ip[9], ip[12:16], ip[16:20], (ip[0] & 0x0F) * 4
        elif etype == 0x86DD:
            iplen = 40 + struct.unpack_from("!H", ip, 4)[0]
            proto, src, dst, l4 = ip[6], ip[8:24], ip[24:40], 40
        else:
            return
        sport = dport = None
        flags = 0
        pkts, nbytes = 1, iplen
        if proto in (6, 17):
            sport, dport = struct.unpack_from("!HH", ip, l4)
        if proto == 6:
            flags = ip[l4 + 13]
            headers = l4 + (ip[l4 + 12] >> 4) * 4
            if resegment and iplen > MTU:
                payload = iplen - headers
                pkts = -(-payload // (MTU - headers))
                nbytes = payload + pkts * headers
        a, b = str(ip_address(src)), str(ip_address(dst))
        fwd = (_PROTO_NAMES.get(proto, f"ip/{proto}"), a, sport, b, dport)
        rev = (fwd[0], b, dport, a, sport)
        if rev in self.flows:
            f, side = self.flows[rev], "resp"
        else:
            f = self.flows.setdefault(
                fwd,
                {"orig_pkts": 0, "resp_pkts": 0, "orig_bytes": 0, "resp_bytes": 0,
                 "orig_flags": [], "resp_flags": []},
            )  # fmt: skip
            side = "orig"
        f[f"{side}_pkts"] += pkts
        f[f"{side}_bytes"] += nbytes
        f[f"{side}_flags"].append(flags)


def key_of(e: dict[str, Any]) -> FlowKey:
    src, dst = str(ip_address(e["src"])), str(ip_address(e["dst"]))
    return (e["proto"], src, e["sport"], dst, e["dport"])


def counters(e: dict[str, Any]) -> tuple[int, ...]:
    return tuple(e[c] for c in COUNTERS)


def flows_by_key(ends: list[dict[str, Any]], who: str) -> dict[FlowKey, dict[str, Any]]:
    out: dict[FlowKey, dict[str, Any]] = {}
    for e in ends:
        k = key_of(e)
        assert k not in out, f"{who}: two flows for {k}:\n  {out[k]}\n  {e}"
        out[k] = e
    return out


def describe(flows: dict[FlowKey, Any], keys: Any) -> str:
    return "\n".join(f"  {k}: {flows[k]}" for k in sorted(keys, key=str)) or "  (none)"


def assert_same_flows(a: dict[FlowKey, Any], an: str, b: dict[FlowKey, Any], bn: str) -> None:
    """The same 5-tuples, and for each the same counters (and direction where both have one)."""
    assert set(a) == set(b), (
        f"flows in {an}, not in {bn}:\n{describe(a, set(a) - set(b))}\n"
        f"flows in {bn}, not in {an}:\n{describe(b, set(b) - set(a))}"
    )

    def view(e: dict[str, Any]) -> tuple[Any, ...]:
        return (e.get("direction", "-"), *counters(e))

    def same(x: dict[str, Any], y: dict[str, Any]) -> bool:
        if "direction" in x and "direction" in y and x["direction"] != y["direction"]:
            return False
        return counters(x) == counters(y)

    diff = {k: f"{an} {view(a[k])} != {bn} {view(b[k])}" for k in a if not same(a[k], b[k])}
    assert not diff, (
        f"per-flow (direction, orig_pkts, resp_pkts, orig_bytes, resp_bytes), {an} vs {bn}:\n"
        + describe(diff, diff)
    )


# --------------------------------------------------------------------------- traffic
def start_services(pair: VethPair, docroot: Path | None = None) -> None:
    srv = pair.srv
    if docroot is not None:
        for addr in (pair.SRV4, pair.SRV6):
            srv.start(
                sys.executable, "-m", "http.server", str(HTTP_PORT),
                "--bind", addr, "--directory", str(docroot), stdout=False,
            )  # fmt: skip
        srv.wait_listening("tcp", HTTP_PORT, count=2)
    srv.start(sys.executable, "-c", UDP_ECHO, str(UDP_PORT), pair.SRV4, pair.SRV6, stdout=False)
    srv.wait_listening("udp", UDP_PORT, count=2)


def make_docroot(tmp_path: Path) -> Path:
    docroot = tmp_path / "www"
    docroot.mkdir()
    (docroot / "blob").write_bytes(bytes(i % 251 for i in range(BLOB_SIZE)))
    return docroot


def run_curl(cli: Netns, url: str) -> FlowKey:
    """Fetch the blob; the connection's (tcp, client ip, client port, server ip, port).

    ``-v``: should the connection fail, the error (refused, EPERM from a BPF hook, ...) is in
    the assertion message."""
    out = cli.run(
        "curl", "-sSv", "-g", "--noproxy", "*", "--max-time", "10", "-o", "/dev/null",
        "-w", "%{local_ip} %{local_port} %{remote_ip} %{remote_port} %{http_code} "
        "%{size_download}",
        url,
    ).stdout.split()  # fmt: skip
    local_ip, local_port, remote_ip, remote_port, code, size = out
    assert code == "200" and int(size) == BLOB_SIZE, f"curl {url}: {out}"
    src, dst = str(ip_address(local_ip)), str(ip_address(remote_ip))
    return ("tcp", src, int(local_port), dst, int(remote_port))


def run_udp(cli: Netns, addr: str) -> tuple[FlowKey, tuple[int, ...]]:
    """The echo exchange; its flow key and the counters it must have."""
    sizes = ",".join(map(str, UDP_SIZES))
    r = json.loads(cli.python(UDP_CLIENT, addr, str(UDP_PORT), sizes))
    assert r["echoed"] == list(UDP_SIZES), r
    hdr = 40 if ":" in addr else 20
    nbytes = sum(hdr + 8 + n for n in UDP_SIZES)
    key = ("udp", str(ip_address(r["local"][0])), r["local"][1], str(ip_address(addr)), UDP_PORT)
    return key, (len(UDP_SIZES), len(UDP_SIZES), nbytes, nbytes)


def run_upload(cli: Netns, addr: str) -> FlowKey:
    r = json.loads(cli.python(TCP_UPLOAD, addr, str(SINK_PORT), str(UPLOAD_SIZE)))
    return ("tcp", str(ip_address(r["local"][0])), r["local"][1], str(ip_address(addr)), SINK_PORT)


def run_nmap(cli: Netns, addr: str) -> dict[int, str]:
    """``nmap -sS`` of the open and the closed ports; nmap's verdict per port."""
    ports = ",".join(str(p) for p in (HTTP_PORT, *CLOSED_PORTS))
    # --send-ip: raw IP sockets, so the kernel's (static) neighbour entries are used and
    # nmap sends no ARP / neighbour solicitation of its own.
    argv = ["nmap", "-sS", "-Pn", "-n", "--send-ip", "-T4", "-p", ports, "-oX", "-"]
    if ":" in addr:
        argv.append("-6")
    xml = cli.run(*argv, addr, timeout=60).stdout
    states = {
        int(p.get("portid", "0")): p.find("state").get("state", "")  # type: ignore[union-attr]
        for p in ET.fromstring(xml).iter("port")
    }
    assert states == {HTTP_PORT: "open", **{p: "closed" for p in CLOSED_PORTS}}, xml
    return states


# --------------------------------------------------------------------------- capturing
def stopped(proc: Proc, what: str) -> tuple[int, int]:
    """SIGINT, wait for the exit; the "N packets captured" / "... dropped by kernel" lines."""
    rc = proc.interrupt()
    err = "\n".join(proc.err)
    assert rc == 0, f"{what} exited {rc} after SIGINT:\n{err}"
    cap = re.search(r"^(\d+) packets captured$", err, re.M)
    drop = re.search(r"^(\d+) packets dropped by kernel$", err, re.M)
    assert cap and drop, f"{what}: no packet summary on stderr after SIGINT:\n{err}"
    return int(cap.group(1)), int(drop.group(1))


class Sniffed:
    """What ``sniff`` printed: its events by flow, the final record of each flow."""

    def __init__(self, events: list[dict[str, Any]], iface: str, captured: int) -> None:
        self.events = events
        self.captured = captured
        self.by_flow: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for e in events:
            assert e["event"] in ("new", "end"), e
            assert e["source"] == "sniff" and e["iface"] == iface, e
            self.by_flow[e["flow"]].append(e)
        for fid, evs in self.by_flow.items():
            assert [e["event"] for e in evs] == ["new", "end"], (fid, evs)
            new, end = evs
            assert key_of(new) == key_of(end), evs
            assert new["direction"] == end["direction"], evs
            assert all(new[c] <= end[c] for c in COUNTERS), evs
            assert new["orig_pkts"] >= 1, new  # `new` carries the counters so far
        self.end_list = [evs[-1] for evs in self.by_flow.values()]

    @property
    def ends(self) -> dict[FlowKey, dict[str, Any]]:
        """The final records by 5-tuple (each 5-tuple must be one flow)."""
        return flows_by_key(self.end_list, "sniff")


def capture(
    pair: VethPair, pcap: Path, traffic: Callable[[], Any], *, linger: float = 1.0
) -> tuple[Sniffed, Any, int]:
    """Run ``traffic`` while tcpdump and sniff capture the srv end of the link; then SIGINT
    both. Returns sniff's output, what ``traffic`` returned, tcpdump's captured count."""
    srv = pair.srv
    tcpdump = srv.start("tcpdump", "-n", "-i", pair.SRV_DEV, "-U", "-w", str(pcap))
    tcpdump.wait_for_line(r"listening on " + re.escape(pair.SRV_DEV))
    sniff = srv.start(*netwarden_argv(), "sniff", "-i", pair.SRV_DEV, "--json")
    sniff.wait_for_line(r"^listening on " + re.escape(pair.SRV_DEV) + "$")
    result = traffic()
    time.sleep(linger)  # the last packets reach both captures (ring blocks retire)
    captured, dropped = stopped(sniff, "sniff")
    assert dropped == 0, sniff.err
    tcpdump_captured, _ = stopped(tcpdump, "tcpdump")
    return Sniffed(sniff.json_lines(), pair.SRV_DEV, captured), result, tcpdump_captured


def replay(pcap: Path, *local: str) -> dict[FlowKey, dict[str, Any]]:
    argv = [*netwarden_argv(), "replay", str(pcap), "--json"]
    for a in local:
        argv += ["--local", a]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, f"replay exited {cp.returncode}: {cp.stderr}"
    rows = [json.loads(ln) for ln in cp.stdout.splitlines() if ln.strip()]
    news = sorted(r["flow"] for r in rows if r["event"] == "new")
    ends = sorted(r["flow"] for r in rows if r["event"] == "end")
    assert news == ends and len(set(ends)) == len(ends), "replay: not one new and one end per flow"
    assert all(r["source"] == "replay" for r in rows)
    return flows_by_key([r for r in rows if r["event"] == "end"], "replay")


# --------------------------------------------------------------------------- the tests
def test_sniff_sees_namespace_traffic_as_tcpdump_does(tmp_path: Path) -> None:
    need_tools("curl", "nmap", "tcpdump", "ss")
    docroot = make_docroot(tmp_path)
    pcap = tmp_path / "srv.pcap"

    pair = VethPair()
    try:
        start_services(pair, docroot)
        pair.settle()
        cli = pair.cli

        def traffic() -> dict[str, Any]:
            v4, v6 = (
                f"http://{pair.SRV4}:{HTTP_PORT}/blob",
                f"http://[{pair.SRV6}]:{HTTP_PORT}/blob",
            )
            return {
                "curl": [
                    run_curl(cli, v4),
                    run_curl(cli, v6),
                    run_curl(cli, v4),
                    run_curl(cli, v6),
                ],
                "udp": [run_udp(cli, pair.SRV4), run_udp(cli, pair.SRV6)],
                "nmap": {pair.SRV4: run_nmap(cli, pair.SRV4), pair.SRV6: run_nmap(cli, pair.SRV6)},
            }

        sniffed, sent, tcpdump_captured = capture(pair, pcap, traffic)
    finally:
        pair.close()

    truth = Capture(pcap)
    assert truth.packets == tcpdump_captured > 0
    assert truth.super_packets == 0, (
        f"{truth.super_packets} frames longer than the MTU in the capture: offloads are on "
        f"({pair.offload_state}), the comparison with tcpdump would be meaningless"
    )
    ends = sniffed.ends

    # The link carried only our traffic, and sniff saw all of it, flow by flow, to the byte.
    assert sniffed.captured == truth.packets, (
        f"sniff: {sniffed.captured} packets captured; tcpdump wrote {truth.packets}"
    )
    assert_same_flows(ends, "sniff", truth.flows, "the capture")
    srv_addrs = {str(ip_address(a)) for a in (pair.SRV4, pair.SRV6)}
    cli_addrs = {str(ip_address(a)) for a in (pair.CLI4, pair.CLI6)}
    for e in ends.values():
        assert e["src"] in cli_addrs and e["dst"] in srv_addrs and e["direction"] == "in", e

    # curl: each connection once, new and end, from the client's address and port.
    for k in sent["curl"]:
        evs = [evs for evs in sniffed.by_flow.values() if key_of(evs[0]) == k]
        assert len(evs) == 1, f"curl connection {k}: {evs}"
        family = 6 if ":" in k[1] else 4
        for e in evs[0]:
            assert (e["proto"], e["family"], e["direction"]) == ("tcp", family, "in"), e
        end = evs[0][-1]
        assert end["resp_bytes"] > BLOB_SIZE and end["orig_pkts"] >= 5, end  # SYN .. FIN, ACK
        t = truth.flows[k]
        assert t["orig_flags"][0] == 0x02 and t["resp_flags"][0] == 0x12, t  # SYN, SYN-ACK

    # UDP: exactly the datagrams sent and echoed, IP header + UDP header + payload each.
    for k, expected in sent["udp"]:
        assert k in ends, f"UDP flow {k} not in sniff's output"
        assert counters(ends[k]) == expected, (ends[k], expected)

    # nmap -sS: one TCP flow per scanned port and address.
    curl_keys = set(sent["curl"])
    for addr, states in sent["nmap"].items():
        dst = str(ip_address(addr))
        for port, state in states.items():
            probes = [
                k for k in ends if k[0] == "tcp" and k[3:] == (dst, port) and k not in curl_keys
            ]
            assert len(probes) == 1, f"nmap's probe of {dst} port {port}: {probes}"
            k = probes[0]
            t, e = truth.flows[k], ends[k]
            if state == "open":  # SYN; SYN-ACK; RST from the scanner's kernel
                assert t["orig_flags"] == [0x02, 0x04] and t["resp_flags"] == [0x12], t
                assert (e["orig_pkts"], e["resp_pkts"]) == (2, 1), e
            else:  # SYN; RST-ACK
                assert t["orig_flags"] == [0x02] and t["resp_flags"] == [0x14], t
                assert (e["orig_pkts"], e["resp_pkts"]) == (1, 1), e

    # replay of tcpdump's file: the same flows, counters and directions.
    assert_same_flows(ends, "sniff", replay(pcap, pair.SRV4, pair.SRV6), "replay")


def test_sniff_counts_offloaded_super_packets_as_their_segments(tmp_path: Path) -> None:
    """Offloads on: the capture holds GSO super-packets (downloads sent by srv, uploads
    received from cli); sniff counts each as its MTU-sized segments."""
    need_tools("curl", "tcpdump", "ss")
    docroot = make_docroot(tmp_path)
    pcap = tmp_path / "srv.pcap"
    pair = VethPair(offloads=True)
    try:
        start_services(pair, docroot)
        pair.srv.start(sys.executable, "-c", TCP_SINK, str(SINK_PORT), pair.SRV4, pair.SRV6)
        pair.srv.wait_listening("tcp", SINK_PORT, count=2)
        pair.settle()
        cli = pair.cli

        def traffic() -> list[FlowKey]:
            return [
                run_curl(cli, f"http://{pair.SRV4}:{HTTP_PORT}/blob"),
                run_curl(cli, f"http://[{pair.SRV6}]:{HTTP_PORT}/blob"),
                run_upload(cli, pair.SRV4),
                run_upload(cli, pair.SRV6),
            ]

        sniffed, keys, _ = capture(pair, pcap, traffic)
    finally:
        pair.close()

    raw = Capture(pcap)
    if raw.super_packets == 0:
        pytest.skip("the kernel built no GSO super-packets on the veth: nothing to check")
    wire = Capture(pcap, resegment=True)
    assert set(keys) <= set(sniffed.ends)
    assert_same_flows(sniffed.ends, "sniff", wire.flows, "the capture cut at the MTU")
    # replay can only count what the file holds: one packet per super-packet.
    assert_same_flows(replay(pcap, pair.SRV4, pair.SRV6), "replay", raw.flows, "the capture")


def test_replay_ends_flows_by_packet_time_as_sniff_does(tmp_path: Path) -> None:
    """A SYN answered by RST, then, past the close linger (2 s), an ACK on the same ports:
    two flows for sniff (the first ended by its linger), so two for replay too."""
    need_tools("nmap", "tcpdump", "ss")
    pcap = tmp_path / "srv.pcap"
    pair = VethPair()
    try:
        pair.settle()
        base = ["-Pn", "-n", "--send-ip", "-g", "5555", "-p", "81", pair.SRV4]

        def traffic() -> None:
            pair.cli.run("nmap", "-sS", *base)
            time.sleep(3.0)  # > Timeouts.close_linger
            pair.cli.run("nmap", "-sA", *base)

        sniffed, _, _ = capture(pair, pcap, traffic)
    finally:
        pair.close()
    k = ("tcp", pair.CLI4, 5555, pair.SRV4, 81)
    assert [key_of(evs[0]) for evs in sniffed.by_flow.values()] == [k, k], sniffed.events
    rows = subprocess.run(
        [*netwarden_argv(), "replay", str(pcap), "--json", "--local", pair.SRV4],
        capture_output=True, text=True, timeout=30,
    ).stdout.splitlines()  # fmt: skip
    replayed = [json.loads(r) for r in rows if json.loads(r)["event"] == "end"]
    sniff_ends = sniffed.end_list
    assert [counters(e) for e in replayed] == [counters(e) for e in sniff_ends], (
        f"replay: {[counters(e) for e in replayed]}; sniff: {[counters(e) for e in sniff_ends]}"
    )


def test_sniff_accounts_for_every_captured_packet_when_stopped_at_once() -> None:
    """SIGINT right after the traffic: every packet sniff reports as captured is in a flow
    (tcpdump prints such packets as 'received by filter', not 'captured')."""
    need_tools("ss")
    pair = VethPair()
    try:
        start_services(pair)
        pair.settle()
        sniff = pair.srv.start(*netwarden_argv(), "sniff", "-i", pair.SRV_DEV, "--json")
        sniff.wait_for_line(r"^listening on ")
        key, expected = run_udp(pair.cli, pair.SRV4)
        captured, _ = stopped(sniff, "sniff")
        sniffed = Sniffed(sniff.json_lines(), pair.SRV_DEV, captured)
    finally:
        pair.close()
    assert captured == 2 * len(UDP_SIZES), sniff.err
    in_flows = sum(e["orig_pkts"] + e["resp_pkts"] for e in sniffed.ends.values())
    assert in_flows == captured, f"{captured} packets captured, {in_flows} in flows: {sniffed.ends}"
    assert counters(sniffed.ends[key]) == expected
