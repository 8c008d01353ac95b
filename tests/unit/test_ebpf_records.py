"""The eBPF backend's record decoder, from records captured on a Linux 6.18 host.

The byte strings below were written by the kernel side (src/netwarden/bpf/netwarden.bpf.c)
and read from the ring buffer, the flush iterator and the datagram flow map; the tests check every
field, the mapping to events, and that truncated or hostile buffers fail cleanly.
"""

from __future__ import annotations

import re
import struct
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netwarden.capture.ebpf import find_object, make_event
from netwarden.cgroup2 import find_cgroup2, parse_mountinfo
from netwarden.errors import MissingCapability
from netwarden.events import Attribution, Direction, EventType, ProcessInfo, Proto, Source
from netwarden.wire import ebpf_records as R
from netwarden.wire.ebpf_records import (
    RECORD_SIZE,
    RecordError,
    address,
    decode_flow,
    decode_record,
    decode_records,
    decode_stats,
    flow_key,
)

HEADER = Path(__file__).resolve().parents[2] / "src" / "netwarden" / "bpf" / "netwarden.h"

# fmt: off
TCP_NEW_LOCAL6 = bytes.fromhex(
    "01060a020000f89e3d220000f9ffffef76830cca7a010000f101000000000000"
    "0200000000000000000000000000000000000000000000010000000000000000"
    "00000000000000011f5d00001f5d0000985c0000000000000000000000000000"
    "0100000000000000ac50a3c97a0100006375726c000000000000000000000000"
    "6375726c00000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000597a0cca7a010000597a0cca7a010000"
)

TCP_END_LOCAL6 = bytes.fromhex(
    "02060a020300f89e3d220000f9ffffef7ad069ca7a010000f101000000000000"
    "0200000000000000000000000000000000000000000000010000000000000000"
    "00000000000000011f5d00001f5d0000985c0000000000000000000000000000"
    "0100000000000000ac50a3c97a0100006375726c000000000000000000000000"
    "6375726c00000000000000000000000002020000000000004b06000000000000"
    "06000000000000000600000000000000597a0cca7a010000cbbb69ca7a010000"
)

PROBE_TCP_LOCAL4 = bytes.fromhex(
    "030602020d000100e2880000f9ffffef1dcb04d57a0100000000000000000000"
    "000000000000000000000000000000000000ffff7f0000010000000000000000"
    "0000ffff7f000001000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000003c00000000000000"
    "000000000000000001000000000000001dcb04d57a0100001dcb04d57a010000"
)

UDP_NEW_LOCAL4 = bytes.fromhex(
    "011102020a0067c4611e0000f9ffffefe10832e57a010000a011000000000000"
    "040000000000000000000000000000000000ffff7f0000010000000000000000"
    "0000ffff7f0000014b5d00004b5d0000985c0000000000000000000000000000"
    "0100000000000000f6717ed57a010000707974686f6e33000000000000000000"
    "707974686f6e3300000000000000000021000000000000000000000000000000"
    "0100000000000000000000000000000009ef31e57a01000009ef31e57a010000"
)

UDP_HIDDEN_IN4 = bytes.fromhex(
    "011102010b01611e67c40000f9ffffef446533e57a010000a111000000000000"
    "050000000000000000000000000000000000ffff7f0000010000000000000000"
    "0000ffff7f0000014b5d00004b5d0000985c0000000000000000000000000000"
    "0100000000000000f6717ed57a010000707974686f6e33000000000000000000"
    "707974686f6e3300000000000000000000000000000000002100000000000000"
    "00000000000000000100000000000000015c33e57a010000015c33e57a010000"
)

UDP_RELEASE = bytes.fromhex(
    "041102000c00000000000000f9ffffef746d5ce57a010000a111000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
)

TCP_ACCEPT_NO_OWNER4 = bytes.fromhex(
    "01060a0101029a1f709a0000510100f05539232ad40100001369000000000000"
    "010000000000000000000000000000000000ffff0a198e010000000000000000"
    "0000ffff0a198e0200000000000000000000000000000000ffffffff00000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000003c000000000000007000000000000000"
    "010000000000000002000000000000009583222ad4010000e42e232ad4010000"
)

TCP_ACCEPT_LISTENER4 = bytes.fromhex(
    "0106020101049b1fd8e50000510100f041c7892dd40100001469000000000000"
    "030000000000000000000000000000000000ffff0a198e010000000000000000"
    "0000ffff0a198e02347f0000347f0000237f0000000000000000000000000000"
    "0100000000000000b01b6a2ad4010000707974686f6e00ff0000000000000000"
    "707974686f6e00ffbe980082ffffffff3c000000000000007000000000000000"
    "01000000000000000200000000000000fa2c892dd401000028bd892dd4010000"
)

TCP_END_NO_OWNER4 = bytes.fromhex(
    "02060a0103029a1f709a0000510100f0788e1736d40100001369000000000000"
    "010000000000000000000000000000000000ffff0a198e010000000000000000"
    "0000ffff0a198e0200000000000000000000000000000000ffffffff00000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000a010000000000000c01000000000000"
    "040000000000000005000000000000009583222ad4010000bb501736d4010000"
)

TCP_FLUSH_FINAL4 = bytes.fromhex(
    "020602010f0c9b1fd8e50000510100f056c60f69d40100001469000000000000"
    "030000000000000000000000000000000000ffff0a198e010000000000000000"
    "0000ffff0a198e02347f0000347f0000237f0000000000000000000000000000"
    "0100000000000000b01b6a2ad4010000707974686f6e00ff0000000000000000"
    "707974686f6e00ffbe980082ffffffff7000000000000000ae00000000000000"
    "02000000000000000300000000000000fa2c892dd401000055e48a2dd4010000"
)

UDP_VALUE = bytes.fromhex(
    "347f0000347f0000237f00000000000000000000000000000100000000000000"
    "b01b6a2ad4010000707974686f6e00000000000000000000707974686f6e0000"
    "00000000000000001e0000000000000000000000000000000100000000000000"
    "000000000000000031c2272cd401000031c2272cd40100000200000000000000"
    "0000000000000000"
)
UDP_END_RELEASE4 = bytes.fromhex(
    "021102020c00dbe609000000f9ffffef75987908700200008978230000000000"
    "010000000000000000000000000000000000ffff7f0000010000000000000000"
    "0000ffff7f00000135130000351300002e130000000000000000000000000000"
    "0100000000000000b5085b08700200006e77742d756470310000000000000000"
    "6e77742d7564703100000000000000002d000000000000000000000000000000"
    "010000000000000000000000000000003d2e7708700200003d2e770870020000"
)

# an ICMP (ping) socket's echo flow (id 56776) to 10.2.4.1 and its end at the socket's
# release; a raw IPv6 socket's protocol-253 flow; a packet socket's UDP flow (SOCK_DGRAM);
# the flow table's key and value of the echo flow
ICMP_NEW_ECHO4 = bytes.fromhex(
    "010102000a50c8ddc8dd0000db0100f0f2d96f6c9b0300006b9d230000000000"
    "010000000000000000000000000000000000ffff0a0204020000000000000000"
    "0000ffff0a020401371c0000371c0000241c0000000000000000000000000000"
    "0100000000000000df5ece6a9b030000707974686f6e00000000000000000000"
    "707974686f6e000000000000000000001e000000000000000000000000000000"
    "0100000000000000000000000000000089a06f6c9b03000089a06f6c9b030000"
)

ICMP_END_ECHO4 = bytes.fromhex(
    "020102000c50c8ddc8dd0000db0100f0ebcd6f7e9b0300006b9d230000000000"
    "010000000000000000000000000000000000ffff0a0204020000000000000000"
    "0000ffff0a020401371c0000371c0000241c0000000000000000000000000000"
    "0100000000000000df5ece6a9b030000707974686f6e00000000000000000000"
    "707974686f6e000000000000000000001e000000000000001e00000000000000"
    "0100000000000000010000000000000089a06f6c9b030000ce7c716c9b030000"
)

RAW_NEW6 = bytes.fromhex(
    "01fd0a000a10000000000000db0100f0c47a4c869b03000010ab230000000000"
    "0200000000000000fd000002000400000000000000000002fd00000200040000"
    "0000000000000001401c0000401c0000241c0000000000000000000000000000"
    "0100000000000000a41374849b030000707974686f6e00000000000000000000"
    "707974686f6e0000000000000000000050000000000000000000000000000000"
    "01000000000000000000000000000000e4394c869b030000e4394c869b030000"
)

RAW_END6 = bytes.fromhex(
    "02fd0a000c10000000000000db0100f00d0baf869b03000010ab230000000000"
    "0200000000000000fd000002000400000000000000000002fd00000200040000"
    "0000000000000001401c0000401c0000241c0000000000000000000000000000"
    "0100000000000000a41374849b030000707974686f6e00000000000000000000"
    "707974686f6e00000000000000000000a000000000000000a000000000000000"
    "02000000000000000200000000000000e4394c869b030000b8b399869b030000"
)

PACKET_NEW4 = bytes.fromhex(
    "011102001120409c2f230000db0100f0a8eba8939b030000c0d0730000000080"
    "030000000000000000000000000000000000ffff0a0204020000000000000000"
    "0000ffff0a020401471c0000471c0000241c0000000000000000000000000000"
    "01000000000000004d7159929b030000707974686f6e00000000000000000000"
    "707974686f6e0000000000000000000043000000000000000000000000000000"
    "01000000000000000000000000000000cdd5a8939b030000cdd5a8939b030000"
)

ICMP_KEY = bytes.fromhex(
    "6b9d23000000000000000000000000000000ffff0a020401c8dd010000000000"
)

ICMP_VALUE = bytes.fromhex(
    "371c0000371c0000241c00000000000000000000000000000100000000000000"
    "df5ece6a9b030000707974686f6e00000000000000000000707974686f6e0000"
    "00000000000000001e000000000000001e000000000000000100000000000000"
    "010000000000000089a06f6c9b030000ce7c716c9b0300000100000000000000"
    "0050000000000000"
)
# fmt: on

ALL = {
    "TCP_NEW_LOCAL6": TCP_NEW_LOCAL6,
    "TCP_END_LOCAL6": TCP_END_LOCAL6,
    "PROBE_TCP_LOCAL4": PROBE_TCP_LOCAL4,
    "UDP_NEW_LOCAL4": UDP_NEW_LOCAL4,
    "UDP_HIDDEN_IN4": UDP_HIDDEN_IN4,
    "UDP_RELEASE": UDP_RELEASE,
    "UDP_END_RELEASE4": UDP_END_RELEASE4,
    "TCP_ACCEPT_NO_OWNER4": TCP_ACCEPT_NO_OWNER4,
    "TCP_ACCEPT_LISTENER4": TCP_ACCEPT_LISTENER4,
    "TCP_END_NO_OWNER4": TCP_END_NO_OWNER4,
    "TCP_FLUSH_FINAL4": TCP_FLUSH_FINAL4,
    "ICMP_NEW_ECHO4": ICMP_NEW_ECHO4,
    "ICMP_END_ECHO4": ICMP_END_ECHO4,
    "RAW_NEW6": RAW_NEW6,
    "RAW_END6": RAW_END6,
    "PACKET_NEW4": PACKET_NEW4,
}
WALL = 1_795_000_000_000_000_000 - 1_626_887_455_606  # makes TCP_NEW_LOCAL6.ts 1795000000.0


# --------------------------------------------------------------------------- decoding
def test_sizes() -> None:
    assert RECORD_SIZE == 192
    assert R.FLOW_KEY_SIZE == 32 and R.FLOW_SIZE == 136
    assert all(len(b) == RECORD_SIZE for b in ALL.values())


def test_tcp_connect_and_close_over_ipv6_loopback() -> None:
    new = decode_record(TCP_NEW_LOCAL6)
    assert (new.type, new.proto, new.af, new.dir, new.flags) == (R.REC_NEW, 6, 10, R.DIR_LOCAL, 0)
    assert new.hook_name == "sockops_connect"
    assert (address(new.laddr), new.lport) == (IPv6Address("::1"), 40696)
    assert (address(new.raddr), new.rport) == (IPv6Address("::1"), 8765)
    assert new.family == 6 and new.netns == 4026531833
    assert (new.cookie, new.flow) == (497, 2)
    assert new.ident == R.Ident(
        tgid=23839, tid=23839, ppid=23704, uid=0, gid=0, cgroup_id=1,
        start_boottime_ns=1626880561324, comm="curl", pcomm="curl",
    )  # fmt: skip
    assert new.counters.tx_pkts == new.counters.rx_pkts == 0
    end = decode_record(TCP_END_LOCAL6)
    assert (end.type, end.hook_name, end.flow, end.cookie) == (
        R.REC_END,
        "inet_sock_set_state",
        2,
        497,
    )
    assert (end.lport, end.rport) == (40696, 8765)
    c = end.counters
    assert (c.tx_bytes, c.rx_bytes, c.tx_pkts, c.rx_pkts) == (514, 1611, 6, 6)
    assert c.first_ns == new.counters.first_ns and c.last_ns == 1626893564875
    assert end.ident == new.ident


def test_udp_records() -> None:
    new = decode_record(UDP_NEW_LOCAL4)
    assert (new.type, new.proto, new.dir, new.hook_name) == (
        R.REC_NEW,
        17,
        R.DIR_LOCAL,
        "skb_egress",
    )
    assert (address(new.laddr), new.lport) == (IPv4Address("127.0.0.1"), 50279)
    assert (address(new.raddr), new.rport) == (IPv4Address("127.0.0.1"), 7777)
    assert new.family == 4
    assert new.ident is not None and new.ident.pcomm == "python3"
    assert (new.counters.tx_bytes, new.counters.tx_pkts) == (33, 1)  # 20 + 8 + b"hello"
    hidden = decode_record(UDP_HIDDEN_IN4)
    assert hidden.hidden and hidden.dir == R.DIR_IN and hidden.hook_name == "skb_ingress"
    assert (hidden.lport, hidden.rport) == (7777, 50279)
    rel = decode_record(UDP_RELEASE)
    assert (rel.type, rel.proto, rel.cookie, rel.flow) == (R.REC_RELEASE, 17, 4513, 0)
    assert rel.ident is None and rel.uid is None


def test_udp_end_at_socket_release() -> None:
    # a one-shot sender's datagram to 127.0.0.1:9, ended by the kernel when the socket went
    end = decode_record(UDP_END_RELEASE4)
    assert (end.type, end.proto, end.dir, end.hook_name) == (
        R.REC_END, 17, R.DIR_LOCAL, "sock_release",
    )  # fmt: skip
    assert (address(end.laddr), end.lport, address(end.raddr), end.rport) == (
        IPv4Address("127.0.0.1"), 59099, IPv4Address("127.0.0.1"), 9,
    )  # fmt: skip
    assert end.ident is not None and end.ident.pcomm == end.ident.comm == "nwt-udp1"
    c = end.counters
    assert (c.tx_pkts, c.tx_bytes, c.rx_pkts) == (1, 20 + 8 + len("netwarden-oneshot"), 0)
    ev = make_event(end, wall_offset_ns=0, flow_id="f", process=ProcessInfo(pid=end.ident.tgid))
    assert (ev.event, ev.direction, ev.orig_pkts, ev.resp_pkts) == (
        EventType.END, Direction.LOCAL, 1, 0,
    )  # fmt: skip
    assert ev.duration == 0.0


def test_accepted_connections() -> None:
    unknown = decode_record(TCP_ACCEPT_NO_OWNER4)
    # a dual-stack (AF_INET6) listener accepting IPv4: IPv4-mapped addresses are IPv4
    assert unknown.af == 10 and unknown.family == 4
    assert address(unknown.laddr) == IPv4Address("10.25.142.1") and unknown.lport == 8090
    assert address(unknown.raddr) == IPv4Address("10.25.142.2") and unknown.rport == 39536
    assert unknown.flags == R.F_NO_OWNER and unknown.ident is None and unknown.uid == 0
    # the handshake counted before the socket existed: SYN and ACK in, SYN-ACK out
    c = unknown.counters
    assert (c.rx_pkts, c.rx_bytes, c.tx_pkts, c.tx_bytes) == (2, 60 + 52, 1, 60)
    owned = decode_record(TCP_ACCEPT_LISTENER4)
    assert owned.flags == R.F_LISTENER and owned.ident is not None
    assert (owned.ident.tgid, owned.ident.pcomm) == (32564, "python")
    final = decode_record(TCP_FLUSH_FINAL4)
    assert final.flags == R.F_LISTENER | R.F_FINAL and final.hook_name == "flush"
    assert final.flow == owned.flow == 3


def test_probe() -> None:
    p = decode_record(PROBE_TCP_LOCAL4)
    assert (p.type, p.proto, p.dir, p.hook_name) == (R.REC_PROBE, 6, R.DIR_LOCAL, "tcp_send_reset")
    assert (address(p.raddr), p.rport, address(p.laddr), p.lport) == (
        IPv4Address("127.0.0.1"), 35042, IPv4Address("127.0.0.1"), 1,
    )  # fmt: skip
    assert p.ident is None and (p.counters.rx_pkts, p.counters.rx_bytes) == (1, 60)


def test_back_to_back_records() -> None:
    buf = TCP_FLUSH_FINAL4 + TCP_END_LOCAL6
    assert [r.flow for r in decode_records(buf)] == [3, 2]
    assert decode_records(b"") == []
    with pytest.raises(RecordError):
        decode_records(buf[:-1])
    assert decode_record(b"\0" * 7 + TCP_END_LOCAL6, 7).flow == 2


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_truncation_fails_cleanly(name: str) -> None:
    data = ALL[name]
    for n in range(RECORD_SIZE):
        with pytest.raises(RecordError):
            decode_record(data[:n])


def _patched(data: bytes, offset: int, value: int) -> bytes:
    b = bytearray(data)
    b[offset] = value
    return bytes(b)


@pytest.mark.parametrize(
    ("offset", "value"),
    [(0, 0), (0, 5), (0, 255), (2, 0), (2, 7), (3, 3), (3, 200)],
)
def test_hostile_header_fields_are_refused(offset: int, value: int) -> None:
    with pytest.raises(RecordError):
        decode_record(_patched(TCP_NEW_LOCAL6, offset, value))


def test_hostile_names_decode_without_nul_or_utf8() -> None:
    # comm at 72 + 40 = 112, pcomm at 128: sixteen bytes each, no terminating NUL
    b = bytearray(UDP_NEW_LOCAL4)
    b[112:128] = b"\xff\xfe\x1b[31m" + b"A" * 9
    b[128:144] = b"B" * 16
    ident = decode_record(bytes(b)).ident
    assert ident is not None
    assert ident.comm == "\ufffd\ufffd\x1b[31m" + "A" * 9 and ident.pcomm == "B" * 16


@given(st.binary(min_size=0, max_size=2 * RECORD_SIZE))
def test_fuzz_any_bytes(data: bytes) -> None:
    try:
        rec = decode_record(data)
    except RecordError:
        return
    assert rec.type in (R.REC_NEW, R.REC_END, R.REC_PROBE, R.REC_RELEASE)
    address(rec.laddr)
    address(rec.raddr)


@given(st.binary(min_size=RECORD_SIZE, max_size=RECORD_SIZE), st.sampled_from(sorted(ALL)))
def test_fuzz_body_of_valid_header(body: bytes, name: str) -> None:
    # any payload after a valid header decodes, and maps to an event if it is a flow
    data = ALL[name][:8] + body[8:]
    rec = decode_record(data)
    if rec.type != R.REC_RELEASE:
        ev = make_event(rec, wall_offset_ns=0, flow_id="x", process=ProcessInfo())
        assert ev.family in (4, 6)


def test_flow_map_key_and_value() -> None:
    raddr = b"\0" * 10 + b"\xff\xff" + bytes([10, 2, 4, 1])
    assert flow_key(0x239D6B, raddr, 56776, 1) == ICMP_KEY  # ICMP: the echo identifier
    with pytest.raises(ValueError):
        flow_key(1, b"\0" * 4, 9, 17)
    ident, c, flow, direction, flags = decode_flow(ICMP_VALUE)
    assert (ident.tgid, ident.pcomm) == (7223, "python")
    assert (c.tx_pkts, c.tx_bytes, c.rx_pkts, c.rx_bytes) == (1, 30, 1, 30)  # 20 + 8 + b"hi"
    assert (flow, direction, flags) == (1, R.DIR_OUT, R.F_RAW | R.F_ECHO)
    ident, c, flow, direction, flags = decode_flow(UDP_VALUE)  # a UDP flow's
    assert (ident.tgid, ident.pcomm) == (32564, "python")
    assert (c.tx_pkts, c.tx_bytes, c.rx_pkts) == (1, 30, 0)
    assert (flow, direction, flags) == (2, R.DIR_OUT, 0)
    with pytest.raises(RecordError):
        decode_flow(UDP_VALUE[:-1])


def test_icmp_raw_and_packet_socket_records() -> None:
    echo = decode_record(ICMP_NEW_ECHO4)
    assert (echo.type, echo.proto, echo.hook_name) == (R.REC_NEW, 1, "skb_egress")
    assert echo.flags == R.F_RAW | R.F_ECHO and echo.lport == echo.rport == 56776
    end = decode_record(ICMP_END_ECHO4)
    assert (end.type, end.hook_name, end.flow) == (R.REC_END, "sock_release", echo.flow)
    raw = decode_record(RAW_NEW6)
    assert (raw.proto, raw.family, raw.flags, raw.lport, raw.rport) == (253, 6, R.F_RAW, 0, 0)
    assert address(raw.raddr) == IPv6Address("fd00:2:4::1")
    pkt = decode_record(PACKET_NEW4)
    assert (pkt.proto, pkt.flags, pkt.hook_name) == (17, R.F_PACKET, "net_dev_queue")
    assert (pkt.lport, pkt.rport) == (40000, 9007)
    assert pkt.cookie == (1 << 63) | 0x73D0C0  # the packet socket's inode, top bit set
    assert pkt.counters.tx_bytes == 20 + 8 + 39


def test_flows_without_ports_have_null_ports() -> None:
    proc = ProcessInfo(pid=7223, comm="python")
    new = make_event(decode_record(ICMP_NEW_ECHO4), wall_offset_ns=0, flow_id="f", process=proc)
    assert (new.proto, new.ipproto, new.family, new.direction) == (Proto.ICMP, 1, 4, Direction.OUT)
    assert (str(new.src), new.sport, str(new.dst), new.dport) == (
        "10.2.4.2",
        None,
        "10.2.4.1",
        None,
    )
    end = make_event(decode_record(ICMP_END_ECHO4), wall_offset_ns=0, flow_id="f", process=proc)
    assert (end.event, end.orig_bytes, end.resp_bytes, end.orig_pkts, end.resp_pkts) == (
        EventType.END, 30, 30, 1, 1,
    )  # fmt: skip
    raw = make_event(decode_record(RAW_END6), wall_offset_ns=0, flow_id="g", process=proc)
    assert (raw.proto, raw.ipproto, raw.sport, raw.dport) == (Proto.IP, 253, None, None)
    assert (raw.orig_bytes, raw.resp_bytes) == (2 * 80, 2 * 80)
    pkt = make_event(decode_record(PACKET_NEW4), wall_offset_ns=0, flow_id="h", process=proc)
    assert (pkt.proto, pkt.sport, pkt.dport, pkt.attribution) == (
        Proto.UDP, 40000, 9007, Attribution.KERNEL,
    )  # fmt: skip


def test_per_cpu_counter() -> None:
    assert decode_stats(struct.pack("<3Q", 1, 2, 40), 3) == 43
    with pytest.raises(RecordError):
        decode_stats(b"\0" * 8, 2)


def test_start_ticks_match_proc_stat() -> None:
    ident = decode_record(TCP_NEW_LOCAL6).ident
    assert ident is not None
    assert ident.start_ticks(100) == 1626880561324 // 10_000_000 == 162688
    assert ident.start_ticks(1000) == 1626880


def test_header_constants_match() -> None:
    """The Python constants mirror netwarden.h."""
    text = HEADER.read_text()
    defs = {m[1]: int(m[2], 0) for m in re.finditer(r"#define (NW_\w+) (0x[0-9a-f]+|\d+)", text)}
    assert defs["NW_REC_NEW"] == R.REC_NEW and defs["NW_REC_END"] == R.REC_END
    assert defs["NW_REC_PROBE"] == R.REC_PROBE and defs["NW_REC_RELEASE"] == R.REC_RELEASE
    assert (defs["NW_DIR_OUT"], defs["NW_DIR_IN"], defs["NW_DIR_LOCAL"]) == (
        R.DIR_OUT, R.DIR_IN, R.DIR_LOCAL,
    )  # fmt: skip
    assert defs["NW_F_HIDDEN"] == R.F_HIDDEN and defs["NW_F_NO_OWNER"] == R.F_NO_OWNER
    assert defs["NW_F_LISTENER"] == R.F_LISTENER and defs["NW_F_FINAL"] == R.F_FINAL
    assert (defs["NW_F_RAW"], defs["NW_F_PACKET"], defs["NW_F_ECHO"]) == (
        R.F_RAW, R.F_PACKET, R.F_ECHO,
    )  # fmt: skip
    hooks = sorted((v, k) for k, v in defs.items() if k.startswith("NW_H_"))
    assert [v for v, _ in hooks] == list(range(len(R.HOOK_NAMES)))
    assert defs["NW_NHOOKS"] == len(R.HOOK_NAMES)
    assert (defs["NW_CTL_MODE"], defs["NW_CTL_SNAPSHOT"], defs["NW_CTL_FLUSH"]) == (
        R.CTL_MODE, R.CTL_SNAPSHOT, R.CTL_FLUSH,
    )  # fmt: skip
    assert (defs["NW_CTL_FLOWS"], defs["NW_CTL_WAKEUP"]) == (R.CTL_FLOWS, R.CTL_WAKEUP)
    assert defs["NW_NSTATS"] == len(R.STAT_NAMES)


# --------------------------------------------------------------------------- events
def test_outbound_event() -> None:
    proc = ProcessInfo(pid=23839, comm="curl")
    new = make_event(
        decode_record(TCP_NEW_LOCAL6), wall_offset_ns=WALL, flow_id="f-2", process=proc
    )
    assert new.ts == pytest.approx(1795000000.0)
    assert (new.event, new.proto, new.ipproto, new.family) == (EventType.NEW, Proto.TCP, 6, 6)
    assert new.direction == Direction.LOCAL
    assert (str(new.src), new.sport, str(new.dst), new.dport) == ("::1", 40696, "::1", 8765)
    assert new.duration is None and new.flow == "f-2" and new.netns == 4026531833
    assert (new.attribution, new.source, new.pid) == (Attribution.KERNEL, Source.EBPF, 23839)
    end = make_event(
        decode_record(TCP_END_LOCAL6), wall_offset_ns=WALL, flow_id="f-2", process=proc
    )
    assert end.event == EventType.END
    assert (end.orig_bytes, end.resp_bytes, end.orig_pkts, end.resp_pkts) == (514, 1611, 6, 6)
    assert end.duration == pytest.approx((1626893564875 - 1626887453273) / 1e9)


def test_inbound_event_swaps_ends_and_counters() -> None:
    rec = decode_record(TCP_ACCEPT_NO_OWNER4)
    ev = make_event(rec, wall_offset_ns=0, flow_id="f-1", process=ProcessInfo(uid=0))
    assert ev.direction == Direction.IN and ev.family == 4
    assert (str(ev.src), ev.sport) == ("10.25.142.2", 39536)
    assert (str(ev.dst), ev.dport) == ("10.25.142.1", 8090)
    assert (ev.orig_bytes, ev.orig_pkts, ev.resp_bytes, ev.resp_pkts) == (112, 2, 60, 1)
    assert ev.attribution == Attribution.NONE and ev.uid == 0 and ev.pid is None


def test_probe_event() -> None:
    ev = make_event(
        decode_record(PROBE_TCP_LOCAL4), wall_offset_ns=0, flow_id=None, process=ProcessInfo()
    )
    assert ev.event == EventType.PROBE and ev.direction == Direction.LOCAL
    assert (str(ev.src), ev.sport, str(ev.dst), ev.dport) == ("127.0.0.1", 35042, "127.0.0.1", 1)
    assert (ev.orig_pkts, ev.orig_bytes, ev.flow, ev.pid) == (1, 60, None, None)
    assert ev.to_dict()["attribution"] == "none"


# --------------------------------------------------------------------------- set-up helpers
HYBRID = """\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw,relatime shared:11 - cgroup cgroup rw,name=systemd
"""
V1_ONLY = """\
30 22 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
33 30 0:29 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu
"""
SUBTREE_THEN_ROOT = """\
40 30 0:27 /system.slice /mnt/sub rw,relatime - cgroup2 cgroup2 rw
41 30 0:27 / /mnt/with\\040space rw,relatime - cgroup2 none rw
garbage line without separator
"""


def test_mountinfo() -> None:
    assert find_cgroup2(HYBRID) == "/sys/fs/cgroup/unified"
    assert find_cgroup2(V1_ONLY) is None
    assert find_cgroup2(SUBTREE_THEN_ROOT) == "/mnt/with space"
    assert find_cgroup2(SUBTREE_THEN_ROOT.splitlines()[0]) == "/mnt/sub"
    mounts = parse_mountinfo(SUBTREE_THEN_ROOT)
    assert [(m.root, m.fstype, m.source) for m in mounts] == [
        ("/system.slice", "cgroup2", "cgroup2"),
        ("/", "cgroup2", "none"),
    ]


def test_find_object(tmp_path: Path) -> None:
    obj = tmp_path / "x.o"
    obj.write_bytes(b"\x7fELF")
    assert find_object(obj) == str(obj)
    with pytest.raises(MissingCapability, match=r"scripts/build-bpf\.sh") as exc:
        find_object(tmp_path / "missing.o")
    assert exc.value.exit_code == 3


def test_events_made_fast_are_ordinary_events() -> None:
    """make_event writes Event's slots directly (Event() costs ~5 µs): the result equals,
    hashes, copies and pickles like one made by the constructor."""
    import dataclasses
    import pickle

    from netwarden.capture import ebpf
    from netwarden.events import Event

    assert ebpf._FAST  # Event's fields are the ones the fast path writes
    proc = ProcessInfo(pid=23839, comm="curl")
    for raw in ALL.values():
        rec = decode_record(raw)
        if rec.type == R.REC_RELEASE:
            continue
        ev = make_event(rec, wall_offset_ns=WALL, flow_id="f-1", process=proc)
        same = Event(**{f.name: getattr(ev, f.name) for f in dataclasses.fields(Event)})
        assert ev == same and hash(ev) == hash(same) and ev.to_dict() == same.to_dict()
        assert dataclasses.replace(ev) == ev and pickle.loads(pickle.dumps(ev)) == ev
