"""The eBPF backend on the real kernel: flows attributed to the exact process.

Each test makes its own network namespaces (``nwt-...``, removed in teardown) and watches
them with :class:`EbpfSource` sources scoped to those namespaces, so other traffic on the
host never reaches the assertions. Client and server sit in two namespaces joined by a veth
pair (offloads off, so packets are counted as sent); loopback tests use one namespace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

import pytest

from netwarden.events import Attribution, Direction, Event, EventType, Proto, Source
from tests.integration.ebpf_helpers import (
    ENV,
    REPO,
    Collector,
    Nft,
    Started,
    comm_of,
    netns_inode,
    py,
    wait_listening,
    within,
)
from tests.integration.netns import Netns, VethPair

pytestmark = pytest.mark.root


# the one-shot UDP sender: one datagram, then exit (no close: the socket goes at exit)
SENDER_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
int main(int argc, char **argv)
{
	static const char msg[] = "netwarden-oneshot";
	struct sockaddr_in a;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((unsigned short)atoi(argv[2]));
	inet_pton(AF_INET, argv[1], &a.sin_addr);
	return sendto(s, msg, sizeof(msg) - 1, 0, (struct sockaddr *)&a, sizeof(a)) < 0;
}
"""
SENDER_PAYLOAD = len("netwarden-oneshot")

RUNNER_PY = """
import subprocess, sys
argv, n = sys.argv[1:-1], int(sys.argv[-1])
for _ in range(n):
    p = subprocess.Popen(argv)
    if p.wait() != 0:
        sys.exit(f"sender failed: {p.returncode}")
    print(p.pid, flush=True)
"""

UDP_SINK_PY = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    s.recvfrom(2048)
"""

# a DNS responder: one A record (192.0.2.53) for any question
DNS_PY = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(4096)
    i = 12
    while q[i]:
        i += q[i] + 1
    question = q[12 : i + 5]
    head = q[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.53")
    s.sendto(head + question + answer, peer)
    print(f"{len(q)} {len(head + question + answer)}", flush=True)
"""


# --------------------------------------------------------------------------- TCP
# In a veth pair, namespace a is the server's, b the client's.
@pytest.mark.parametrize("family", [4, 6])
def test_curl_to_http_server_attributed_both_ends(
    veth: VethPair,
    collectors: Callable[..., Collector],
    procs: Callable[..., Started],
    family: int,
) -> None:
    nft = Nft(
        veth.b, "inet", {"orig": ("output", "tcp dport 8080"), "resp": ("input", "tcp sport 8080")}
    )
    cli = collectors(netns=netns_inode(veth.b))
    srv = collectors(netns=netns_inode(veth.a))
    # the server starts after the source: its listen() is seen
    server = procs(veth.a, sys.executable, "-m", "http.server", "--bind", "::", "8080")
    wait_listening(veth.a, 8080)
    srv_addr = ip_address(veth.a4 if family == 4 else veth.a6)
    cli_addr = ip_address(veth.b4 if family == 4 else veth.b6)
    host = str(srv_addr) if family == 4 else f"[{srv_addr}]"
    curl = procs(veth.b, "curl", "-sS", "-o", "/dev/null", f"http://{host}:8080/")
    curl.wait()

    (new,) = cli.wait_for(lambda e: e.event == EventType.NEW and e.dport == 8080)
    assert new.proto == Proto.TCP and new.ipproto == 6 and new.family == family
    assert new.direction == Direction.OUT
    assert (new.src, new.dst) == (cli_addr, srv_addr)
    assert new.pid == curl.pid and new.comm == "curl"
    assert new.exe is not None and new.exe.endswith("/curl")
    assert new.cmdline is not None and new.cmdline.startswith("curl -sS")
    assert new.uid == 0 and new.gid == 0 and new.user == "root"
    assert new.attribution == Attribution.KERNEL and new.source == Source.EBPF
    assert new.netns == netns_inode(veth.b)
    (end,) = cli.wait_for(lambda e: e.event == EventType.END and e.flow == new.flow)
    assert (end.src, end.sport, end.dst, end.dport) == (new.src, new.sport, new.dst, new.dport)
    assert end.pid == curl.pid and end.comm == "curl"
    # SYN, ACK, request, ACKs, FIN; the response is a directory listing
    assert end.orig_pkts >= 4 and end.resp_pkts >= 4
    hdr = 20 if family == 4 else 40
    assert end.orig_bytes >= end.orig_pkts * (hdr + 20) + len("GET / HTTP/1.1\r\n")
    assert end.resp_bytes > end.resp_pkts * (hdr + 20) + 200
    assert end.duration is not None and 0 <= end.duration < 10
    # what the namespace's firewall counted (TCP: within 10%, GSO super-packets count once
    # there, as their segments here)
    (_, nft_orig), (_, nft_resp) = nft.read()["orig"], nft.read()["resp"]
    assert within(end.orig_bytes, nft_orig) and within(end.resp_bytes, nft_resp)

    # the server's side: an accepted connection, owned by the listening process
    (inb,) = srv.wait_for(lambda e: e.event == EventType.NEW and e.sport == new.sport)
    assert inb.direction == Direction.IN and inb.proto == Proto.TCP
    assert (inb.src, inb.sport, inb.dst, inb.dport) == (cli_addr, new.sport, srv_addr, 8080)
    assert inb.pid == server.pid and inb.comm == comm_of(server.pid)
    assert inb.attribution == Attribution.KERNEL
    assert inb.netns == netns_inode(veth.a)
    (inend,) = srv.wait_for(lambda e: e.event == EventType.END and e.flow == inb.flow)
    # both ends counted the same packets (the handshake included on the accepting side)
    assert (inend.orig_pkts, inend.resp_pkts) == (end.orig_pkts, end.resp_pkts)
    assert (inend.orig_bytes, inend.resp_bytes) == (end.orig_bytes, end.resp_bytes)
    for summary in (cli.stop(), srv.stop()):
        assert summary["events_lost"] == 0 and summary["records_bad"] == 0
        assert summary["state_errors"] == 0


PROBER_PY = """
import socket, sys
for fam, host in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.connect((host, 7001))
    except ConnectionRefusedError:
        pass
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.sendto(b"knock", (host, 7002))
"""


def test_closed_ports_are_probes(veth: VethPair, collectors: Callable[..., Collector]) -> None:
    srv = collectors(netns=netns_inode(veth.a))
    cli = collectors(netns=netns_inode(veth.b))
    py(veth.b, PROBER_PY, veth.a4, veth.a6)
    probes = srv.wait_for(lambda e: e.event == EventType.PROBE, count=4)
    seen = {(e.proto, e.family, str(e.src), str(e.dst), e.dport) for e in probes}
    assert seen == {
        (Proto.TCP, 4, veth.b4, veth.a4, 7001),
        (Proto.UDP, 4, veth.b4, veth.a4, 7002),
        (Proto.TCP, 6, veth.b6, veth.a6, 7001),
        (Proto.UDP, 6, veth.b6, veth.a6, 7002),
    }
    for e in probes:
        assert e.direction == Direction.IN and e.pid is None and e.orig_pkts == 1
        assert e.attribution == Attribution.NONE and e.netns == netns_inode(veth.a)
    udp4 = next(e for e in probes if e.proto == Proto.UDP and e.family == 4)
    assert udp4.orig_bytes == 20 + 8 + len("knock")
    udp6 = next(e for e in probes if e.proto == Proto.UDP and e.family == 6)
    assert udp6.orig_bytes == 40 + 8 + len("knock")
    tcp4 = next(e for e in probes if e.proto == Proto.TCP and e.family == 4)
    assert tcp4.sport is not None and tcp4.sport > 1023
    # the refused connections are flows of the client, each answered by one RST
    refused = cli.wait_for(lambda e: e.event == EventType.END and e.dport == 7001, count=2)
    for e in refused:
        assert e.orig_pkts == 1 and e.resp_pkts == 1 and e.direction == Direction.OUT
    assert srv.stop()["events_lost"] == 0


# --------------------------------------------------------------------------- UDP
def _sender(tmp: Path) -> tuple[list[str], str]:
    """The one-shot sender and its process name: compiled C when a compiler is there."""
    src = tmp / "sender.c"
    src.write_text(SENDER_C)
    exe = tmp / "nwt-udp1"
    for cc in ("cc", "gcc", "clang"):
        if shutil.which(cc):
            cp = subprocess.run([cc, "-O2", "-o", str(exe), str(src)], capture_output=True)
            if cp.returncode == 0:
                return [str(exe)], exe.name
    script = tmp / "nwt-udp1.py"
    script.write_text(
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.sendto(b'netwarden-oneshot', (sys.argv[1], int(sys.argv[2])))\n"
    )
    return [sys.executable, "-S", "-I", str(script)], Path(sys.executable).name[:15]


def test_thousand_one_shot_udp_senders_each_attributed(
    veth: VethPair,
    collectors: Callable[..., Collector],
    procs: Callable[..., Started],
    tmp_path: Path,
) -> None:
    n = 1000
    sender, name = _sender(tmp_path)
    sink = procs(veth.a, sys.executable, "-c", UDP_SINK_PY, "9999")
    sink.wait_line("ready")
    nft = Nft(veth.b, "inet", {"orig": ("output", "udp dport 9999")})
    cli = collectors(netns=netns_inode(veth.b))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER_PY)
    t0 = time.monotonic()
    cp = veth.b.run(sys.executable, str(runner), *sender, veth.a4, "9999", str(n), timeout=120)
    elapsed = time.monotonic() - t0
    pids = [int(x) for x in cp.stdout.split()]
    assert len(pids) == n

    ends = cli.wait_for(lambda e: e.event == EventType.END and e.dport == 9999, count=n, timeout=30)
    news = cli.matching(lambda e: e.event == EventType.NEW and e.dport == 9999)
    assert len(news) == n and len(ends) == n
    by_pid = {e.pid: e for e in news}
    assert set(by_pid) == set(pids), f"missed {len(set(pids) - set(by_pid))} senders"
    for e in news:
        assert e.comm == name, e.to_dict()
        assert e.proto == Proto.UDP and e.direction == Direction.OUT
        assert str(e.src) == veth.b4 and str(e.dst) == veth.a4
        assert e.orig_pkts == 1 and e.orig_bytes == 28 + SENDER_PAYLOAD
        assert e.attribution == Attribution.KERNEL
    new_flows = {e.flow for e in news}
    assert {e.flow for e in ends} == new_flows and len(new_flows) == n
    for e in ends:
        assert e.orig_pkts == 1 and e.resp_pkts == 0 and e.pid in by_pid
    assert nft.read()["orig"] == (n, sum(e.orig_bytes for e in ends))
    summary = cli.stop()
    assert summary["events_lost"] == 0
    print(f"{n} one-shot senders in {elapsed:.1f}s; hooks {summary['hooks']}")


def test_dig_is_named_after_its_main_thread(
    veth: VethPair, collectors: Callable[..., Collector], procs: Callable[..., Started]
) -> None:
    if shutil.which("dig") is None:
        pytest.skip("dig (dnsutils) is not installed")
    nft = Nft(
        veth.b, "inet", {"orig": ("output", "udp dport 53"), "resp": ("input", "udp sport 53")}
    )
    srv = collectors(netns=netns_inode(veth.a))
    cli = collectors(netns=netns_inode(veth.b))
    dns = procs(veth.a, sys.executable, "-c", DNS_PY, "53")
    dns.wait_line("ready")
    dig = procs(veth.b, "dig", f"@{veth.a4}", "host.example.test", "A", "+short", "+tries=1")
    dig.wait()
    assert dig.out == ["192.0.2.53"]

    (q,) = cli.wait_for(lambda e: e.event == EventType.NEW and e.dport == 53)
    # dig sends from a worker thread (isc-net-0000); the process is "dig"
    assert q.pid == dig.pid and q.comm == "dig"
    assert q.proto == Proto.UDP and q.direction == Direction.OUT and str(q.dst) == veth.a4
    (qend,) = cli.wait_for(lambda e: e.event == EventType.END and e.flow == q.flow)
    assert qend.orig_pkts == 1 and qend.resp_pkts == 1
    qlen, alen = (int(x) for x in dns.out[1].split())
    assert (qend.orig_bytes, qend.resp_bytes) == (28 + qlen, 28 + alen)
    assert nft.read() == {"orig": (1, qend.orig_bytes), "resp": (1, qend.resp_bytes)}

    # the responder's side: an inbound UDP flow owned by the process that bound port 53
    (a,) = srv.wait_for(lambda e: e.event == EventType.NEW and e.dport == 53)
    assert a.direction == Direction.IN and a.pid == dns.pid
    assert (str(a.src), a.sport) == (veth.b4, q.sport)
    assert a.orig_bytes == qend.orig_bytes
    # still open (the responder's socket lives): ended by the stop, with both directions
    cli.stop()
    srv.stop()
    (aend,) = srv.matching(lambda e: e.event == EventType.END and e.flow == a.flow)
    assert (aend.orig_pkts, aend.resp_pkts) == (1, 1)
    assert (aend.orig_bytes, aend.resp_bytes) == (qend.orig_bytes, qend.resp_bytes)


SINK6_PY = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
while True:
    s.recvfrom(2048)
"""

TWO_REMOTES_PY = """
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5):
    u.sendto(b"a" * 10, (sys.argv[1], 9001))
    u.sendto(b"b" * 20, (sys.argv[1], 9003))
c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
c.connect((sys.argv[2], 9002))
for i in range(3):
    c.send(b"c" * 30)
u.close()
c.close()
"""


def test_udp_flow_per_socket_and_remote(
    veth: VethPair, collectors: Callable[..., Collector], procs: Callable[..., Started]
) -> None:
    """One unconnected socket to two remotes is two flows; a connected one is one."""
    for code, port in ((UDP_SINK_PY, "9001"), (UDP_SINK_PY, "9003"), (SINK6_PY, "9002")):
        procs(veth.a, sys.executable, "-c", code, port).wait_line("ready")
    cli = collectors(netns=netns_inode(veth.b))
    py(veth.b, TWO_REMOTES_PY, veth.a4, veth.a6)
    ends = cli.wait_for(lambda e: e.event == EventType.END and e.proto == Proto.UDP, count=3)
    got = {(e.family, e.dport): (e.orig_pkts, e.orig_bytes) for e in ends}
    assert got == {
        (4, 9001): (5, 5 * (28 + 10)),
        (4, 9003): (5, 5 * (28 + 20)),
        (6, 9002): (3, 3 * (48 + 30)),
    }
    news = cli.matching(lambda e: e.event == EventType.NEW and e.proto == Proto.UDP)
    assert len(news) == 3
    assert len({e.pid for e in news}) == 1 and len({e.sport for e in news if e.family == 4}) == 1


# --------------------------------------------------------------------------- loopback
ECHO6_PY = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(99)
    s.sendto(d + b"!", a)
"""

ASK6_PY = """
import socket, sys
c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
c.sendto(b"ping", ("::1", int(sys.argv[1])))
c.recv(99)
c.close()
"""


def test_loopback_flows_are_one_local_record(
    ns: Netns, collectors: Callable[..., Collector], procs: Callable[..., Started]
) -> None:
    # on loopback both directions leave through the output hook
    nft = Nft(
        ns,
        "inet",
        {
            "orig": ("output", "tcp dport 8081"),
            "resp": ("output", "tcp sport 8081"),
            "uorig": ("output", "udp dport 9053"),
            "uresp": ("output", "udp sport 9053"),
        },
    )
    c = collectors(netns=netns_inode(ns))
    server = procs(ns, sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "8081")
    wait_listening(ns, 8081)
    echo = procs(ns, sys.executable, "-c", ECHO6_PY, "9053")
    echo.wait_line("ready")
    curl = procs(ns, "curl", "-sS", "-o", "/dev/null", "http://127.0.0.1:8081/")
    curl.wait()
    asker = procs(ns, sys.executable, "-c", ASK6_PY, "9053")
    asker.wait()
    c.wait_for(lambda e: e.event == EventType.END and e.dport == 9053)
    (tcp_end,) = c.wait_for(lambda e: e.event == EventType.END and e.dport == 8081)
    c.stop()  # ends what is still open: nothing of the responders' sides may appear
    flows = c.matching(lambda e: e.event in (EventType.NEW, EventType.END))
    tcp = [e for e in flows if e.proto == Proto.TCP]
    udp = [e for e in flows if e.proto == Proto.UDP]
    assert [e.event for e in tcp] == [EventType.NEW, EventType.END], [e.to_dict() for e in tcp]
    assert [e.event for e in udp] == [EventType.NEW, EventType.END], [e.to_dict() for e in udp]
    for e in tcp:
        assert e.direction == Direction.LOCAL and e.pid == curl.pid and e.comm == "curl"
        assert e.dport == 8081 and str(e.src) == str(e.dst) == "127.0.0.1"
    for e in udp:
        assert e.direction == Direction.LOCAL and e.pid == asker.pid and e.dport == 9053
        assert e.family == 6 and str(e.dst) == "::1"
    assert tcp_end.resp_bytes > 200
    assert (udp[1].orig_pkts, udp[1].resp_pkts) == (1, 1)
    assert (udp[1].orig_bytes, udp[1].resp_bytes) == (40 + 8 + 4, 40 + 8 + 5)
    counted = nft.read()
    assert within(tcp[1].orig_bytes, counted["orig"][1])
    assert within(tcp[1].resp_bytes, counted["resp"][1])
    assert (udp[1].orig_pkts, udp[1].orig_bytes) == counted["uorig"]
    assert (udp[1].resp_pkts, udp[1].resp_bytes) == counted["uresp"]
    assert server.popen.poll() is None and echo.popen.poll() is None
    assert not c.matching(lambda e: e.pid in (server.pid, echo.pid))


# --------------------------------------------------------------------------- scope, stop
SEND9_PY = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"x", ("127.0.0.1", 9))
"""


def test_default_scope_is_own_namespace(ns: Netns, collectors: Callable[..., Collector]) -> None:
    mine = collectors()  # the namespace this test runs in
    theirs = collectors(netns=netns_inode(ns))
    py(ns, SEND9_PY)
    theirs.wait_for(lambda e: e.event == EventType.NEW and e.dport == 9)
    time.sleep(0.3)
    assert not mine.matching(lambda e: e.netns == netns_inode(ns))
    assert mine.src.netns == os.stat("/proc/self/ns/net").st_ino


def test_all_netns_sees_every_namespace(ns: Netns, collectors: Callable[..., Collector]) -> None:
    every = collectors(all_netns=True)
    py(ns, SEND9_PY)
    (e,) = every.wait_for(
        lambda e: e.event == EventType.NEW and e.netns == netns_inode(ns) and e.dport == 9
    )
    assert e.comm is not None and e.attribution == Attribution.KERNEL


HOLDER_PY = """
import socket
l = socket.socket(); l.bind(("127.0.0.1", 8082)); l.listen()
c = socket.create_connection(("127.0.0.1", 8082)); a, _ = l.accept()
c.sendall(b"q" * 100); a.recv(100); a.sendall(b"r" * 300); c.recv(300)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"u", ("127.0.0.1", 9))
print("ready", flush=True)
input()
"""


def test_stop_ends_open_flows(
    ns: Netns, collectors: Callable[..., Collector], procs: Callable[..., Started]
) -> None:
    c = collectors(netns=netns_inode(ns))
    holder = procs(ns, sys.executable, "-c", HOLDER_PY)
    holder.wait_line("ready")
    c.wait_for(lambda e: e.event == EventType.NEW and e.dport == 9)
    c.stop()
    ends = c.matching(lambda e: e.event == EventType.END)
    tcp = [e for e in ends if e.dport == 8082]
    assert len(tcp) == 1 and tcp[0].pid == holder.pid
    print(tcp[0].to_dict())
    assert tcp[0].orig_bytes >= 100 + 3 * 40 and tcp[0].resp_bytes >= 300 + 2 * 40
    udp = [e for e in ends if e.dport == 9]
    assert len(udp) == 1 and udp[0].orig_pkts == 1


def test_not_root_is_a_missing_capability(bpf_object: Path) -> None:
    code = (
        "import os, sys\n"
        "from netwarden.capture.ebpf import EbpfSource\n"
        "from netwarden.errors import MissingCapability\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "try:\n    EbpfSource()\nexcept MissingCapability as e:\n"
        "    print(e.exit_code, e)\n    sys.exit(0)\n"
        "sys.exit('no error')\n"
    )
    env = dict(ENV, PYTHONPATH=str(REPO / "src"))
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if cp.returncode != 0 and "Permission denied" in cp.stderr:
        pytest.skip("the unprivileged user cannot read the interpreter or the sources")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("3 the eBPF backend needs root"), cp.stdout


def test_object_layout_matches_decoder(bpf_object: Path) -> None:
    """The compiled structs have the sizes wire/ebpf_records.py decodes (the record itself
    is checked on every read: a record of another size counts as bad)."""
    from netwarden.wire import ebpf_records as R

    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run(
        [bpftool, "btf", "dump", "file", str(bpf_object)], capture_output=True, text=True
    ).stdout
    sizes = dict(re.findall(r"STRUCT '(nw_\w+)' size=(\d+)", out))
    assert int(sizes["nw_flow_key"]) == R.FLOW_KEY_SIZE
    assert int(sizes["nw_flow"]) == R.FLOW_SIZE


ECHO4_PY = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(99)
    s.sendto(d + b"!", a)
"""

ASK4_PY = r"""
import socket, sys
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.sendto(b"ping", (sys.argv[1], 53))
c.settimeout(10)
c.recv(4096)
t = socket.create_connection((sys.argv[1], 8083))
t.sendall(b"GET / HTTP/1.0\r\n\r\n")
t.recv(10)
"""


def test_sockets_made_before_start_have_their_owners(
    veth: VethPair, collectors: Callable[..., Collector], procs: Callable[..., Started]
) -> None:
    """A server that was listening before netwarden started still owns its flows."""
    web = procs(veth.a, sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8083")
    dns = procs(veth.a, sys.executable, "-c", ECHO4_PY, "53")
    dns.wait_line("ready")
    wait_listening(veth.a, 8083)
    srv = collectors(netns=netns_inode(veth.a))
    py(veth.b, ASK4_PY, veth.a4)
    (t,) = srv.wait_for(lambda e: e.event == EventType.NEW and e.dport == 8083)
    (u,) = srv.wait_for(lambda e: e.event == EventType.NEW and e.dport == 53)
    assert (t.direction, t.pid, t.attribution) == (Direction.IN, web.pid, Attribution.KERNEL)
    assert (u.direction, u.pid, u.attribution) == (Direction.IN, dns.pid, Attribution.KERNEL)
    assert srv.stop()["unavailable"] == {}


def test_close_from_another_thread(bpf_object: Path, ns: Netns) -> None:
    from netwarden.capture.ebpf import EbpfSource

    src = EbpfSource(netns=netns_inode(ns), obj_path=bpf_object, poll_interval=0.05)
    got: list[Event] = []
    reader = threading.Thread(target=lambda: got.extend(src))
    reader.start()
    py(ns, SEND9_PY)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    src.close()  # the reader ends the open flow, then closes
    reader.join(5)
    assert not reader.is_alive()
    # nothing listens on port 9: the datagram is also a (local) probe
    assert sorted(e.event for e in got) == [EventType.END, EventType.NEW, EventType.PROBE]
    assert src.summary()["records"] == 3
    src.close()  # idempotent


IDLE_PY = """
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"one", ("127.0.0.1", 9))
time.sleep(float(sys.argv[1]))
u.sendto(b"two!", ("127.0.0.1", 9))
print("sent", flush=True)
input()
"""


def test_idle_udp_flow_ends_and_a_new_one_starts(
    ns: Netns, collectors: Callable[..., Collector], procs: Callable[..., Started]
) -> None:
    from netwarden.stats.flows import Timeouts

    c = collectors(netns=netns_inode(ns), timeouts=Timeouts(udp=0.3), sweep_interval=0.1)
    sender = procs(ns, sys.executable, "-c", IDLE_PY, "1.5")
    (first_end,) = c.wait_for(lambda e: e.event == EventType.END and e.dport == 9, timeout=5)
    assert first_end.pid == sender.pid and (first_end.orig_pkts, first_end.orig_bytes) == (1, 31)
    sender.wait_line("sent")
    news = c.wait_for(lambda e: e.event == EventType.NEW and e.dport == 9, count=2)
    assert news[0].flow == first_end.flow and news[1].flow != first_end.flow
    assert news[1].sport == news[0].sport and news[1].orig_bytes == 32
    c.stop()  # the second flow is still open: ended by the stop
    ends = c.matching(lambda e: e.event == EventType.END and e.dport == 9)
    assert [e.flow for e in ends] == [first_end.flow, news[1].flow]


def _variant(bpf_object: Path, tmp: Path, refuse: int) -> Path:
    """The object built with -DNW_TEST_REFUSE (an invalid program the kernel refuses)."""
    src = REPO / "src" / "netwarden" / "bpf"
    out = tmp / f"refuse{refuse}.o"
    cp = subprocess.run(
        [
            "clang", "-g", "-O2", "-target", "bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86",
            f"-DNW_TEST_REFUSE={refuse}", f"-I{bpf_object.parent}", f"-I{src}",
            "-c", str(src / "netwarden.bpf.c"), "-o", str(out),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if cp.returncode != 0 or os.uname().machine != "x86_64":
        pytest.skip(f"cannot build the test variant: {cp.stderr.strip()[:200]}")
    return out


def test_refused_hooks_are_reported(bpf_object: Path, tmp_path: Path) -> None:
    from netwarden.capture.ebpf import EbpfSource, check
    from netwarden.errors import MissingCapability

    # an optional hook refused: the source runs without it and says why
    src = EbpfSource(obj_path=_variant(bpf_object, tmp_path, 1))
    try:
        assert src.unavailable == {"nw_tcp_reset": "invalid bpf_context access off=504 size=8"}
        assert src.summary()["unavailable"] == src.unavailable
    finally:
        src.close()
    # a required one: MissingCapability naming the hook and the kernel's reason
    assert check(bpf_object) == {}
    with pytest.raises(MissingCapability) as exc:
        check(_variant(bpf_object, tmp_path, 2))
    assert exc.value.exit_code == 3
    assert str(exc.value).startswith(
        "the kernel refused sockops (TCP connect, accept, listen): "
        "invalid bpf_context access off=4000 size=4; use --backend conntrack or sniff"
    )


def test_cgroup2_is_mounted_when_none_is(
    tmp_path: Path, ns: Netns, collectors: Callable[..., Collector]
) -> None:
    """With no cgroup v2 mount in sight, one is mounted; attached there, hooks see all."""
    from netwarden.cgroup2 import cgroup2_root, find_cgroup2

    fake = tmp_path / "mountinfo"
    fake.write_text("22 28 0:20 / /sys rw - sysfs sysfs rw\n")
    where = tmp_path / "cg2"
    try:
        assert cgroup2_root(mountinfo_path=str(fake), mount_dir=str(where)) == str(where)
        assert (where / "cgroup.procs").exists()
        mine = Path("/proc/self/mountinfo").read_text()
        assert str(where) in {ln.split()[4] for ln in mine.splitlines()}
        assert find_cgroup2(mine) is not None
        c = collectors(netns=netns_inode(ns), cgroup_root=str(where))
        py(ns, SEND9_PY)
        c.wait_for(lambda e: e.event == EventType.NEW and e.dport == 9)
        c.stop()
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


def test_fileno_wakes_for_a_single_record(bpf_object: Path, ns: Netns) -> None:
    """fileno() is for event loops: readable as soon as one record waits (the default
    wake-up mark batches records for iteration), then poll() gives the events."""
    import select

    from netwarden.capture.ebpf import EbpfSource

    src = EbpfSource(netns=netns_inode(ns), obj_path=bpf_object, poll_interval=30)
    try:
        assert src.wakeup_bytes > 0
        fd = src.fileno()
        assert src.wakeup_bytes == 0
        py(ns, SEND9_PY)
        ready, _, _ = select.select([fd], [], [], 5)
        assert ready
        got = src.poll()
        assert [e.event for e in got if e.dport == 9][:1] == [EventType.NEW]
    finally:
        src.close()
