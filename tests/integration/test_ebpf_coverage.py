"""Attribution coverage of the eBPF backend: one test per way a program can put packets on
the network (docs/attribution.md lists them, with the cases this kernel cannot attribute).

Each test runs real programs in namespaces of its own (``nwt-...``), watches them with an
:class:`EbpfSource` and checks that the flow belongs to the right process (pid, comm) and
that its bytes, both ways, are within 10% of what an nftables table in the same namespace
counted for the same packets (they are equal where no offload is involved). TCP, DNS, the
one-shot UDP sender and loopback are covered in test_ebpf_attribution.py.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netwarden.events import Attribution, Direction, Event, EventType, Proto
from tests.integration.ebpf_helpers import (
    Collector,
    Nft,
    Started,
    compile_c,
    netns_inode,
    within,
)
from tests.integration.netns import VethPair

pytestmark = pytest.mark.root


def flows_of(c: Collector, pred: Callable[[Event], bool]) -> tuple[Event, Event]:
    """The one flow matching ``pred``: its ``new`` and its ``end`` (after ``c.stop()``)."""
    news = c.matching(lambda e: e.event == EventType.NEW and pred(e))
    assert len(news) == 1, [e.to_dict() for e in news]
    ends = c.matching(lambda e: e.event == EventType.END and e.flow == news[0].flow)
    assert len(ends) == 1, [e.to_dict() for e in ends]
    return news[0], ends[0]


def assert_bytes(end: Event, counted: dict[str, tuple[int, int]], l2: int = 0) -> None:
    """The flow's bytes both ways within 10% of the nft counters ``orig`` and ``resp`` (an
    ``l2``-byte link-layer header per packet taken off the ``orig`` counter), and for
    datagrams the packets too. (TCP reaches nftables' hooks as GSO super-packets, each
    counted once; netwarden counts the segments on the wire, each with its headers.)"""
    opkts, obytes = counted["orig"]
    rpkts, rbytes = counted["resp"]
    obytes -= l2 * opkts
    got = (end.orig_bytes, end.resp_bytes)
    print(f"{end.proto} {end.dport}: ours {got} nft {(obytes, rbytes)}")
    assert within(end.orig_bytes, obytes) and within(end.resp_bytes, rbytes), (
        f"ours {got}, nft {(obytes, rbytes)}"
    )
    if end.proto != Proto.TCP:
        assert (end.orig_pkts, end.resp_pkts) == (opkts, rpkts)


def reported(p: Started) -> tuple[int, str]:
    """A helper program's ``PID COMM`` line (read before it exited)."""
    pid, comm = p.out[-1].split()[:2]
    return int(pid), comm


# --------------------------------------------------------------------------- ICMP echo
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("socket_kind", ["raw", "dgram"])
def test_ping(
    veth: VethPair,
    collectors: Callable[..., Collector],
    procs: Callable[..., Started],
    socket_kind: str,
    family: int,
) -> None:
    """ping with a raw ICMP socket (the default as root) or an ICMP datagram ("ping")
    socket (allowed by ping_group_range): one echo flow, ping's, both ways counted."""
    icmp = "icmp" if family == 4 else "icmpv6"
    nft = Nft(
        veth.b,
        "inet",
        {
            "orig": ("output", f"{icmp} type echo-request"),
            "resp": ("input", f"{icmp} type echo-reply"),
        },
    )
    if socket_kind == "dgram":
        veth.b.run("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
    c = collectors(netns=netns_inode(veth.b))
    dst = veth.a4 if family == 4 else veth.a6
    ping = procs(veth.b, "ping", f"-{family}", "-c", "5", "-i", "0.05", "-W", "5", dst)
    ping.wait()
    c.wait_for(lambda e: e.event == EventType.END and str(e.dst) == dst)
    c.stop()
    new, end = flows_of(c, lambda e: str(e.dst) == dst)
    assert new.proto == (Proto.ICMP if family == 4 else Proto.ICMPV6)
    assert (new.sport, new.dport, new.direction) == (None, None, Direction.OUT)
    assert (new.pid, new.comm, new.attribution) == (ping.pid, "ping", Attribution.KERNEL)
    assert (end.orig_pkts, end.resp_pkts) == (5, 5)
    assert_bytes(end, nft.read())


# --------------------------------------------------------------------------- raw IP
RAW_SENDER_PY = r"""
import os, socket, struct, sys
mode, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload = b"raw-ip-253" * 4
if mode == "hdrincl":  # IPPROTO_RAW: the program writes the IP header itself
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 7, 0, 64, 253, 0,
                       socket.inet_aton(sys.argv[4]), socket.inet_aton(dst))
    for _ in range(n):
        s.sendto(head + payload, (dst, 0))
else:
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_RAW, 253)
    s.settimeout(5)
    for _ in range(n):
        s.sendto(payload, (dst, 0))
        s.recvfrom(2048)
print(os.getpid(), open("/proc/self/comm").read().strip(), flush=True)
"""

# answers every IP protocol 253 packet with its payload reversed
RAW_RESPONDER_PY = r"""
import socket, sys
v4 = sys.argv[1] == "4"
s = socket.socket(socket.AF_INET if v4 else socket.AF_INET6, socket.SOCK_RAW, 253)
print("ready", flush=True)
while True:
    d, a = s.recvfrom(2048)
    if v4:
        d = d[(d[0] & 15) * 4:]
    s.sendto(d[::-1], a)
"""


@pytest.mark.parametrize("mode", ["4", "6", "hdrincl"])
def test_raw_ip_socket(
    veth: VethPair,
    collectors: Callable[..., Collector],
    procs: Callable[..., Started],
    mode: str,
) -> None:
    """A SOCK_RAW sender of IP protocol 253 (answered by a raw responder), and one writing
    its own IP headers (IPPROTO_RAW, which can receive nothing: unanswered)."""
    nft = Nft(
        veth.b,
        "inet",
        {"orig": ("output", "meta l4proto 253"), "resp": ("input", "meta l4proto 253")},
    )
    c = collectors(netns=netns_inode(veth.b))
    if mode != "hdrincl":
        procs(veth.a, sys.executable, "-c", RAW_RESPONDER_PY, mode).wait_line("ready")
    dst = veth.a6 if mode == "6" else veth.a4
    sender = procs(veth.b, sys.executable, "-c", RAW_SENDER_PY, mode, dst, "5", veth.b4)
    sender.wait()
    pid, comm = reported(sender)
    c.wait_for(lambda e: e.event == EventType.END and str(e.dst) == dst)
    c.stop()
    new, end = flows_of(c, lambda e: str(e.dst) == dst)
    assert (new.proto, new.ipproto, new.sport, new.dport) == (Proto.IP, 253, None, None)
    assert (new.pid, new.comm, new.direction) == (pid, comm, Direction.OUT)
    assert (end.orig_pkts, end.resp_pkts) == (5, 0 if mode == "hdrincl" else 5)
    assert_bytes(end, nft.read())


# --------------------------------------------------------------------------- AF_PACKET
# Sends UDP datagrams it built itself (IPv4 + UDP) through a packet socket: SOCK_DGRAM (the
# kernel adds the Ethernet header) or SOCK_RAW (the program writes it); with "bypass" the
# socket skips the queueing layer (PACKET_QDISC_BYPASS).
PACKET_SENDER_PY = r"""
import os, socket, struct, sys, time
kind, ifname, mac, src, dst, n = sys.argv[1:7]
mac = bytes.fromhex(mac.replace(":", ""))
def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
payload = b"packet-socket" * 3
udp = struct.pack("!HHHH", 40000, 9007, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
if kind == "dgram":
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    for _ in range(int(n)):
        s.sendto(ip + udp, (ifname, 0x0800, 0, 0, mac))
else:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    if kind == "bypass":
        s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
    s.bind((ifname, 0))
    me = bytes.fromhex(open(f"/sys/class/net/{ifname}/address").read().strip().replace(":", ""))
    for _ in range(int(n)):
        s.send(mac + me + b"\x08\x00" + ip + udp)
print(os.getpid(), open("/proc/self/comm").read().strip(), flush=True)
time.sleep(0.3)  # the socket stays while the answers come
"""

UDP_ECHO_PY = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(4096)
    s.sendto(d, a)
"""


def _packet_run(
    veth: VethPair, c: Collector, procs: Callable[..., Started], kind: str
) -> tuple[Started, Nft]:
    # nft's netdev hooks see what packet sockets send (the inet hooks do not); at egress a
    # packet still has its Ethernet header, at ingress not any more
    nft = Nft(
        veth.b,
        "netdev",
        {"orig": ("egress", "udp dport 9007"), "resp": ("ingress", "udp sport 9007")},
        device=veth.b_if,
    )
    procs(veth.a, sys.executable, "-c", UDP_ECHO_PY, "9007").wait_line("ready")
    mac = json.loads(veth.a.ip("-j", "link", "show", veth.a_if))[0]["address"]
    sender = procs(
        veth.b, sys.executable, "-c", PACKET_SENDER_PY, kind, veth.b_if, mac, veth.b4, veth.a4, "5"
    )
    sender.wait()
    return sender, nft


@pytest.mark.parametrize("kind", ["dgram", "raw"])
def test_packet_socket(
    veth: VethPair,
    collectors: Callable[..., Collector],
    procs: Callable[..., Started],
    kind: str,
) -> None:
    """IP packets sent through an AF_PACKET socket: the sender's flow, with the answers
    (which reach no socket of the sender: they are counted in its flow, not as probes)."""
    c = collectors(netns=netns_inode(veth.b))
    sender, nft = _packet_run(veth, c, procs, kind)
    pid, comm = reported(sender)
    c.stop()
    new, end = flows_of(c, lambda e: e.dport == 9007)
    assert (new.proto, str(new.src), new.sport, str(new.dst)) == (
        Proto.UDP, veth.b4, 40000, veth.a4,
    )  # fmt: skip
    assert (new.pid, new.comm, new.direction) == (pid, comm, Direction.OUT)
    assert new.attribution == Attribution.KERNEL
    assert (end.orig_pkts, end.resp_pkts) == (5, 5)
    assert_bytes(end, nft.read(), l2=14)
    assert not c.matching(lambda e: e.event == EventType.PROBE)


def test_packet_socket_bypassing_the_queue_is_not_seen(
    veth: VethPair, collectors: Callable[..., Collector], procs: Callable[..., Started]
) -> None:
    """PACKET_QDISC_BYPASS hands frames to the driver directly: past every BPF hook and
    tracepoint of the sending host (and tcpdump); only nftables' netdev egress hook sees
    them. A case this kernel gives no way to attribute (docs/attribution.md): the sender's
    flow is missing, its answers are reported as probes (attribution none), and the
    receiving namespace sees the flow."""
    c = collectors(netns=netns_inode(veth.b))
    peer = collectors(netns=netns_inode(veth.a))
    _sender, nft = _packet_run(veth, c, procs, "bypass")
    peer.wait_for(lambda e: e.event == EventType.NEW and e.dport == 9007)
    c.wait_for(lambda e: e.event == EventType.PROBE and e.sport == 9007, count=5)
    c.stop()
    assert nft.read()["orig"] == (5, 5 * (14 + 67))
    assert not c.matching(lambda e: e.event != EventType.PROBE)
    for e in c.events:
        assert (e.dport, e.attribution, e.pid) == (40000, Attribution.NONE, None)


# --------------------------------------------------------------------------- zero-copy paths
TCP_SINK_PY = """
import socket, sys
l = socket.socket()
l.bind(("0.0.0.0", int(sys.argv[1])))
l.listen()
print("ready", flush=True)
while True:
    a, _ = l.accept()
    n = 0
    while True:
        d = a.recv(65536)
        if not d:
            break
        n += len(d)
    a.sendall(b"k" * 5000)
    a.close()
"""

# sends a file over TCP with sendfile(2) or splice(2) (file -> pipe -> socket)
ZEROCOPY_PY = r"""
import os, socket, sys
how, dst, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
size = os.path.getsize(path)
s = socket.create_connection((dst, port))
with open(path, "rb") as f:
    if how == "sendfile":
        off = 0
        while off < size:
            off += os.sendfile(s.fileno(), f.fileno(), off, size - off)
    else:
        r, w = os.pipe()
        left = size
        while left:
            n = os.splice(f.fileno(), w, min(left, 65536))
            while n:
                n -= os.splice(r, s.fileno(), n)
            left -= min(left, 65536)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
print(os.getpid(), open("/proc/self/comm").read().strip(), flush=True)
"""


@pytest.mark.parametrize("how", ["sendfile", "splice"])
def test_sendfile_and_splice(
    veth: VethPair,
    collectors: Callable[..., Collector],
    procs: Callable[..., Started],
    tmp_path: Path,
    how: str,
) -> None:
    data = tmp_path / "payload"
    data.write_bytes(os.urandom(300_000))
    nft = Nft(
        veth.b, "inet", {"orig": ("output", "tcp dport 9010"), "resp": ("input", "tcp sport 9010")}
    )
    procs(veth.a, sys.executable, "-c", TCP_SINK_PY, "9010").wait_line("ready")
    c = collectors(netns=netns_inode(veth.b))
    sender = procs(veth.b, sys.executable, "-c", ZEROCOPY_PY, how, veth.a4, "9010", str(data))
    sender.wait()
    pid, comm = reported(sender)
    c.wait_for(lambda e: e.event == EventType.END and e.dport == 9010)
    c.stop()
    new, end = flows_of(c, lambda e: e.dport == 9010)
    assert (new.pid, new.comm, new.direction) == (pid, comm, Direction.OUT)
    assert end.orig_bytes > 300_000 and end.resp_bytes > 5000
    assert_bytes(end, nft.read())


MMSG_C = r"""
/* sendmmsg/recvmmsg: "serve PORT" answers every datagram (batches in, batches out);
 * "send ADDR PORT1 PORT2 N" sends N datagrams to each port in batches from one unconnected
 * socket, then reads the 2N answers in batches and prints its pid. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define BATCH 16
#define LEN 100

static struct mmsghdr m[BATCH];
static struct iovec iov[BATCH];
static char buf[BATCH][2048];
static struct sockaddr_in peer[BATCH];

static void arm(void)
{
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = buf[i];
		iov[i].iov_len = sizeof(buf[i]);
		memset(&m[i], 0, sizeof(m[i]));
		m[i].msg_hdr.msg_name = &peer[i];
		m[i].msg_hdr.msg_namelen = sizeof(peer[i]);
		m[i].msg_hdr.msg_iov = &iov[i];
		m[i].msg_hdr.msg_iovlen = 1;
	}
}

static int serve(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	int s = socket(AF_INET, SOCK_DGRAM, 0);

	if (bind(s, (struct sockaddr *)&a, sizeof(a)))
		return 1;
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		arm();
		int n = recvmmsg(s, m, BATCH, MSG_WAITFORONE, NULL);
		if (n <= 0)
			continue;
		for (int i = 0; i < n; i++)
			iov[i].iov_len = m[i].msg_len;
		if (sendmmsg(s, m, n, 0) != n)
			return 2;
	}
}

static int send_all(const char *addr, int p1, int p2, int n)
{
	struct sockaddr_in dst[2];
	struct timeval tv = {.tv_sec = 5};
	char payload[LEN];
	int s = socket(AF_INET, SOCK_DGRAM, 0), sent = 0, got = 0, total = 2 * n;

	memset(payload, 'm', sizeof(payload));
	for (int i = 0; i < 2; i++) {
		memset(&dst[i], 0, sizeof(dst[i]));
		dst[i].sin_family = AF_INET;
		dst[i].sin_port = htons(i ? p2 : p1);
		inet_pton(AF_INET, addr, &dst[i].sin_addr);
	}
	while (sent < total) {
		int k = total - sent < BATCH ? total - sent : BATCH;

		for (int i = 0; i < k; i++) {
			iov[i].iov_base = payload;
			iov[i].iov_len = sizeof(payload);
			memset(&m[i], 0, sizeof(m[i]));
			m[i].msg_hdr.msg_name = &dst[(sent + i) % 2];
			m[i].msg_hdr.msg_namelen = sizeof(dst[0]);
			m[i].msg_hdr.msg_iov = &iov[i];
			m[i].msg_hdr.msg_iovlen = 1;
		}
		int r = sendmmsg(s, m, k, 0);
		if (r <= 0)
			return 3;
		sent += r;
	}
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	while (got < total) {
		arm();
		int r = recvmmsg(s, m, BATCH, MSG_WAITFORONE, NULL);
		if (r <= 0)
			return 4;
		got += r;
	}
	printf("%d %d\n", getpid(), got);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "serve"))
		return serve(atoi(argv[2]));
	if (argc == 6 && !strcmp(argv[1], "send"))
		return send_all(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
	fprintf(stderr, "usage: %s serve PORT | send ADDR PORT1 PORT2 N\n", argv[0]);
	return 2;
}
"""


def test_sendmmsg_recvmmsg(
    veth: VethPair,
    collectors: Callable[..., Collector],
    procs: Callable[..., Started],
    tmp_path: Path,
) -> None:
    """Batched datagrams: a sendmmsg client to two servers (one flow each, the client's),
    recvmmsg/sendmmsg servers (an inbound flow each, the server's)."""
    exe = str(compile_c(tmp_path, "nwt-mmsg", MMSG_C))
    n = 40
    nft = Nft(
        veth.b,
        "inet",
        {
            "orig": ("output", "udp dport 9021"),
            "resp": ("input", "udp sport 9021"),
            "orig2": ("output", "udp dport 9022"),
            "resp2": ("input", "udp sport 9022"),
        },
    )
    servers = [procs(veth.a, exe, "serve", str(port)) for port in (9021, 9022)]
    for s in servers:
        s.wait_line("ready")
    cli = collectors(netns=netns_inode(veth.b))
    srv = collectors(netns=netns_inode(veth.a))
    client = procs(veth.b, exe, "send", veth.a4, "9021", "9022", str(n))
    client.wait()
    assert client.out == [f"{client.pid} {2 * n}"]
    cli.wait_for(lambda e: e.event == EventType.END and e.dport in (9021, 9022), count=2)
    cli.stop()
    srv.stop()
    counted = nft.read()
    for port, (orig, resp) in ((9021, ("orig", "resp")), (9022, ("orig2", "resp2"))):
        new, end = flows_of(cli, lambda e, p=port: e.dport == p)
        assert (new.pid, new.comm, new.direction) == (client.pid, "nwt-mmsg", Direction.OUT)
        assert (end.orig_pkts, end.resp_pkts) == (n, n)
        assert end.orig_bytes == n * (28 + 100)
        assert_bytes(end, {"orig": counted[orig], "resp": counted[resp]})
        server = servers[port - 9021]
        snew, send_ = flows_of(srv, lambda e, p=port: e.dport == p)
        assert (snew.pid, snew.comm, snew.direction) == (server.pid, "nwt-mmsg", Direction.IN)
        assert (send_.orig_bytes, send_.resp_bytes) == (end.orig_bytes, end.resp_bytes)


# --------------------------------------------------------------------------- io_uring
URING_C = r"""
/* io_uring: "MODE ADDR TCPPORT UDPPORT" with MODE "async" (every request forced to an io-wq
 * worker thread, IOSQE_ASYNC) or "sqpoll" (requests taken by the kernel's SQ polling thread).
 * TCP: connect, send 10000 bytes, read the answer to its end; UDP: 3 sendmsg to UDPPORT.
 * Prints its pid and the bytes it read. */
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct io_uring ring;
static unsigned sqe_flags;

static int run(struct io_uring_sqe *sqe)
{
	struct io_uring_cqe *cqe;
	int res;

	sqe->flags |= sqe_flags;
	if (io_uring_submit(&ring) < 0 || io_uring_wait_cqe(&ring, &cqe) < 0)
		return -1000;
	res = cqe->res;
	io_uring_cqe_seen(&ring, cqe);
	return res;
}

int main(int argc, char **argv)
{
	static char out[10000], in[65536], dgram[50];
	struct io_uring_params p;
	struct io_uring_sqe *sqe;
	struct sockaddr_in a, ua;
	struct msghdr msg;
	struct iovec iov;
	long got = 0;
	int t, u, r, sent = 0;

	if (argc != 5)
		return 2;
	memset(&p, 0, sizeof(p));
	if (!strcmp(argv[1], "sqpoll")) {
		p.flags = IORING_SETUP_SQPOLL;
		p.sq_thread_idle = 2000;
	} else {
		sqe_flags = IOSQE_ASYNC;
	}
	if (io_uring_queue_init_params(8, &ring, &p) < 0)
		return 3;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	inet_pton(AF_INET, argv[2], &a.sin_addr);
	ua = a;
	a.sin_port = htons(atoi(argv[3]));
	ua.sin_port = htons(atoi(argv[4]));
	memset(out, 'u', sizeof(out));
	memset(dgram, 'd', sizeof(dgram));

	t = socket(AF_INET, SOCK_STREAM, 0);
	sqe = io_uring_get_sqe(&ring);
	io_uring_prep_connect(sqe, t, (struct sockaddr *)&a, sizeof(a));
	if ((r = run(sqe)) != 0) {
		fprintf(stderr, "connect: %d\n", r);
		return 4;
	}
	while (sent < (int)sizeof(out)) {
		sqe = io_uring_get_sqe(&ring);
		io_uring_prep_send(sqe, t, out + sent, sizeof(out) - sent, 0);
		if ((r = run(sqe)) <= 0) {
			fprintf(stderr, "send: %d\n", r);
			return 5;
		}
		sent += r;
	}
	shutdown(t, SHUT_WR);
	for (;;) {
		sqe = io_uring_get_sqe(&ring);
		io_uring_prep_recv(sqe, t, in, sizeof(in), 0);
		if ((r = run(sqe)) < 0) {
			fprintf(stderr, "recv: %d\n", r);
			return 6;
		}
		if (r == 0)
			break;
		got += r;
	}
	close(t);

	u = socket(AF_INET, SOCK_DGRAM, 0);
	for (int i = 0; i < 3; i++) {
		memset(&msg, 0, sizeof(msg));
		iov.iov_base = dgram;
		iov.iov_len = sizeof(dgram);
		msg.msg_name = &ua;
		msg.msg_namelen = sizeof(ua);
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		sqe = io_uring_get_sqe(&ring);
		io_uring_prep_sendmsg(sqe, u, &msg, 0);
		if ((r = run(sqe)) != (int)sizeof(dgram)) {
			fprintf(stderr, "sendmsg: %d\n", r);
			return 7;
		}
	}
	close(u);
	io_uring_queue_exit(&ring);
	printf("%d %ld\n", getpid(), got);
	return 0;
}
"""

UDP_SINK_PY = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    s.recvfrom(2048)
"""


@pytest.mark.parametrize("mode", ["async", "sqpoll"])
def test_io_uring(
    veth: VethPair,
    collectors: Callable[..., Collector],
    procs: Callable[..., Started],
    tmp_path: Path,
    mode: str,
) -> None:
    """TCP connect/send/recv and UDP sendmsg done by io_uring's kernel threads (io-wq
    workers, the SQ polling thread): the flows are the submitting process's, named after it."""
    if not Path("/usr/include/liburing.h").exists():
        pytest.skip("needs liburing's headers (Debian package liburing-dev)")
    exe = str(compile_c(tmp_path, "nwt-uring", URING_C, "-luring"))
    nft = Nft(
        veth.b,
        "inet",
        {
            "orig": ("output", "tcp dport 9031"),
            "resp": ("input", "tcp sport 9031"),
            "uorig": ("output", "udp dport 9032"),
            "uresp": ("input", "udp sport 9032"),
        },
    )
    procs(veth.a, sys.executable, "-c", TCP_SINK_PY, "9031").wait_line("ready")
    procs(veth.a, sys.executable, "-c", UDP_SINK_PY, "9032").wait_line("ready")
    c = collectors(netns=netns_inode(veth.b))
    prog = procs(veth.b, exe, mode, veth.a4, "9031", "9032")
    prog.wait()
    assert prog.out == [f"{prog.pid} 5000"]
    c.wait_for(lambda e: e.event == EventType.END and e.dport in (9031, 9032), count=2)
    c.stop()
    counted = nft.read()
    tnew, tend = flows_of(c, lambda e: e.dport == 9031)
    unew, uend = flows_of(c, lambda e: e.dport == 9032)
    for new in (tnew, unew):
        assert (new.pid, new.comm, new.direction) == (prog.pid, "nwt-uring", Direction.OUT)
    assert tend.orig_bytes > 10000 and tend.resp_bytes > 5000
    assert_bytes(tend, counted)
    assert (uend.orig_pkts, uend.orig_bytes) == (3, 3 * (28 + 50))
    assert_bytes(uend, {"orig": counted["uorig"], "resp": counted["uresp"]})


# --------------------------------------------------------------------------- containers
CONTAINED_PY = r"""
import os, socket, sys
# pid 1 of its own pid namespace; /proc is the host's, so /proc/self names its host pid
print(os.getpid(), os.readlink("/proc/self"), open("/proc/self/comm").read().strip(), flush=True)
input()  # until it is in the container's cgroup
t = socket.create_connection((sys.argv[1], 9041))
t.sendall(b"c" * 20000)
t.shutdown(socket.SHUT_WR)
while t.recv(65536):
    pass
t.close()
print("done", flush=True)
input()  # stays (with its cgroup) until told
"""


def test_container_process_seen_from_the_host(
    veth: VethPair,
    collectors: Callable[..., Collector],
    procs: Callable[..., Started],
) -> None:
    """A process in its own network and pid namespaces and a container's cgroup, watched
    with all_netns=True: its flow carries its namespace, its host pid and the container."""
    from netwarden.cgroup2 import cgroup2_root

    cid = secrets.token_hex(32)
    cg = Path(cgroup2_root()) / f"nwt-docker-{cid}.scope"
    cg.mkdir()
    try:
        nft = Nft(
            veth.b,
            "inet",
            {"orig": ("output", "tcp dport 9041"), "resp": ("input", "tcp sport 9041")},
        )
        procs(veth.a, sys.executable, "-c", TCP_SINK_PY, "9041").wait_line("ready")
        every = collectors(all_netns=True)
        box = procs(
            veth.b, "unshare", "--pid", "--fork", "--kill-child",
            sys.executable, "-c", CONTAINED_PY, veth.a4,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not box.out and time.monotonic() < deadline:
            time.sleep(0.05)
        assert box.out, box.err
        inner, host_pid, comm = box.out[0].split()
        assert inner == "1"
        # `ip netns exec` hides the cgroup mounts from the box: it is put in from here
        (cg / "cgroup.procs").write_text(host_pid)
        assert box.popen.stdin is not None
        box.popen.stdin.write("go\n")
        box.popen.stdin.flush()
        box.wait_line("done")
        mine = netns_inode(veth.b)
        (end,) = every.wait_for(
            lambda e: e.event == EventType.END and e.netns == mine and e.dport == 9041
        )
        (new,) = every.matching(lambda e: e.event == EventType.NEW and e.flow == end.flow)
        assert (new.pid, new.comm, new.container) == (int(host_pid), comm, cid)
        assert new.direction == Direction.OUT and new.attribution == Attribution.KERNEL
        assert_bytes(end, nft.read())
    finally:
        for p in (cg / "cgroup.procs").read_text().split():
            os.kill(int(p), 9)
        deadline = time.monotonic() + 5
        while True:
            try:
                cg.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


# --------------------------------------------------------------------------- helpers' checks
def test_nft_counts_what_it_is_told(veth: VethPair) -> None:
    """The comparison's other side: the counters count exactly the matched packets."""
    nft = Nft(veth.b, "inet", {"orig": ("output", "icmp type echo-request")})
    veth.b.run("ping", "-c", "2", "-i", "0.05", veth.a4)
    assert nft.read() == {"orig": (2, 2 * 84)}
