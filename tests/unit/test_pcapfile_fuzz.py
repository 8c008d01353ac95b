"""Fuzz netwarden.wire.pcapfile: whatever the bytes, only CaptureFileError may escape."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from netwarden.wire.pcapfile import CaptureFileError, CaptureReader
from netwarden.wire.pcapwriter import pcap_bytes, pcapng_block, pcapng_section

MAGICS = [
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x34\xcd\xb2\xa1",
    b"\xa1\xb2\xcd\x34",
    b"\x0a\x0d\x0d\x0a",
]


def check(buf: bytes) -> None:
    """Read ``buf`` to the end; only CaptureFileError may stop it, and views stay in bounds."""
    try:
        reader = CaptureReader(buf, "fuzz")
        last = reader.offset
        for ts, lt, data, wirelen, ifindex in reader:
            assert isinstance(ts, float) and isinstance(data, memoryview)
            assert 0 <= lt <= 0xFFFF and wirelen >= 0 and ifindex >= 0
            assert len(data) <= len(buf)
            assert last < reader.offset <= len(buf)
            last = reader.offset
    except CaptureFileError as e:
        assert 0 <= e.offset <= len(buf) and "\n" not in str(e)


@settings(max_examples=300)
@given(st.sampled_from([b"", *MAGICS]), st.binary(max_size=300))
def test_random_bytes(magic: bytes, rest: bytes) -> None:
    check(magic + rest)


packets = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=4e9, allow_nan=False),
        st.integers(0, 1),
        st.binary(max_size=40),
    ),
    max_size=6,
)


@st.composite
def valid_files(draw: st.DrawFn) -> bytes:
    pkts = draw(packets)
    kind = draw(st.sampled_from(["pcap", "pcap-ns", "pcap-modified", "pcapng", "pcapng-2"]))
    order = draw(st.sampled_from(["<", ">"]))
    if kind.startswith("pcap") and not kind.startswith("pcapng"):
        return pcap_bytes(
            draw(st.integers(0, 300)),
            [(ts, data) for ts, _, data in pkts],
            nanosecond=kind == "pcap-ns",
            byteorder=order,  # type: ignore[arg-type]
            snaplen=draw(st.sampled_from([0, 64, 65535, 262144])),
            modified=kind == "pcap-modified",
        )
    interfaces: list[tuple[int, int] | tuple[int, int, int, int]] = [
        (1, 0),
        (101, 0, draw(st.sampled_from([0, 3, 6, 9, 0x80 | 20])), -5),
    ]
    buf = pcapng_section(interfaces, pkts, byteorder=order)  # type: ignore[arg-type]
    if kind == "pcapng-2":
        spb = [(0.0, 0, data) for _, _, data in pkts]
        buf += pcapng_block(0xBAD, draw(st.binary(max_size=12)), order)  # type: ignore[arg-type]
        buf += pcapng_section([(113, 0)], spb, byteorder="<" if order == ">" else ">", block="spb")
        buf += pcapng_section(interfaces, pkts, block="opb")
    return buf


mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("u32"), st.integers(0, 10_000), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("del"), st.integers(0, 10_000), st.integers(1, 8)),
    st.tuples(st.just("ins"), st.integers(0, 10_000), st.integers(0, 255)),
)


def mutate(buf: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(buf)
    for op, pos, value in mutations:
        if not b:
            break
        pos %= len(b)
        if op == "set":
            b[pos] = value
        elif op == "u32":
            b[pos : pos + 4] = struct.pack("<I", value)
        elif op == "cut":
            del b[pos:]
        elif op == "del":
            del b[pos : pos + value]
        else:
            b[pos:pos] = bytes([value])
    return bytes(b)


@settings(max_examples=500)
@given(valid_files(), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_valid_files(buf: bytes, mutations: list[tuple[str, int, int]]) -> None:
    check(mutate(buf, mutations))


@settings(max_examples=100)
@given(valid_files())
def test_valid_files_read_without_error(buf: bytes) -> None:
    reader = CaptureReader(buf)
    for _ in reader:
        pass
    assert reader.offset == len(buf)
