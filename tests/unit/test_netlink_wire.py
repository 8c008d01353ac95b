"""wire/netlink.py on real kernel messages (tests/data/netlink_*.bin, recorded by
tests/data/record_netlink.py in throw-away namespaces), plus truncated and hostile variants."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwarden.wire import netlink as nl

DATA = Path(__file__).resolve().parents[1] / "data"


def datagrams(name: str) -> list[bytes]:
    data = (DATA / name).read_bytes()
    out = []
    off = 0
    while off < len(data):
        (n,) = struct.unpack_from("<I", data, off)
        out.append(data[off + 4 : off + 4 + n])
        off += 4 + n
    return out


META = json.loads((DATA / "netlink_record.json").read_text())


def ct_entries(name: str) -> list[tuple[nl.NlMsg, nl.CtEntry]]:
    out = []
    for d in datagrams(name):
        msgs, ok = nl.split_messages(d)
        assert ok
        for m in msgs:
            e = nl.decode_ct(m)
            if e is not None:
                out.append((m, e))
    return out


# --------------------------------------------------------------------------- ctnetlink
def test_ct_events_new_update_destroy() -> None:
    entries = [e for _m, e in ct_entries("netlink_ct_events.bin")]
    (l4, lp4), (r4, rp4) = META["tcp4"]
    tcp4 = [e for e in entries if e.orig.src == socket.inet_aton(l4) and e.orig.sport == lp4]
    assert tcp4[0].created and not tcp4[0].destroyed
    assert tcp4[0].orig.proto == 6 and tcp4[0].family == nl.AF_INET
    assert tcp4[0].orig.dst == socket.inet_aton(r4) and tcp4[0].orig.dport == rp4
    assert tcp4[0].reply is not None
    assert tcp4[0].reply.src == socket.inet_aton(r4) and tcp4[0].reply.dport == lp4
    assert tcp4[0].tcp_state == 1  # SYN_SENT
    # NEW events carry no counters; DESTROY carries counters and timestamps
    assert tcp4[0].orig_pkts is None
    ids = {e.ct_id for e in tcp4}
    assert len(ids) == 1 and None not in ids
    end = tcp4[-1]
    assert end.destroyed
    assert end.orig_pkts and end.orig_bytes and end.reply_pkts and end.reply_bytes
    assert end.orig_bytes >= 40 * end.orig_pkts
    assert end.start_ns and end.stop_ns and end.stop_ns > end.start_ns
    updates = [e for e in tcp4 if not e.created and not e.destroyed]
    assert [e.tcp_state for e in updates][:2] == [2, 3]  # SYN_RECV, ESTABLISHED


def test_ct_events_ipv6_udp_icmp() -> None:
    entries = [e for _m, e in ct_entries("netlink_ct_events.bin")]
    (l6, lp6), _ = META["tcp6"]
    v6 = [e for e in entries if e.family == nl.AF_INET6]
    assert v6 and all(e.orig.src == socket.inet_pton(socket.AF_INET6, l6) for e in v6)
    assert v6[0].orig.sport == lp6
    udp = [e for e in entries if e.orig.proto == 17]
    assert udp[0].created and udp[0].orig.dport == 5353
    assert udp[-1].destroyed and udp[-1].orig_bytes == 33  # 20 + 8 + "hello"
    icmp = [e for e in entries if e.orig.proto == 1]
    assert icmp[0].orig.sport is None and icmp[0].orig.icmp_id == 0x4E57
    assert icmp[0].orig.icmp_type == 8


def test_ct_dump_rows_and_done() -> None:
    rows = ct_entries("netlink_ct_dump.bin")
    assert len(rows) == 4
    for m, e in rows:
        assert m.flags & nl.NLM_F_MULTI
        assert not e.created and not e.destroyed
        assert e.orig_pkts is not None and e.start_ns and e.stop_ns is None
    last = nl.split_messages(datagrams("netlink_ct_dump.bin")[-1])[0][-1]
    assert last.type == nl.NLMSG_DONE


# --------------------------------------------------------------------------- sock_diag
def test_sockdiag_answers() -> None:
    answers = [nl.split_messages(d)[0] for d in datagrams("netlink_sockdiag.bin")]
    tcp = nl.decode_inet_diag(answers[0][0].payload)
    assert tcp is not None
    (l4, lp4), (r4, rp4) = META["tcp4"]
    assert (tcp.src, tcp.sport, tcp.dst, tcp.dport) == (
        socket.inet_aton(l4),
        lp4,
        socket.inet_aton(r4),
        rp4,
    )
    assert tcp.inode == META["tcp4_inode"] and tcp.uid == META["uid"]
    assert tcp.state == 1 and tcp.cgroup_id is not None
    udp = nl.decode_inet_diag(answers[1][0].payload)
    assert udp is not None and udp.inode == META["udp_inode"]
    miss = answers[2][0]
    assert miss.type == nl.NLMSG_ERROR and nl.nlmsg_error(miss.payload) == 2  # ENOENT
    listeners = [nl.decode_inet_diag(m.payload) for a in answers[3:] for m in a if m.type == 20]
    assert any(s is not None and s.sport == META["listen_port"] for s in listeners)
    assert all(s is not None and s.state == nl.TCP_LISTEN for s in listeners)


def test_inet_diag_request_layout() -> None:
    req = nl.inet_diag_request(
        7, nl.AF_INET, 17, src=b"\x0a\0\0\1", sport=53, dst=b"\x0a\0\0\2", dport=4000
    )
    msgs, ok = nl.split_messages(req)
    assert ok and len(msgs) == 1 and msgs[0].type == nl.SOCK_DIAG_BY_FAMILY
    assert msgs[0].flags == nl.NLM_F_REQUEST and msgs[0].seq == 7
    body = msgs[0].payload
    assert len(body) == 56  # inet_diag_req_v2
    assert body[0] == nl.AF_INET and body[1] == 17
    assert struct.unpack_from("!HH", body, 8) == (53, 4000)
    assert bytes(body[12:16]) == b"\x0a\0\0\1" and bytes(body[28:32]) == b"\x0a\0\0\2"
    assert bytes(body[48:56]) == nl.INET_DIAG_NOCOOKIE
    dump = nl.split_messages(nl.inet_diag_request(1, nl.AF_INET6, 6, dump=True))[0][0]
    assert dump.flags & nl.NLM_F_DUMP == nl.NLM_F_DUMP


# --------------------------------------------------------------------------- nfqueue
def test_nfqueue_packets() -> None:
    pkts = []
    for d in datagrams("netlink_nfqueue.bin"):
        for m in nl.split_messages(d)[0]:
            p = nl.decode_nfq_packet(m)
            assert p is not None
            pkts.append(p)
    v4, v6 = pkts
    for p in pkts:
        assert p.queue == 4799 and p.uid == META["uid"] and p.gid is not None
        assert p.hook == 3  # NF_INET_LOCAL_OUT
        assert p.outdev is not None
    t4 = nl.five_tuple(v4.payload)
    t6 = nl.five_tuple(v6.payload)
    assert t4 is not None and t4.family == 4 and t4.proto == 6 and t4.dport == 8080
    assert t6 is not None and t6.family == 6 and t6.proto == 6 and t6.dport == 8080
    assert v4.hw_protocol == 0x0800 and v6.hw_protocol == 0x86DD
    assert v4.packet_id != v6.packet_id


def test_nfqueue_requests() -> None:
    bind = nl.split_messages(nl.nfq_cmd(1, 300, nl.NFQNL_CFG_CMD_BIND))[0][0]
    assert bind.type == nl.NFQ_CONFIG_TYPE and bind.flags & nl.NLM_F_ACK
    assert nl.NFGENMSG.unpack_from(bind.payload, 0) == (0, 0, 300)
    a = nl.attrs(bind.payload, 4)
    s, _e = a[nl.NFQA_CFG_CMD]
    assert bind.payload[s] == nl.NFQNL_CFG_CMD_BIND
    v = nl.split_messages(nl.nfq_verdict(2, 300, 77, nl.NF_ACCEPT, mark=5))[0][0]
    a = nl.attrs(v.payload, 4)
    s, _e = a[nl.NFQA_VERDICT_HDR]
    assert struct.unpack_from("!II", v.payload, s) == (nl.NF_ACCEPT, 77)
    s, _e = a[nl.NFQA_MARK]
    assert struct.unpack_from("!I", v.payload, s) == (5,)
    p = nl.split_messages(nl.nfq_params(3, 300, maxlen=10))[0][0]
    a = nl.attrs(p.payload, 4)
    assert set(a) >= {nl.NFQA_CFG_PARAMS, nl.NFQA_CFG_QUEUE_MAXLEN, nl.NFQA_CFG_FLAGS}


def test_ct_get_request_round_trips_the_tuple() -> None:
    _m, e = ct_entries("netlink_ct_events.bin")[0]
    req = nl.split_messages(nl.ct_get_request(5, e.orig, e.zone))[0][0]
    assert req.type == nl.CT_GET_TYPE
    # the request's tuple decodes back to the entry's
    again = nl.decode_ct_payload(nl.IPCTNL_MSG_CT_NEW, 0, req.payload)
    assert again is not None and again.orig == e.orig


def test_quick_counters_match_the_full_decode() -> None:
    for m, e in ct_entries("netlink_ct_events.bin") + ct_entries("netlink_ct_dump.bin"):
        q = nl.decode_ct_counters(m.payload)
        assert q is not None
        assert (q.ct_id, q.orig_pkts, q.orig_bytes, q.reply_pkts, q.reply_bytes) == (
            e.ct_id, e.orig_pkts, e.orig_bytes, e.reply_pkts, e.reply_bytes,
        )  # fmt: skip
        assert (q.start_ns, q.stop_ns, q.tcp_state) == (e.start_ns, e.stop_ns, e.tcp_state)


def test_event_filter_program_shape() -> None:
    prog = nl.ct_event_filter()
    assert prog[-1] == (0x06, 0, 0, 0xFFFFFFFF) and prog[-2] == (0x06, 0, 0, 0)
    for i, (code, jt, jf, _k) in enumerate(prog):
        if code & 0x07 == 0x05:  # jumps stay inside the program
            assert i + 1 + jt < len(prog) and i + 1 + jf < len(prog)
    assert len(nl.bpf_program(prog)) == 8 * len(prog)


def test_five_tuple_edge_cases() -> None:
    assert nl.five_tuple(b"") is None
    assert nl.five_tuple(b"\x45" + bytes(10)) is None
    # IPv4 non-first fragment: no ports
    frag = bytearray(28)
    frag[0] = 0x45
    frag[6:8] = struct.pack("!H", 10)
    frag[9] = 17
    t = nl.five_tuple(bytes(frag))
    assert t is not None and t.sport is None
    # IPv6 with a hop-by-hop header before UDP
    v6 = bytearray(40 + 8 + 8)
    v6[0] = 0x60
    v6[6] = 0  # hop-by-hop
    v6[40] = 17
    v6[41] = 0
    v6[48:52] = struct.pack("!HH", 1234, 53)
    t = nl.five_tuple(bytes(v6))
    assert t is not None and (t.proto, t.sport, t.dport) == (17, 1234, 53)


# --------------------------------------------------------------------------- hostile input
ALL = [
    d
    for name in (
        "netlink_ct_events.bin",
        "netlink_ct_dump.bin",
        "netlink_sockdiag.bin",
        "netlink_nfqueue.bin",
    )
    for d in datagrams(name)
]


def decode_everything(data: bytes) -> None:
    msgs, _ok = nl.split_messages(data)
    for m in msgs:
        nl.decode_ct(m)
        nl.decode_nfq_packet(m)
        nl.decode_inet_diag(m.payload)
        nl.nlmsg_error(m.payload)
        nl.decode_ct_payload(nl.IPCTNL_MSG_CT_DELETE, 0, m.payload)
        nl.decode_ct_counters(m.payload)
    nl.five_tuple(data)


@pytest.mark.parametrize("index", range(len(ALL)))
def test_every_truncation_never_raises(index: int) -> None:
    d = ALL[index]
    for cut in range(len(d)):
        decode_everything(d[:cut])


def test_truncated_attribute_keeps_what_came_before() -> None:
    m, e = ct_entries("netlink_ct_events.bin")[-1]
    assert e.destroyed
    raw = bytes(m.payload)
    # lengthen the last attribute beyond the message: the walk stops there
    a = nl.attrs(raw, 4)
    last_start = max(s for s, _e in a.values()) - 4
    bad = bytearray(raw)
    bad[last_start : last_start + 2] = struct.pack("=H", 0xFFF0)
    got = nl.decode_ct_payload(nl.IPCTNL_MSG_CT_DELETE, 0, bytes(bad))
    assert got is not None and got.orig == e.orig


def test_bit_flips_never_raise() -> None:
    for d in ALL:
        for i in range(len(d)):
            for bit in (0x01, 0x80, 0xFF):
                b = bytearray(d)
                b[i] ^= bit
                decode_everything(bytes(b))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    decode_everything(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL), st.integers(0, 2000), st.binary(min_size=1, max_size=16))
def test_spliced_garbage_never_raises(d: bytes, at: int, junk: bytes) -> None:
    at %= len(d)
    decode_everything(d[:at] + junk + d[at + len(junk) :])
