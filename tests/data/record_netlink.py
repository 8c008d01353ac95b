"""Record real netlink messages into tests/data/netlink_*.bin (run once, as root).

    sudo .venv/bin/python tests/data/record_netlink.py

Everything happens in two throw-away network namespaces (``nwt-rec-*``) joined by a veth
pair, deleted at the end. Files are sequences of datagrams, each as a little-endian u32
length and the bytes the kernel sent:

- ``netlink_ct_events.bin``: ctnetlink NEW/UPDATE/DESTROY events of a TCP connection
  (IPv4 and IPv6), a UDP exchange and a ping, with accounting and timestamps on.
- ``netlink_ct_dump.bin``: the answer to a conntrack table dump (ending with NLMSG_DONE).
- ``netlink_sockdiag.bin``: sock_diag answers: an exact TCP lookup, an exact UDP lookup,
  a miss (NLMSG_ERROR ENOENT) and a dump of listening sockets.
- ``netlink_nfqueue.bin``: NFQUEUE packet messages of held TCP SYNs (IPv4 and IPv6) with
  conntrack and uid/gid attributes.
- ``netlink_record.json``: what the recording knew (addresses, ports, uids) for the tests.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from netwarden.capture.netlink_socket import NetlinkSocket  # noqa: E402
from netwarden.wire import netlink as nl  # noqa: E402


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def _setns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    os.setns(fd, os.CLONE_NEWNET) if hasattr(os, "setns") else _libc_setns(fd)
    os.close(fd)


def _libc_setns(fd: int) -> None:
    import ctypes

    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def _save(name: str, datagrams: list[bytes]) -> None:
    with open(HERE / name, "wb") as f:
        for d in datagrams:
            f.write(struct.pack("<I", len(d)) + d)
    print(f"{name}: {len(datagrams)} datagrams, {sum(map(len, datagrams))} bytes")


def _drain(sock: NetlinkSocket, seconds: float) -> list[bytes]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if sock.wait(0.05):
            d = sock.recv(block=False)
            if d is not None:
                out.append(bytes(d))
    return out


def main() -> None:
    a, b = f"nwt-rec-{secrets.token_hex(3)}", f"nwt-rec-{secrets.token_hex(3)}"
    meta: dict[str, object] = {}
    _ip("netns", "add", a)
    _ip("netns", "add", b)
    try:
        _ip("link", "add", "nwra", "netns", a, "type", "veth", "peer", "name", "nwrb", "netns", b)
        ends = ((a, "nwra", "10.99.0.1", "fd00:99::1"), (b, "nwrb", "10.99.0.2", "fd00:99::2"))
        for ns, ifn, v4, v6 in ends:
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", ifn)
            _ip("-n", ns, "addr", "add", f"{v6}/64", "dev", ifn, "nodad")
            _ip("-n", ns, "link", "set", ifn, "up")
        time.sleep(0.5)
        server = subprocess.Popen(
            ["ip", "netns", "exec", a, sys.executable, "-c", _SERVER], stdout=subprocess.PIPE
        )
        assert server.stdout is not None
        server.stdout.readline()
        _setns(b)
        for name, value in (("nf_conntrack_acct", "1"), ("nf_conntrack_timestamp", "1")):
            Path(f"/proc/sys/net/netfilter/{name}").write_text(value)
        subprocess.run(
            ["nft", "-f", "-"],
            input=(
                "table inet rec {\n chain o {\n"
                " type filter hook output priority 0; ct state new counter\n }\n}\n"
            ),
            text=True,
            check=True,
        )
        ev = NetlinkSocket(nl.NETLINK_NETFILTER, rcvbuf=1 << 20)
        for g in (1, 2, 3):
            ev.join(g)
        # ---- traffic: TCP v4 and v6 (kept open for the sock_diag answers), UDP, ping
        t4 = socket.create_connection(("10.99.0.1", 8080))
        t4.sendall(b"GET / HTTP/1.0\r\n\r\n")
        t4.recv(100)
        t6 = socket.create_connection(("fd00:99::1", 8080))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"hello", ("10.99.0.1", 5353))
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as icmp:
            echo = struct.pack("!BBHHH", 8, 0, 0, 0x4E57, 1) + b"netwardn"
            csum = sum(struct.unpack(f"!{len(echo) // 2}H", echo + b"\0" * (len(echo) % 2)))
            csum = (csum >> 16) + (csum & 0xFFFF)
            csum = ~(csum + (csum >> 16)) & 0xFFFF
            icmp.sendto(echo[:2] + struct.pack("!H", csum) + echo[4:], ("10.99.0.1", 0))
            icmp.settimeout(1)
            icmp.recv(100)
        meta["tcp4"] = [t4.getsockname()[:2], t4.getpeername()[:2]]
        meta["tcp6"] = [t6.getsockname()[:2], t6.getpeername()[:2]]
        meta["udp"] = [u.getsockname()[:2], ["10.99.0.1", 5353]]
        meta["tcp4_inode"] = os.fstat(t4.fileno()).st_ino
        meta["udp_inode"] = os.fstat(u.fileno()).st_ino
        meta["uid"] = os.getuid()
        events = _drain(ev, 0.5)
        # ---- a dump of the table (while the TCP connections are open)
        q = NetlinkSocket(nl.NETLINK_NETFILTER)
        q.send(nl.ct_dump_request(7))
        dump = []
        while True:
            d = q.recv()
            assert d is not None
            dump.append(bytes(d))
            if any(m.type == nl.NLMSG_DONE for m in nl.split_messages(d)[0]):
                break
        # ---- sock_diag
        sd = NetlinkSocket(nl.NETLINK_SOCK_DIAG)
        answers = []
        (l4, lp4), (r4, rp4) = meta["tcp4"]  # type: ignore[misc]
        (lu, lpu), (ru, rpu) = meta["udp"]  # type: ignore[misc]
        reqs = [
            nl.inet_diag_request(
                1,
                nl.AF_INET,
                6,
                src=socket.inet_aton(l4),
                sport=lp4,
                dst=socket.inet_aton(r4),
                dport=rp4,
            ),
            nl.inet_diag_request(
                2,
                nl.AF_INET,
                17,
                src=socket.inet_aton(ru),
                sport=rpu,
                dst=socket.inet_aton(lu),
                dport=lpu,
            ),
            nl.inet_diag_request(
                3,
                nl.AF_INET,
                6,
                src=socket.inet_aton("10.99.0.2"),
                sport=1,
                dst=socket.inet_aton("10.99.0.1"),
                dport=1,
            ),
        ]
        for r in reqs:
            sd.send(r)
            d = sd.recv()
            assert d is not None
            answers.append(bytes(d))
        with socket.socket(socket.AF_INET6) as lst:
            lst.bind(("::", 0))
            lst.listen()
            meta["listen_port"] = lst.getsockname()[1]
            sd.send(nl.inet_diag_request(4, nl.AF_INET6, 6, states=1 << 10, dump=True))
            while True:
                d = sd.recv()
                assert d is not None
                answers.append(bytes(d))
                if any(m.type == nl.NLMSG_DONE for m in nl.split_messages(d)[0]):
                    break
        # ---- the end of the connections: DESTROY and TCP state updates
        t4.close()
        t6.close()
        u.close()
        time.sleep(0.2)
        flush = nl.nlmsg(
            nl.CT_DELETE_TYPE, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 9, nl.NFGENMSG.pack(0, 0, 0)
        )
        q.request(flush, 9, what="flush")  # every entry destroyed: DESTROY events
        events += _drain(ev, 0.5)
        # ---- nfqueue: hold two SYNs
        queue = 4799
        nq = NetlinkSocket(nl.NETLINK_NETFILTER)
        s1 = nq.next_seq()
        nq.request(nl.nfq_cmd(s1, queue, nl.NFQNL_CFG_CMD_BIND), s1, what="bind")
        s2 = nq.next_seq()
        flags = nl.NFQA_CFG_F_FAIL_OPEN | nl.NFQA_CFG_F_UID_GID
        nq.request(nl.nfq_params(s2, queue, maxlen=64, flags=flags), s2, what="params")
        for tool in ("iptables", "ip6tables"):
            rule = ["-p", "tcp", "--syn", "-j", "NFQUEUE", "--queue-num", str(queue)]
            subprocess.run([tool, "-A", "OUTPUT", *rule, "--queue-bypass"], check=True)
        held = []
        for host in ("10.99.0.1", "fd00:99::1"):
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            c = socket.socket(fam, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex((host, 8080))
            while True:
                r, _, _ = select.select([nq.sock], [], [], 2)
                assert r, "no packet queued"
                d = nq.recv()
                assert d is not None
                held.append(bytes(d))
                pkt = nl.decode_nfq_packet(nl.split_messages(d)[0][0])
                if pkt is not None:
                    nq.send(nl.nfq_verdict(nq.next_seq(), queue, pkt.packet_id))
                    break
            c.close()
        _save("netlink_ct_events.bin", events)
        _save("netlink_ct_dump.bin", dump)
        _save("netlink_sockdiag.bin", answers)
        _save("netlink_nfqueue.bin", held)
        (HERE / "netlink_record.json").write_text(json.dumps(meta, indent=1) + "\n")
        server.kill()
    finally:
        subprocess.run(["ip", "netns", "delete", a])
        subprocess.run(["ip", "netns", "delete", b])


_SERVER = """
import socket, threading
def tcp(fam, host):
    s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 8080)); s.listen()
    while True:
        c, _ = s.accept(); c.recv(100); c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nhi")
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.99.0.1", 5353))
    while True:
        d, a = s.recvfrom(100); s.sendto(d, a)
threading.Thread(target=tcp, args=(socket.AF_INET, "10.99.0.1"), daemon=True).start()
threading.Thread(target=tcp, args=(socket.AF_INET6, "fd00:99::1"), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

if __name__ == "__main__":
    main()
