"""netwarden.wire.packet on hand-built headers: every link type, every header feature, and
every truncation of sample packets."""

from __future__ import annotations

import struct

import pytest

from netwarden.wire.packet import (
    F_AUX,
    F_DPORT,
    F_DST,
    F_FAMILY,
    F_FLAGS,
    F_FRAG,
    F_FRAGID,
    F_L4OFF,
    F_LEN,
    F_PROTO,
    F_SPORT,
    F_SRC,
    MALFORMED,
    SUPPORTED_LINKTYPES,
    UnsupportedLinkType,
    decoder_for,
)

SRC4 = bytes([192, 0, 2, 1])
DST4 = bytes([198, 51, 100, 7])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db80000000000000000000000ff")
MAC_DST = bytes.fromhex("020000000001")
MAC_SRC = bytes.fromhex("020000000002")

# --------------------------------------------------------------------------- builders


def tcp(sport: int = 40000, dport: int = 443, flags: int = 0x02, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int = 5353, dport: int = 53, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(icmp_type: int, code: int = 0, ident: int = 0x1234, seq: int = 1) -> bytes:
    return struct.pack("!BBHHH", icmp_type, code, 0, ident, seq) + b"ping"


def ipv4(
    proto: int,
    payload: bytes,
    *,
    ident: int = 0x4242,
    frag: int = 0x4000,
    options: bytes = b"",
    total: int | None = None,
    version: int = 4,
    src: bytes = SRC4,
    dst: bytes = DST4,
) -> bytes:
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    if total is None:
        total = ihl * 4 + len(payload)
    head = struct.pack(
        "!BBHHHBBH4s4s", version << 4 | ihl, 0, total, ident, frag, 64, proto, 0, src, dst
    )
    return head + options + payload


def ipv6(
    nxt: int,
    payload: bytes,
    *,
    plen: int | None = None,
    version: int = 6,
    src: bytes = SRC6,
    dst: bytes = DST6,
) -> bytes:
    if plen is None:
        plen = len(payload)
    return struct.pack("!IHBB16s16s", version << 28, plen, nxt, 64, src, dst) + payload


def ext(nxt: int, body: bytes = b"\x00" * 6) -> bytes:
    """Hop-by-hop, routing or destination options header (length in 8-octet units)."""
    assert (len(body) + 2) % 8 == 0
    return bytes([nxt, (len(body) + 2) // 8 - 1]) + body


def frag6(nxt: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", nxt, 0, offset << 3 | int(more), ident)


def ah(nxt: int, icv: bytes = b"\x00" * 12) -> bytes:
    body = struct.pack("!HII", 0, 0x100, 7) + icv  # reserved, SPI, sequence
    return bytes([nxt, (len(body) + 2) // 4 - 2]) + body


def eth(ethertype: int, payload: bytes) -> bytes:
    return MAC_DST + MAC_SRC + struct.pack("!H", ethertype) + payload


def tag(tpid: int, vid: int, inner_type: int) -> bytes:
    """A VLAN tag as it follows the MAC addresses: TPID, TCI, then the inner type."""
    return struct.pack("!HHH", tpid, vid, inner_type)


def eth_tagged(tags: list[int], ethertype: int, payload: bytes) -> bytes:
    """Ethernet with stacked tags (outermost first), ending in ``ethertype``."""
    out = MAC_DST + MAC_SRC
    for i, tpid in enumerate(tags):
        out += struct.pack("!HH", tpid, 100 + i)
    return out + struct.pack("!H", ethertype) + payload


def eth_8023(llc: bytes) -> bytes:
    return MAC_DST + MAC_SRC + struct.pack("!H", len(llc)) + llc


def snap(ethertype: int, payload: bytes, oui: bytes = b"\x00\x00\x00") -> bytes:
    return b"\xaa\xaa\x03" + oui + struct.pack("!H", ethertype) + payload


def sll(proto: int, payload: bytes, hatype: int = 1) -> bytes:
    return struct.pack("!HHH8sH", 0, hatype, 6, MAC_SRC + b"\0\0", proto) + payload


def sll2(proto: int, payload: bytes, hatype: int = 1) -> bytes:
    return struct.pack("!HHIHBB8s", proto, 0, 3, hatype, 0, 6, MAC_SRC + b"\0\0") + payload


def pppoe(ppp_proto: bytes, payload: bytes, code: int = 0) -> bytes:
    return (
        struct.pack("!BBHH", 0x11, code, 0x2A, len(ppp_proto) + len(payload)) + ppp_proto + payload
    )


def dec(linktype: int, buf: bytes, wirelen: int | None = None) -> object:
    return decoder_for(linktype)(buf, len(buf) if wirelen is None else wirelen)


def check_shape(buf: bytes | memoryview, r: object) -> None:
    """The invariants docs/internals.md promises for any result."""
    if r is None or r == MALFORMED:
        assert r is None or (type(r) is int and r == 0)
        return
    assert type(r) is tuple and len(r) == 12
    family = r[F_FAMILY]
    assert family in (4, 6)
    assert 0 <= r[F_PROTO] <= 255
    for addr in (r[F_SRC], r[F_DST]):
        assert type(addr) is bytes and len(addr) == (4 if family == 4 else 16)
    assert (r[F_SPORT] is None) == (r[F_DPORT] is None)
    if r[F_SPORT] is not None:
        assert 0 <= r[F_SPORT] <= 0xFFFF and 0 <= r[F_DPORT] <= 0xFFFF
        assert r[F_L4OFF] + 4 <= len(buf)
        assert r[F_PROTO] in (6, 17, 33, 132, 136)
    assert type(r[F_LEN]) is int
    assert 0 <= r[F_FLAGS] <= 255
    assert r[F_FLAGS] == 0 or r[F_PROTO] == 6
    assert r[F_FRAG] in (0, 1, 2)
    assert r[F_FRAGID] == 0 or r[F_FRAG] != 0
    if r[F_FRAG] == 2:
        assert r[F_SPORT] is None and r[F_AUX] is None
    if r[F_AUX] is not None:
        assert r[F_PROTO] in (1, 58)
        assert 0 <= r[F_AUX] <= 0xFFFF or 0x10000 <= r[F_AUX] <= 0x100FF
    assert 0 < r[F_L4OFF] <= len(buf)


# --------------------------------------------------------------------------- API


def test_constants_and_malformed() -> None:
    assert (F_FAMILY, F_PROTO, F_SRC, F_DST, F_SPORT, F_DPORT) == (0, 1, 2, 3, 4, 5)
    assert (F_LEN, F_FLAGS, F_FRAG, F_FRAGID, F_AUX, F_L4OFF) == (6, 7, 8, 9, 10, 11)
    assert MALFORMED == 0 and not MALFORMED


@pytest.mark.parametrize("linktype", [2, 9, 105, 127, 0x10001, -1])
def test_unsupported_link_type(linktype: int) -> None:
    with pytest.raises(UnsupportedLinkType) as info:
        decoder_for(linktype)
    assert info.value.linktype == linktype
    assert isinstance(info.value, ValueError)


def test_supported_link_types() -> None:
    assert {0, 1, 12, 14, 101, 108, 113, 228, 229, 276} == SUPPORTED_LINKTYPES
    for lt in SUPPORTED_LINKTYPES:
        assert callable(decoder_for(lt))


# --------------------------------------------------------------------------- Ethernet / IPv4


def test_ethernet_ipv4_tcp_exact_tuple() -> None:
    frame = eth(0x0800, ipv4(6, tcp(40000, 443, 0x12, b"hello")))
    assert dec(1, frame) == (4, 6, SRC4, DST4, 40000, 443, 45, 0x12, 0, 0, None, 34)


def test_ethernet_ipv4_udp_exact_tuple() -> None:
    frame = eth(0x0800, ipv4(17, udp(5353, 53, b"q")))
    assert dec(1, frame) == (4, 17, SRC4, DST4, 5353, 53, 29, 0, 0, 0, None, 34)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_types_give_bytes_addresses(kind: type) -> None:
    for frame in (
        eth(0x0800, ipv4(6, tcp())),  # fast path
        eth(0x0800, ipv4(6, tcp(), options=b"\x01\x01\x01\x00")),  # general path
        eth(0x86DD, ipv6(17, udp())),
    ):
        r = decoder_for(1)(kind(frame), len(frame))
        assert r == dec(1, frame)
        assert isinstance(r, tuple)
        assert type(r[F_SRC]) is bytes and type(r[F_DST]) is bytes


def test_fast_path_agrees_with_general_path() -> None:
    """The same IPv4 datagram behind Ethernet (fast path) and behind SLL (general path)."""
    for datagram in (
        ipv4(6, tcp(1, 2, 0xFF, b"x" * 30)),
        ipv4(17, udp(3, 4, b"y")),
        ipv4(6, tcp()[:9]),  # ports but no flags: general path in both
    ):
        a = dec(1, eth(0x0800, datagram))
        b = dec(113, sll(0x0800, datagram))
        assert isinstance(a, tuple) and isinstance(b, tuple)
        assert a[:F_L4OFF] == b[:F_L4OFF]
        assert (a[F_L4OFF], b[F_L4OFF]) == (34, 36)


@pytest.mark.parametrize("flags", [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x12, 0x29, 0xC2, 0xFF])
def test_tcp_flags(flags: int) -> None:
    r = dec(1, eth(0x0800, ipv4(6, tcp(flags=flags))))
    assert isinstance(r, tuple) and r[F_FLAGS] == flags


@pytest.mark.parametrize("proto", [17, 136, 132, 33])  # UDP, UDP-Lite, SCTP, DCCP
def test_port_protocols(proto: int) -> None:
    payload = struct.pack("!HH", 1111, 2222) + b"\x00" * 12
    for frame, lt in ((eth(0x0800, ipv4(proto, payload)), 1), (ipv6(proto, payload), 229)):
        r = dec(lt, frame)
        assert isinstance(r, tuple)
        assert (r[F_PROTO], r[F_SPORT], r[F_DPORT], r[F_FLAGS], r[F_AUX]) == (
            proto,
            1111,
            2222,
            0,
            None,
        )


@pytest.mark.parametrize("proto", [47, 50, 2, 89, 41, 4, 103, 255])
def test_other_protocols_count_by_number_only(proto: int) -> None:
    r = dec(1, eth(0x0800, ipv4(proto, b"\x12\x34\x56\x78" * 4)))
    assert isinstance(r, tuple)
    assert (r[F_PROTO], r[F_SPORT], r[F_DPORT], r[F_FLAGS], r[F_AUX]) == (
        proto,
        None,
        None,
        0,
        None,
    )


def test_tunnel_counts_once_under_outer_protocol() -> None:
    inner = ipv4(6, tcp(), src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02")
    r = dec(1, eth(0x0800, ipv4(4, inner)))  # IP-in-IP
    assert isinstance(r, tuple) and (r[F_PROTO], r[F_SRC], r[F_SPORT]) == (4, SRC4, None)
    r = dec(1, eth(0x86DD, ipv6(41, inner)))  # IPv4 in IPv6
    assert isinstance(r, tuple) and (r[F_FAMILY], r[F_PROTO], r[F_SRC]) == (6, 41, SRC6)


def test_ipv4_options() -> None:
    opts = b"\x94\x04\x00\x00" + b"\x01\x01\x01\x00"  # router alert, NOPs, end
    frame = eth(0x0800, ipv4(6, tcp(7, 8, 0x10), options=opts))
    assert dec(1, frame) == (4, 6, SRC4, DST4, 7, 8, 48, 0x10, 0, 0, None, 42)


def test_ipv4_fragments() -> None:
    segment = tcp(1000, 80, 0x18, b"a" * 32)
    first = eth(0x0800, ipv4(6, segment[:24], ident=77, frag=0x2000))
    middle = eth(0x0800, ipv4(6, segment[24:48], ident=77, frag=0x2000 | 3))
    last = eth(0x0800, ipv4(6, segment[48:], ident=77, frag=6))
    assert dec(1, first) == (4, 6, SRC4, DST4, 1000, 80, 44, 0x18, 1, 77, None, 34)
    assert dec(1, middle) == (4, 6, SRC4, DST4, None, None, 44, 0, 2, 77, None, 34)
    assert dec(1, last) == (4, 6, SRC4, DST4, None, None, 24, 0, 2, 77, None, 34)
    # Don't-fragment alone is not a fragment; the id is then 0.
    r = dec(1, eth(0x0800, ipv4(6, segment, ident=77, frag=0x4000)))
    assert isinstance(r, tuple) and (r[F_FRAG], r[F_FRAGID]) == (0, 0)
    # A non-first ICMP fragment has no discriminator.
    r = dec(1, eth(0x0800, ipv4(1, b"\x08" * 16, ident=5, frag=0x0010)))
    assert isinstance(r, tuple) and (r[F_FRAG], r[F_AUX]) == (2, None)


def test_ipv4_fragment_first_with_options_and_udp() -> None:
    r = dec(113, sll(0x0800, ipv4(17, udp(9, 10, b"z" * 40), frag=0x2000, options=b"\x01" * 4)))
    assert isinstance(r, tuple)
    assert (r[F_FRAG], r[F_SPORT], r[F_DPORT], r[F_L4OFF]) == (1, 9, 10, 16 + 24)


# --------------------------------------------------------------------------- ICMP


@pytest.mark.parametrize(
    ("proto", "icmp_type", "aux"),
    [
        (1, 8, 0x1234),  # echo request
        (1, 0, 0x1234),  # echo reply
        (1, 3, 0x10003),  # destination unreachable
        (1, 11, 0x1000B),  # time exceeded
        (1, 13, 0x1000D),  # timestamp: not an echo
        (58, 128, 0x1234),
        (58, 129, 0x1234),
        (58, 1, 0x10001),
        (58, 135, 0x10087),  # neighbour solicitation
        (58, 8, 0x10008),  # 8 is an echo only in ICMPv4
        (1, 128, 0x10080),  # and 128 only in ICMPv6
    ],
)
def test_icmp_discriminator(proto: int, icmp_type: int, aux: int) -> None:
    body = icmp(icmp_type)
    frame = eth(0x0800, ipv4(proto, body)) if proto == 1 else eth(0x86DD, ipv6(proto, body))
    r = dec(1, frame)
    assert isinstance(r, tuple)
    assert (r[F_AUX], r[F_SPORT], r[F_DPORT], r[F_FLAGS]) == (aux, None, None, 0)


def test_icmp_echo_identifier_zero_and_max() -> None:
    for ident in (0, 0xFFFF):
        r = dec(1, eth(0x0800, ipv4(1, icmp(8, ident=ident))))
        assert isinstance(r, tuple) and r[F_AUX] == ident


def test_icmp_cut_short() -> None:
    # Fewer than 4 bytes: no ICMP header, no discriminator. An echo needs 6 for its id.
    for cut, aux in ((0, None), (1, None), (3, None), (4, None), (5, None), (6, 0x1234)):
        r = dec(1, eth(0x0800, ipv4(1, icmp(8)[:cut])))
        assert isinstance(r, tuple) and r[F_AUX] == aux, cut
    r = dec(1, eth(0x0800, ipv4(1, icmp(3)[:4])))
    assert isinstance(r, tuple) and r[F_AUX] == 0x10003


# --------------------------------------------------------------------------- lengths


def test_tso_zero_length_ipv4() -> None:
    datagram = ipv4(6, tcp(5, 6, 0x10, b"d" * 100), total=0)
    frame = eth(0x0800, datagram)
    r = dec(1, frame, wirelen=9014)
    assert isinstance(r, tuple)
    assert (r[F_LEN], r[F_SPORT], r[F_DPORT], r[F_FLAGS]) == (9000, 5, 6, 0x10)
    r = dec(101, datagram, wirelen=64000)
    assert isinstance(r, tuple) and r[F_LEN] == 64000


def test_tso_zero_length_ipv6_and_jumbograms() -> None:
    segment = tcp(5, 6, 0x10, b"d" * 60)
    r = dec(1, eth(0x86DD, ipv6(6, segment, plen=0)), wirelen=70014)
    assert isinstance(r, tuple) and (r[F_LEN], r[F_SPORT]) == (70000, 5)
    jumbo = b"\xc2\x04" + struct.pack("!I", 70000 - 40)
    hbh = ext(6, jumbo)
    r = dec(1, eth(0x86DD, ipv6(0, hbh + segment, plen=0)), wirelen=70014)
    assert isinstance(r, tuple) and (r[F_PROTO], r[F_LEN], r[F_SPORT]) == (6, 70000, 5)
    assert r[F_L4OFF] == 14 + 40 + 8
    # Jumbo payload longer than the wire: inconsistent.
    assert dec(1, eth(0x86DD, ipv6(0, hbh + segment, plen=0)), wirelen=60000) == MALFORMED
    # Zero payload length, a hop-by-hop header and no jumbo option: inconsistent.
    no_jumbo = ext(6, b"\x01\x04\x00\x00\x00\x00")
    assert dec(1, eth(0x86DD, ipv6(0, no_jumbo + segment, plen=0)), wirelen=70014) == MALFORMED
    # Pad1 before the option is skipped.
    padded = ext(
        6, b"\x00\x00" + b"\xc2\x04" + struct.pack("!I", 70000 - 40) + b"\x01\x04" + bytes(4)
    )
    r = dec(1, eth(0x86DD, ipv6(0, padded + segment, plen=0)), wirelen=70014)
    assert isinstance(r, tuple) and r[F_PROTO] == 6


def test_transport_is_read_inside_the_datagram_only() -> None:
    # IPv4 total length says 20: the rest of the frame is Ethernet padding, not TCP.
    frame = eth(0x0800, ipv4(6, tcp(), total=20))
    r = dec(1, frame)
    assert isinstance(r, tuple) and (r[F_LEN], r[F_SPORT], r[F_FLAGS]) == (20, None, 0)
    frame = eth(0x86DD, ipv6(17, udp(), plen=0 + 2))
    r = dec(1, frame)
    assert isinstance(r, tuple) and (r[F_LEN], r[F_SPORT]) == (42, None)


def test_ethernet_padding_is_ignored() -> None:
    frame = eth(0x0800, ipv4(17, udp(1, 2))) + b"\x00" * 18
    assert dec(1, frame) == (4, 17, SRC4, DST4, 1, 2, 28, 0, 0, 0, None, 34)


@pytest.mark.parametrize(
    ("desc", "frame"),
    [
        ("total length below the header", eth(0x0800, ipv4(6, tcp(), total=19))),
        (
            "total length below the options",
            eth(0x0800, ipv4(6, tcp(), options=b"\0" * 8, total=24)),
        ),
        ("total length past the wire", eth(0x0800, ipv4(6, tcp(), total=1500))),
        ("header length 4", eth(0x0800, bytes([0x44]) + ipv4(6, tcp())[1:])),
        ("header length 0", eth(0x0800, bytes([0x40]) + ipv4(6, tcp())[1:])),
        ("version 6 behind 0x0800", eth(0x0800, ipv4(6, tcp(), version=6))),
        ("version 4 behind 0x86dd", eth(0x86DD, ipv6(6, tcp(), version=4))),
        ("payload length past the wire", eth(0x86DD, ipv6(6, tcp(), plen=200))),
        ("no IP header at all", eth(0x0800, b"")),
        ("IPv6 header cut", eth(0x86DD, ipv6(6, tcp())[:39])),
        ("options cut", eth(0x0800, ipv4(6, b"", options=b"\x01" * 8))[:40]),
    ],
)
def test_inconsistent_or_cut_ip_header_is_malformed(desc: str, frame: bytes) -> None:
    assert dec(1, frame) == MALFORMED, desc


# --------------------------------------------------------------------------- IPv6


def test_ipv6_tcp_exact_tuple() -> None:
    frame = eth(0x86DD, ipv6(6, tcp(1, 2, 0x02)))
    assert dec(1, frame) == (6, 6, SRC6, DST6, 1, 2, 60, 0x02, 0, 0, None, 54)


@pytest.mark.parametrize(
    ("chain", "proto", "l4"),
    [
        ([0], 6, 8),
        ([43], 6, 8),
        ([60], 6, 8),
        ([51], 6, 24),
        ([0, 43, 60], 6, 24),
        ([0, 60, 51, 60], 6, 48),
    ],
)
def test_ipv6_extension_headers_walked(chain: list[int], proto: int, l4: int) -> None:
    payload = tcp(3, 4, 0x11)
    nexts = [*chain[1:], 6]
    headers = b"".join(ah(n) if h == 51 else ext(n) for h, n in zip(chain, nexts, strict=True))
    r = dec(1, eth(0x86DD, ipv6(chain[0], headers + payload)))
    assert isinstance(r, tuple)
    assert (r[F_PROTO], r[F_SPORT], r[F_DPORT], r[F_FLAGS]) == (proto, 3, 4, 0x11)
    assert r[F_L4OFF] == 14 + 40 + l4


def test_ipv6_longer_extension_header() -> None:
    hbh = ext(58, b"\x01\x0c" + b"\x00" * 12)  # 16 bytes: PadN of 12
    r = dec(1, eth(0x86DD, ipv6(0, hbh + icmp(128, ident=9))))
    assert isinstance(r, tuple) and (r[F_PROTO], r[F_AUX], r[F_L4OFF]) == (58, 9, 14 + 40 + 16)


def test_ipv6_fragments() -> None:
    segment = udp(53, 33333, b"r" * 40)
    first = eth(0x86DD, ipv6(44, frag6(17, 0, True, 0xDEADBEEF) + segment[:24]))
    later = eth(0x86DD, ipv6(44, frag6(17, 3, False, 0xDEADBEEF) + segment[24:]))
    r = dec(1, first)
    assert r == (6, 17, SRC6, DST6, 53, 33333, 72, 0, 1, 0xDEADBEEF, None, 62)
    r = dec(1, later)
    assert r == (6, 17, SRC6, DST6, None, None, 72, 0, 2, 0xDEADBEEF, None, 62)
    # Non-first fragment after a hop-by-hop header; its next header is taken as is.
    later = eth(0x86DD, ipv6(0, ext(44) + frag6(60, 3, True, 5) + b"\x00" * 16))
    r = dec(1, later)
    assert isinstance(r, tuple) and (r[F_PROTO], r[F_FRAG], r[F_FRAGID]) == (60, 2, 5)
    # Atomic fragment (offset 0, no more fragments): not a fragment.
    atomic = eth(0x86DD, ipv6(44, frag6(6, 0, False, 9) + tcp(1, 2)))
    r = dec(1, atomic)
    assert isinstance(r, tuple) and (r[F_FRAG], r[F_FRAGID], r[F_SPORT]) == (0, 0, 1)


def test_ipv6_no_next_header_and_esp() -> None:
    r = dec(1, eth(0x86DD, ipv6(59, b"")))
    assert isinstance(r, tuple) and (r[F_PROTO], r[F_SPORT]) == (59, None)
    r = dec(1, eth(0x86DD, ipv6(50, b"\x00" * 16)))
    assert isinstance(r, tuple) and (r[F_PROTO], r[F_SPORT]) == (50, None)


def test_ipv6_extension_header_past_the_packet_is_malformed() -> None:
    # Hop-by-hop claims 64 bytes; the packet carries 8.
    frame = eth(0x86DD, ipv6(0, bytes([6, 7]) + b"\x00" * 6))
    assert dec(1, frame) == MALFORMED
    frame = eth(0x86DD, ipv6(44, b"\x06\x00\x00"))
    assert dec(1, frame) == MALFORMED


# --------------------------------------------------------------------------- link layers


def test_vlan_tags() -> None:
    datagram = ipv4(6, tcp(11, 22))
    for tags, l3 in (
        ([0x8100], 18),
        ([0x88A8, 0x8100], 22),
        ([0x9100, 0x8100], 22),
        ([0x88A8, 0x8100, 0x8100], 26),
    ):
        r = dec(1, eth_tagged(tags, 0x0800, datagram))
        assert isinstance(r, tuple)
        assert (r[F_SPORT], r[F_DPORT], r[F_L4OFF]) == (11, 22, l3 + 20), tags
    r = dec(1, eth_tagged([0x8100], 0x86DD, ipv6(17, udp(1, 2))))
    assert isinstance(r, tuple) and (r[F_FAMILY], r[F_SPORT]) == (6, 1)


def test_vlan_with_non_ip_and_cut_tags() -> None:
    assert dec(1, eth_tagged([0x8100], 0x0806, b"\x00" * 28)) is None  # ARP
    assert dec(1, eth_tagged([0x8100], 0x0800, b"")) == MALFORMED
    assert dec(1, eth_tagged([0x8100], 0x0800, b"")[:16]) is None  # tag cut


def test_llc_snap_and_ip_sap() -> None:
    r = dec(1, eth_8023(snap(0x0800, ipv4(17, udp(7, 9)))))
    assert isinstance(r, tuple) and (r[F_SPORT], r[F_L4OFF]) == (7, 14 + 8 + 20)
    r = dec(1, eth_8023(snap(0x86DD, ipv6(6, tcp(7, 9)))))
    assert isinstance(r, tuple) and (r[F_FAMILY], r[F_SPORT]) == (6, 7)
    r = dec(1, eth_8023(b"\x06\x06\x03" + ipv4(6, tcp(7, 9))))
    assert isinstance(r, tuple) and (r[F_SPORT], r[F_L4OFF]) == (7, 14 + 3 + 20)
    # SNAP inside a VLAN tag.
    frame = MAC_DST + MAC_SRC + struct.pack("!HHH", 0x8100, 5, 40) + snap(0x0800, ipv4(1, icmp(8)))
    r = dec(1, frame)
    assert isinstance(r, tuple) and r[F_AUX] == 0x1234


def test_llc_not_ip() -> None:
    assert dec(1, eth_8023(b"\x42\x42\x03" + b"\x00" * 35)) is None  # STP
    assert dec(1, eth_8023(snap(0x2000, b"\x00" * 20, oui=b"\x00\x00\x0c"))) is None  # CDP
    assert dec(1, eth_8023(snap(0x0800, ipv4(6, tcp()), oui=b"\x00\x00\x0c"))) is None
    assert dec(1, eth_8023(b"\xff\xff" + b"\x00" * 30)) is None  # Novell raw 802.3
    assert dec(1, eth_8023(b"\xaa\xaa")) is None


def test_pppoe_session() -> None:
    r = dec(1, eth(0x8864, pppoe(b"\x00\x21", ipv4(6, tcp(1, 2)))))
    assert isinstance(r, tuple) and (r[F_SPORT], r[F_L4OFF]) == (1, 14 + 8 + 20)
    r = dec(1, eth(0x8864, pppoe(b"\x00\x57", ipv6(17, udp(1, 2)))))
    assert isinstance(r, tuple) and (r[F_FAMILY], r[F_L4OFF]) == (6, 14 + 8 + 40)
    r = dec(1, eth(0x8864, pppoe(b"\x21", ipv4(6, tcp(1, 2)))))  # compressed protocol
    assert isinstance(r, tuple) and r[F_L4OFF] == 14 + 7 + 20
    r = dec(1, eth_tagged([0x8100], 0x8864, pppoe(b"\x00\x21", ipv4(6, tcp(1, 2)))))
    assert isinstance(r, tuple) and r[F_SPORT] == 1
    assert dec(1, eth(0x8864, pppoe(b"\xc0\x21", b"\x01\x01\x00\x04"))) is None  # LCP
    assert dec(1, eth(0x8863, pppoe(b"", b"", code=0x09))) is None  # discovery
    assert dec(1, eth(0x8864, pppoe(b"\x00\x21", b"", code=0x07))) is None  # not session data
    assert dec(1, eth(0x8864, b"\x11\x00\x00")) is None


@pytest.mark.parametrize("ethertype", [0x0806, 0x88CC, 0x8035, 0x9000, 0x8847, 0x88E5, 0x05FF])
def test_ethernet_non_ip(ethertype: int) -> None:
    assert dec(1, eth(ethertype, b"\x45" + b"\x00" * 45)) is None


def test_short_ethernet_is_not_ip() -> None:
    frame = eth(0x0800, ipv4(6, tcp()))
    for cut in range(14):
        assert dec(1, frame[:cut]) is None


def test_linux_sll() -> None:
    r = dec(113, sll(0x0800, ipv4(6, tcp(1, 2, 0x02))))
    assert r == (4, 6, SRC4, DST4, 1, 2, 40, 0x02, 0, 0, None, 36)
    r = dec(113, sll(0x86DD, ipv6(17, udp(3, 4))))
    assert r == (6, 17, SRC6, DST6, 3, 4, 48, 0, 0, 0, None, 56)
    r = dec(113, sll(0x8100, struct.pack("!HH", 7, 0x0800) + ipv4(17, udp(3, 4))))
    assert isinstance(r, tuple) and r[F_L4OFF] == 40
    r = dec(113, sll(0x0004, snap(0x0800, ipv4(17, udp(3, 4)))))
    assert isinstance(r, tuple) and r[F_L4OFF] == 16 + 8 + 20
    assert dec(113, sll(0x0806, b"\x00" * 28)) is None
    assert dec(113, sll(0x0001, b"\xff\xff" + b"\x00" * 28)) is None
    # Netlink monitor: the protocol field is a netlink family, not an ethertype.
    assert dec(113, sll(0x0800, ipv4(6, tcp()), hatype=824)) is None
    assert dec(113, sll(0x0800, b"")) == MALFORMED
    for cut in range(16):
        assert dec(113, sll(0x0800, ipv4(6, tcp()))[:cut]) is None


def test_linux_sll2() -> None:
    r = dec(276, sll2(0x0800, ipv4(6, tcp(1, 2, 0x02))))
    assert r == (4, 6, SRC4, DST4, 1, 2, 40, 0x02, 0, 0, None, 40)
    r = dec(276, sll2(0x86DD, ipv6(58, icmp(129, ident=77))))
    assert isinstance(r, tuple) and (r[F_AUX], r[F_L4OFF]) == (77, 60)
    assert dec(276, sll2(0x0806, b"\x00" * 28)) is None
    assert dec(276, sll2(0x0800, ipv4(6, tcp()), hatype=824)) is None
    for cut in range(20):
        assert dec(276, sll2(0x0800, ipv4(6, tcp()))[:cut]) is None


@pytest.mark.parametrize("linktype", [12, 14, 101])
def test_raw_ip_by_version_nibble(linktype: int) -> None:
    r = dec(linktype, ipv4(6, tcp(1, 2)))
    assert r == (4, 6, SRC4, DST4, 1, 2, 40, 0x02, 0, 0, None, 20)
    r = dec(linktype, ipv6(6, tcp(1, 2)))
    assert r == (6, 6, SRC6, DST6, 1, 2, 60, 0x02, 0, 0, None, 40)
    assert dec(linktype, b"") == MALFORMED
    assert dec(linktype, b"\x30" + ipv4(6, tcp())[1:]) == MALFORMED
    assert dec(linktype, b"\x00\x21" + ipv4(6, tcp())) == MALFORMED


def test_ipv4_and_ipv6_link_types() -> None:
    assert dec(228, ipv4(17, udp(1, 2))) == (4, 17, SRC4, DST4, 1, 2, 28, 0, 0, 0, None, 20)
    assert dec(229, ipv6(17, udp(1, 2))) == (6, 17, SRC6, DST6, 1, 2, 48, 0, 0, 0, None, 40)
    # The link type promises one family: the other one is inconsistent.
    assert dec(228, ipv6(17, udp(1, 2))) == MALFORMED
    assert dec(229, ipv4(17, udp(1, 2))) == MALFORMED
    assert dec(228, b"") == MALFORMED
    assert dec(229, b"") == MALFORMED


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize(("family", "ip"), [(2, 4), (10, 6), (24, 6), (28, 6), (30, 6)])
def test_bsd_null_either_byte_order(order: str, family: int, ip: int) -> None:
    datagram = ipv4(6, tcp(1, 2)) if ip == 4 else ipv6(6, tcp(1, 2))
    r = dec(0, struct.pack(order + "I", family) + datagram)
    l4 = 4 + (20 if ip == 4 else 40)
    assert isinstance(r, tuple) and (r[F_FAMILY], r[F_SPORT], r[F_L4OFF]) == (ip, 1, l4)


@pytest.mark.parametrize(("family", "ip"), [(2, 4), (10, 6), (24, 6), (28, 6), (30, 6)])
def test_bsd_loop_network_order(family: int, ip: int) -> None:
    datagram = ipv4(17, udp(1, 2)) if ip == 4 else ipv6(17, udp(1, 2))
    r = dec(108, struct.pack("!I", family) + datagram)
    assert isinstance(r, tuple) and (r[F_FAMILY], r[F_DPORT]) == (ip, 2)


def test_null_and_loop_other_families() -> None:
    for lt, head in (
        (0, struct.pack("<I", 7)),  # AF_OSI-ish
        (0, struct.pack("<I", 0x0202)),  # both bytes set: not a family
        (0, b"\x02\x00\x00\x02"),
        (108, struct.pack("<I", 2)),  # loop is network order only
        (108, struct.pack("!I", 7)),
    ):
        assert dec(lt, head + ipv4(6, tcp())) is None, (lt, head)
    for cut in range(4):
        assert dec(0, struct.pack("<I", 2)[:cut]) is None
        assert dec(108, struct.pack("!I", 2)[:cut]) is None
    assert dec(0, struct.pack("<I", 2)) == MALFORMED


# --------------------------------------------------------------------------- truncations

SAMPLES = {
    "eth/ipv4+options/tcp": (
        1,
        eth(0x0800, ipv4(6, tcp(1, 2, 0x18, b"abc"), options=b"\x01" * 4)),
        14,
        38,
    ),
    "eth/ipv4/tcp": (1, eth(0x0800, ipv4(6, tcp(1, 2, 0x18, b"abc"))), 14, 34),
    "eth/vlan/ipv4/udp": (1, eth_tagged([0x8100], 0x0800, ipv4(17, udp(1, 2, b"x"))), 18, 38),
    "eth/ipv6/hbh/frag/tcp": (
        1,
        eth(0x86DD, ipv6(0, ext(44) + frag6(6, 0, True, 1) + tcp(1, 2, 0x02, b"zz"))),
        14,
        14 + 40 + 16,
    ),
    "sll/ipv4/icmp": (113, sll(0x0800, ipv4(1, icmp(8))), 16, 36),
    "sll2/ipv6/udp": (276, sll2(0x86DD, ipv6(17, udp(1, 2, b"q"))), 20, 60),
    "raw/ipv6/ah/udp": (101, ipv6(51, ah(17) + udp(1, 2)), 0, 64),
    "null/ipv4/udp": (0, struct.pack("<I", 2) + ipv4(17, udp(1, 2)), 4, 24),
    "pppoe/ipv4/tcp": (1, eth(0x8864, pppoe(b"\x00\x21", ipv4(6, tcp(1, 2)))), 22, 42),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_cut_at_every_byte(name: str) -> None:
    """Snaplen truncation: the wire length stays, the capture shrinks. Below the link header
    the frame is not IP; inside the IP header (extension headers included) it is MALFORMED;
    after it, a tuple whose ports appear once 4 transport bytes are there."""
    linktype, frame, l3, l4 = SAMPLES[name]
    decode = decoder_for(linktype)
    whole = decode(frame, len(frame))
    assert isinstance(whole, tuple) and whole[F_L4OFF] == l4
    for cut in range(len(frame) + 1):
        r = decode(frame[:cut], len(frame))
        check_shape(frame[:cut], r)
        if cut < l3:
            assert r is None, cut
        elif cut < l4:
            assert r == MALFORMED, cut
        else:
            assert isinstance(r, tuple), cut
            assert r[:4] == whole[:4] and r[F_LEN] == whole[F_LEN]
            has_ports = whole[F_SPORT] is not None and cut >= l4 + 4
            assert (r[F_SPORT] is not None) == has_ports, cut
            if whole[F_PROTO] == 6:
                assert r[F_FLAGS] == (whole[F_FLAGS] if cut >= l4 + 14 else 0)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_cut_with_wire_length_cut_too(name: str) -> None:
    """A frame whose wire length shrinks with it: the IP length then exceeds the wire."""
    linktype, frame, l3, _l4 = SAMPLES[name]
    decode = decoder_for(linktype)
    for cut in range(len(frame)):
        r = decode(frame[:cut], cut)
        check_shape(frame[:cut], r)
        assert r is None if cut < l3 else r == MALFORMED, cut
