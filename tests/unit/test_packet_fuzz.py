"""Fuzz netwarden.wire.packet: whatever the bytes and the wire length, every decoder returns
None, MALFORMED or a well-formed tuple, and never raises."""

from __future__ import annotations

import struct
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from netwarden.wire.packet import MALFORMED, SUPPORTED_LINKTYPES, decoder_for
from netwarden.wire.pcapfile import CaptureFileError, open_capture
from tests.corpus import CORPUS
from tests.unit.test_packet import (
    SAMPLES,
    ah,
    eth,
    eth_8023,
    eth_tagged,
    ext,
    frag6,
    icmp,
    ipv4,
    ipv6,
    pppoe,
    sll,
    sll2,
    snap,
    tcp,
    udp,
)
from tests.unit.test_packet import check_shape as _check_shape

LINKTYPES = sorted(SUPPORTED_LINKTYPES)

# Link headers that lead to IP, per link type, so that random bytes get past the link layer.
LINK_PREFIXES: dict[int, list[bytes]] = {
    0: [struct.pack("<I", 2), struct.pack(">I", 2), struct.pack("<I", 30), struct.pack(">I", 24)],
    1: [
        eth(0x0800, b""),
        eth(0x86DD, b""),
        eth_tagged([0x88A8, 0x8100], 0x0800, b""),
        eth(0x8864, pppoe(b"\x00\x57", b"")),
        eth_8023(snap(0x0800, b""))[:-2],
    ],
    12: [b""],
    14: [b""],
    101: [b""],
    108: [struct.pack(">I", 2), struct.pack(">I", 28)],
    113: [sll(0x0800, b""), sll(0x86DD, b""), sll(0x0004, snap(0x86DD, b""))],
    228: [b""],
    229: [b""],
    276: [sll2(0x0800, b""), sll2(0x86DD, b"")],
}

HAND_BUILT: list[tuple[int, bytes]] = [(lt, frame) for lt, frame, _l3, _l4 in SAMPLES.values()] + [
    (1, eth(0x0800, ipv4(6, tcp(1, 2, 0x12, b"x" * 20), options=b"\x94\x04\x00\x00"))),
    (1, eth(0x0800, ipv4(17, udp(1, 2, b"y"), frag=0x2000))),
    (1, eth(0x0800, ipv4(17, b"z" * 24, frag=0x0003))),
    (1, eth(0x0800, ipv4(1, icmp(3)))),
    (
        1,
        eth(
            0x86DD,
            ipv6(0, ext(43) + ext(60) + ext(51) + ah(44) + frag6(58, 0, True, 3) + icmp(128)),
        ),
    ),
    (1, eth(0x86DD, ipv6(0, ext(6, b"\xc2\x04\x00\x01\x00\x00") + tcp(), plen=0))),
    (229, ipv6(44, frag6(17, 5, False, 1) + b"q" * 16)),
    (228, ipv4(132, struct.pack("!HHI", 1, 2, 3) + b"\x00" * 8)),
    (276, sll2(0x86DD, ipv6(136, udp(1, 2)))),
]


@cache
def corpus_seeds() -> list[tuple[int, bytes, int]]:
    """The first few packets of the corpus files, as (linktype, bytes, wirelen)."""
    seeds: list[tuple[int, bytes, int]] = []
    if not CORPUS.is_dir():
        return seeds
    for path in sorted(CORPUS.iterdir()):
        try:
            with open_capture(path) as reader:
                for n, (_ts, lt, data, wirelen, _ifindex) in enumerate(reader):
                    if n >= 3:
                        break
                    if lt in SUPPORTED_LINKTYPES:
                        seeds.append((lt, bytes(data), wirelen))
        except CaptureFileError:
            continue
    return seeds


def check(linktype: int, buf: bytes, wirelen: int) -> None:
    decode = decoder_for(linktype)
    r = decode(buf, wirelen)
    _check_shape(buf, r)
    # The same answer from a memoryview, as the capture readers pass it.
    assert decode(memoryview(buf), wirelen) == r
    assert r is None or r == MALFORMED or isinstance(r, tuple)


wirelens = st.one_of(st.integers(0, 70000), st.integers(-1, 2**32 - 1))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(LINKTYPES), st.binary(max_size=160), wirelens, st.booleans())
def test_random_bytes(linktype: int, buf: bytes, wirelen: int, use_len: bool) -> None:
    check(linktype, buf, len(buf) if use_len else wirelen)


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_random_bytes_behind_valid_link_headers(data: st.DataObject) -> None:
    linktype = data.draw(st.sampled_from(LINKTYPES))
    prefix = data.draw(st.sampled_from(LINK_PREFIXES[linktype]))
    first = data.draw(st.sampled_from([0x45, 0x46, 0x4F, 0x44, 0x60, 0x6F, 0x00]))
    rest = data.draw(st.binary(max_size=120))
    buf = prefix + bytes([first]) + rest
    wirelen = data.draw(st.one_of(st.just(len(buf)), wirelens))
    check(linktype, buf, wirelen)


def _mutate(data: st.DataObject, frame: bytes, wirelen: int) -> tuple[bytes, int]:
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 4))):
        if not buf:
            break
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    out = bytes(buf[:cut])
    choice = data.draw(st.sampled_from(["orig", "cut", "any"]))
    if choice == "cut":
        wirelen = len(out)
    elif choice == "any":
        wirelen = data.draw(wirelens)
    return out, wirelen


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_mutated_and_truncated_hand_built_packets(data: st.DataObject) -> None:
    linktype, frame = data.draw(st.sampled_from(HAND_BUILT))
    buf, wirelen = _mutate(data, frame, len(frame))
    check(linktype, buf, wirelen)


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_mutated_and_truncated_real_packets(data: st.DataObject) -> None:
    seeds = corpus_seeds() or [(lt, f, len(f)) for lt, f in HAND_BUILT]
    linktype, frame, wirelen = data.draw(st.sampled_from(seeds))
    buf, wirelen = _mutate(data, frame, wirelen)
    check(linktype, buf, wirelen)
