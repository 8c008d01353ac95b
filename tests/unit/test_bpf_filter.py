"""Filter expressions compiled by libpcap, run in user space on hand-built packets."""

from __future__ import annotations

import ctypes.util
import struct

import pytest

from netwarden.capture import bpf_filter
from netwarden.capture.bpf_filter import (
    DLT_RAW,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    CompiledFilter,
    compile_filter,
    dlt_for_linktype,
)
from netwarden.errors import MissingCapability, UsageError

SRC4 = bytes([192, 0, 2, 1])
DST4 = bytes([198, 51, 100, 7])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")


def tcp(sport: int, dport: int, flags: int = 0x02, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(proto: int, l4: bytes, src: bytes = SRC4, dst: bytes = DST4) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, src, dst) + l4


def ipv6(nxt: int, l4: bytes, src: bytes = SRC6, dst: bytes = DST6) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), nxt, 64, src, dst) + l4


def ether(ethertype: int, payload: bytes) -> bytes:
    return bytes.fromhex("020000000002020000000001") + struct.pack("!H", ethertype) + payload


def arp() -> bytes:
    return ether(0x0806, struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + bytes(20))


def test_dlt_mapping() -> None:
    assert dlt_for_linktype(LINKTYPE_RAW) == DLT_RAW == 12
    assert dlt_for_linktype(LINKTYPE_ETHERNET) == 1
    assert dlt_for_linktype(228) == 228  # LINKTYPE_IPV4, same number as its DLT
    assert dlt_for_linktype(0x0ABC0065) == 12  # only the low 16 bits are the link type


def test_tcp_port_80_compiles_to_classic_bpf() -> None:
    f = compile_filter("tcp port 80", LINKTYPE_ETHERNET)
    assert isinstance(f, CompiledFilter)
    assert f.expression == "tcp port 80"
    assert len(f.instructions) > 5
    for code, jt, jf, k in f.instructions:
        assert 0 <= code < 0x10000 and 0 <= jt < 256 and 0 <= jf < 256 and 0 <= k < 2**32
    # the first instruction loads the ethertype (ldh [12]), the program ends in returns
    assert f.instructions[0] == (0x28, 0, 0, 12)
    assert f.instructions[-1] == (0x06, 0, 0, 0)
    assert (0x06, 0, 0, 262144) in f.instructions
    f.close()
    f.close()  # idempotent


def test_snaplen_is_the_accept_return_value() -> None:
    with compile_filter("ip", LINKTYPE_ETHERNET, snaplen=96) as f:
        assert (0x06, 0, 0, 96) in f.instructions


def test_tcp_port_80_matches() -> None:
    with compile_filter("tcp port 80", LINKTYPE_ETHERNET) as f:
        assert f.matches(ether(0x0800, ipv4(6, tcp(40000, 80))), 54)
        assert f.matches(ether(0x0800, ipv4(6, tcp(80, 40000))), 54)
        assert f.matches(ether(0x86DD, ipv6(6, tcp(40000, 80))), 74)
        assert not f.matches(ether(0x0800, ipv4(6, tcp(40000, 443))), 54)
        assert not f.matches(ether(0x0800, ipv4(17, udp(40000, 80))), 42)
        assert not f.matches(arp(), 42)
        # memoryviews (ring slices, file readers) work as well as bytes
        frame = bytearray(ether(0x0800, ipv4(6, tcp(1234, 80))))
        assert f.matches(memoryview(frame), len(frame))
        assert f.matches(memoryview(bytes(frame))[:], len(frame))


def test_ip6_and_udp_on_raw_ip() -> None:
    with compile_filter("ip6 and udp", LINKTYPE_RAW) as f:
        # raw IP: version nibble check instead of an ethertype
        assert f.instructions[0] == (0x30, 0, 0, 0)
        assert f.matches(ipv6(17, udp(5353, 5353, b"x")), 49)
        assert not f.matches(ipv6(6, tcp(1, 2)), 60)
        assert not f.matches(ipv4(17, udp(53, 53)), 28)


def test_raw_ip_v4_filter() -> None:
    with compile_filter("udp and dst port 53 and src host 192.0.2.1", LINKTYPE_RAW) as f:
        assert f.matches(ipv4(17, udp(40000, 53, b"q")), 29)
        assert not f.matches(ipv4(17, udp(40000, 53), src=DST4), 28)
        assert not f.matches(ipv4(17, udp(53, 40000)), 28)


def test_truncated_packet_does_not_match_and_does_not_crash() -> None:
    with compile_filter("tcp port 80", LINKTYPE_ETHERNET) as f:
        frame = ether(0x0800, ipv4(6, tcp(40000, 80)))
        ports_end = 14 + 20 + 4
        for cut in range(ports_end):
            assert not f.matches(frame[:cut], len(frame))
        assert f.matches(frame[:ports_end], len(frame))


def test_wirelen_is_what_len_and_greater_see() -> None:
    with compile_filter("greater 1000", LINKTYPE_RAW) as f:
        pkt = ipv4(17, udp(1, 2, b"x" * 100))
        assert not f.matches(pkt, len(pkt))
        assert f.matches(pkt, 1400)  # captured short, long on the wire


@pytest.mark.parametrize("expr", [None, "", "   "])
def test_empty_expression_accepts_everything(expr: str | None) -> None:
    f = compile_filter(expr, LINKTYPE_RAW, snaplen=1500)
    assert f.accepts_all
    assert f.instructions == [(0x06, 0, 0, 1500)]
    assert f.matches(b"", 0)
    assert f.matches(arp(), 42)


def test_bad_expression_is_a_usage_error_with_libpcaps_message() -> None:
    with pytest.raises(UsageError) as info:
        compile_filter("tcp prot 80", LINKTYPE_ETHERNET)
    err = info.value
    assert err.option == "filter"
    assert err.value == "tcp prot 80"
    assert err.exit_code == 2
    assert "syntax error" in str(err)
    assert str(err).startswith("filter 'tcp prot 80': ")
    assert "\n" not in str(err)


def test_expression_invalid_for_the_link_type() -> None:
    with pytest.raises(UsageError) as info:
        compile_filter("ether host 02:00:00:00:00:01", LINKTYPE_RAW)
    assert info.value.option == "filter"
    assert str(info.value) != "filter 'ether host 02:00:00:00:00:01': "


def test_closed_filter_refuses_to_match() -> None:
    f = compile_filter("udp", LINKTYPE_RAW)
    f.close()
    with pytest.raises(ValueError):
        f.matches(ipv4(17, udp(1, 2)), 28)


def test_missing_libpcap_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpf_filter, "_LIB_NAMES", ("libpcap-does-not-exist.so.9",))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    bpf_filter._libpcap.cache_clear()
    try:
        with pytest.raises(MissingCapability) as info:
            compile_filter("tcp", LINKTYPE_ETHERNET)
        assert "libpcap0.8" in str(info.value)
        assert info.value.exit_code == 3
        # an empty expression still works without libpcap
        assert compile_filter("", LINKTYPE_ETHERNET).accepts_all
    finally:
        bpf_filter._libpcap.cache_clear()
