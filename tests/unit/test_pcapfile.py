"""netwarden.wire.pcapfile: every format variant through the writer, damage, the tcpdump corpus."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import pytest

from netwarden.wire.pcapfile import CaptureFileError, CaptureReader, open_capture
from netwarden.wire.pcapwriter import (
    pcap_bytes,
    pcapng_block,
    pcapng_section,
    write_pcap,
    write_pcapng,
)

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "pcaps" / "tcpdump-tests"

Row = tuple[float, int, bytes, int, int]

# Timestamps chosen so that the float written and the float read back are identical.
PACKETS: list[tuple[float, bytes]] = [
    (1700000000.123456, bytes(range(60))),
    (1700000000.5, b""),
    (1700000001.000001, b"\xff" * 1514),
    (1700000002.25, b"abc"),
]


def read_all(buf: bytes, path: str = "<memory>") -> tuple[list[Row], CaptureFileError | None]:
    """Every packet (data copied) and the error that ended the iteration, if any."""
    rows: list[Row] = []
    try:
        reader = CaptureReader(buf, path)
        for ts, lt, data, wl, ifi in reader:
            assert isinstance(data, memoryview)
            rows.append((ts, lt, bytes(data), wl, ifi))
            assert reader.offset <= reader.size
    except CaptureFileError as e:
        return rows, e
    return rows, None


def read_ok(buf: bytes) -> list[Row]:
    rows, err = read_all(buf)
    assert err is None, str(err)
    return rows


# -- classic pcap -----------------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_pcap_microseconds_round_trip(tmp_path: Path, byteorder: str) -> None:
    path = tmp_path / "a.pcap"
    write_pcap(path, 1, [(ts, d, len(d) + 4) for ts, d in PACKETS], byteorder=byteorder)  # type: ignore[arg-type]
    with open_capture(path) as r:
        assert (r.format, r.linktypes, r.snaplen, r.path) == ("pcap", [1], 262144, str(path))
        assert r.size == path.stat().st_size and r.offset == 24
        rows = [(ts, lt, bytes(d), wl, i) for ts, lt, d, wl, i in r]
        assert r.offset == r.size
    assert rows == [(ts, 1, d, len(d) + 4, 0) for ts, d in PACKETS]


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_pcap_nanoseconds_round_trip(byteorder: str) -> None:
    buf = pcap_bytes(
        228,
        [(1234.567891234, b"x"), (5.000000001, b"yy"), (1700000000.123456789, b"z")],
        nanosecond=True,
        byteorder=byteorder,  # type: ignore[arg-type]
    )
    assert buf[:4] == (b"\x4d\x3c\xb2\xa1" if byteorder == "<" else b"\xa1\xb2\x3c\x4d")
    rows = read_ok(buf)
    assert [r[0] for r in rows[:2]] == [1234.567891234, 5.000000001]
    assert rows[2][0] == pytest.approx(1700000000.123456789, abs=1e-6)
    assert [r[1:] for r in rows] == [(228, b"x", 1, 0), (228, b"yy", 2, 0), (228, b"z", 1, 0)]


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_pcap_modified_kuznetzov(byteorder: str) -> None:
    buf = pcap_bytes(1, PACKETS, byteorder=byteorder, modified=True)  # type: ignore[arg-type]
    assert len(buf) == 24 + sum(24 + len(d) for _, d in PACKETS)
    assert read_ok(buf) == [(ts, 1, d, len(d), 0) for ts, d in PACKETS]


def test_pcap_linktype_is_low_16_bits() -> None:
    buf = bytearray(pcap_bytes(101, PACKETS[:1]))
    buf[20:24] = struct.pack("<I", 0x34000065)  # FCS length 3 + "FCS present" over RAW
    assert [r[1] for r in read_ok(bytes(buf))] == [101]
    assert CaptureReader(bytes(buf)).linktypes == [101]


def test_pcap_header_only_is_empty_not_an_error() -> None:
    reader = CaptureReader(pcap_bytes(1, []))
    assert list(reader) == [] and reader.offset == reader.size == 24


def test_pcap_old_versions_swap_caplen_and_len() -> None:
    # Before 2.3 the record had len before caplen; 2.3 may have either (libpcap's rule).
    body = struct.pack("<IIII", 10, 0, 100, 4) + b"abcd"
    for minor in (2, 3):
        head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, minor, 0, 0, 65535, 1)
        assert read_ok(head + body) == [(10.0, 1, b"abcd", 100, 0)]
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1)
    _rows, err = read_all(head + body)
    assert err is not None and "version 3.0" in err.reason


def test_pcap_caplen_over_snaplen_is_tolerated_like_libpcap() -> None:
    buf = pcap_bytes(1, [(1.0, b"x" * 300)], snaplen=200)
    assert read_ok(buf)[0][2] == b"x" * 300


def test_pcap_caplen_limit_is_max_of_snaplen_and_linktype_maximum() -> None:
    big = b"\0" * 300_000
    assert len(read_ok(pcap_bytes(1, [(1.0, big)], snaplen=1 << 20))[0][2]) == 300_000
    assert len(read_ok(pcap_bytes(231, [(1.0, big)], snaplen=0))[0][2]) == 300_000  # D-Bus
    rows, err = read_all(pcap_bytes(1, [(1.0, b"ok"), (2.0, big)], snaplen=65535))
    assert rows == [(1.0, 1, b"ok", 2, 0)]
    assert err is not None and err.offset == 24 + 16 + 2 + 8
    assert "record length 300000 exceeds the maximum of 262144" in str(err)


def test_absurd_caplen_after_good_packets() -> None:
    buf = pcap_bytes(1, PACKETS) + struct.pack("<IIII", 1, 2, 0xFFFFFFFF, 60) + b"\0" * 64
    rows, err = read_all(buf, "x.pcap")
    assert len(rows) == len(PACKETS)
    assert err is not None
    assert str(err) == (
        f"x.pcap: corrupt capture file at byte {len(buf) - 72}: record length 4294967295 "
        "exceeds the maximum of 262144 (snaplen 262144)"
    )
    assert (err.path, err.offset) == ("x.pcap", len(buf) - 72)


# -- pcapng -----------------------------------------------------------------------------------


def test_pcapng_two_interfaces_link_types_and_resolutions(tmp_path: Path) -> None:
    interfaces = [(1, 262144), (101, 0, 9), (113, 96, 0x80 | 10, -1000)]
    packets = [
        (1700000000.123456, 0, b"eth", 100),
        (1234.567891234, 1, b"raw"),
        (1700000000.5, 2, b"sll" * 5),  # 2^-10 s ticks, 1000 s before the offset
        (1700000003.000001, 0, b""),
    ]
    path = tmp_path / "a.pcapng"
    write_pcapng(path, interfaces, packets)  # type: ignore[arg-type]
    with open_capture(path) as r:
        assert r.format == "pcapng" and r.linktypes == []
        rows = [(ts, lt, bytes(d), wl, i) for ts, lt, d, wl, i in r]
        assert r.linktypes == [1, 101, 113] and r.snaplen == 262144 and r.offset == r.size
    assert rows == [
        (1700000000.123456, 1, b"eth", 100, 0),
        (1234.567891234, 101, b"raw", 3, 1),
        (1700000000.5, 113, b"sll" * 5, 15, 2),
        (1700000003.000001, 1, b"", 0, 0),
    ]


def test_pcapng_timestamp_resolution_and_offset_options() -> None:
    body = struct.pack("<HHI", 1, 0, 0)
    body += struct.pack("<HH", 2, 4) + b"eth0"  # if_name: skipped
    body += struct.pack("<HHB3x", 9, 1, 3)  # if_tsresol: milliseconds
    body += struct.pack("<HHq", 14, 8, 1_000_000_000)  # if_tsoffset
    body += struct.pack("<HH", 0, 0)
    shb = pcapng_section([], [])
    epb = pcapng_block(6, struct.pack("<IIIII", 0, 0, 1500, 1, 1) + b"p")
    assert read_ok(shb + pcapng_block(1, body) + epb) == [(1000000001.5, 1, b"p", 1, 0)]


def test_pcapng_simple_packet_block_uses_interface_0_snaplen() -> None:
    buf = pcapng_section(
        [(1, 8), (105, 0)], [(0.0, 0, b"12345678", 20), (0.0, 0, b"abc")], block="spb"
    )
    assert read_ok(buf) == [(0.0, 1, b"12345678", 20, 0), (0.0, 1, b"abc", 3, 0)]


def test_pcapng_obsolete_packet_block() -> None:
    buf = pcapng_section([(1, 0), (12, 0)], [(12.5, 1, b"old", 9)], block="opb")
    assert read_ok(buf) == [(12.5, 12, b"old", 9, 1)]


def test_pcapng_sections_in_both_byte_orders() -> None:
    first = pcapng_section([(1, 0), (101, 0)], [(1.0, 1, b"a"), (2.0, 0, b"b")], byteorder="<")
    second = pcapng_section([(113, 0, 9)], [(3.000000001, 0, b"c")], byteorder=">")
    third = pcapng_section([(105, 0)], [(4.0, 0, b"d")], byteorder="<")
    reader = CaptureReader(first + second + third)
    rows = [(ts, lt, bytes(d), wl, i) for ts, lt, d, wl, i in reader]
    assert rows == [
        (1.0, 101, b"a", 1, 1),
        (2.0, 1, b"b", 1, 0),
        (3.000000001, 113, b"c", 1, 0),
        (4.0, 105, b"d", 1, 0),
    ]
    assert reader.linktypes == [1, 101, 113, 105]
    # ifindex counts from 0 again in each section: interface 1 is gone after the first.
    bad = second + pcapng_block(6, struct.pack(">IIIII", 1, 0, 0, 1, 1) + b"x", ">")
    rows2, err = read_all(first + bad)
    assert len(rows2) == 3 and err is not None
    assert "packet on interface 1, but this section defines 1 interface" in err.reason


def test_pcapng_unknown_blocks_are_skipped() -> None:
    shb_idb = pcapng_section([(1, 0)], [])
    epb = pcapng_block(6, struct.pack("<IIIII", 0, 0, 7, 2, 2) + b"hi")
    blocks = [
        pcapng_block(5, struct.pack("<IIII", 0, 0, 0, 0)),  # interface statistics
        pcapng_block(4, b"\0" * 8),  # name resolution
        pcapng_block(0x00000BAD, b"custom block body"),
        pcapng_block(0x0A, b""),  # decryption secrets, empty
    ]
    buf = shb_idb + blocks[0] + epb + b"".join(blocks[1:]) + epb + pcapng_block(0x40000BAD, b"x")
    assert read_ok(buf) == [(7e-6, 1, b"hi", 2, 0)] * 2


def test_pcapng_header_only_and_empty_sections() -> None:
    assert read_ok(pcapng_section([], [])) == []
    assert read_ok(pcapng_section([(1, 0)], []) * 3) == []


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (pcapng_block(6, struct.pack("<IIIII", 3, 0, 0, 1, 1) + b"x"), "packet on interface 3"),
        (struct.pack("<II", 6, 8) + b"\0" * 24, "pcapng block length 8 is too small"),
        (struct.pack("<II", 99, 14) + b"\0" * 8, "length 14 is not a multiple of 4"),
        (pcapng_block(6, struct.pack("<IIIII", 0, 0, 0, 9, 9) + b"abcd"), "packet length 9"),
        (pcapng_block(2, struct.pack("<HHIIII", 0, 0, 0, 0, 9, 9)), "packet length 9"),
        (pcapng_block(3, struct.pack("<I", 900) + b"abcd"), "simple packet length 900"),
        (pcapng_block(99, b"abcd")[:-4] + b"\0\0\0\0", "16 in header but 0 in trailer"),
        (pcapng_block(1, struct.pack("<HHIHH", 1, 0, 0, 9, 2) + b"\6\6"), "if_tsresol option"),
        (pcapng_block(1, struct.pack("<HHIHHB", 1, 0, 0, 9, 1, 20)), "10^-20 is too fine"),
        (pcapng_block(1, struct.pack("<HHIHHB", 1, 0, 0, 9, 1, 0xC0)), "2^-64 is too fine"),
        (pcapng_block(1, struct.pack("<HHIHH", 1, 0, 0, 14, 4) + b"1234"), "if_tsoffset option"),
        (pcapng_block(1, struct.pack("<HHIHH", 1, 0, 0, 2, 40) + b"name"), "overruns its block"),
        (pcapng_block(1, b"\1\0"), "interface description block length 16"),
        (b"\x0a\x0d\x0d\x0a" + b"\0" * 24, "bad pcapng byte-order magic"),
        (pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1)), "version 2.0"),
    ],
)
def test_pcapng_damage_after_good_packets(tail: bytes, reason: str) -> None:
    good = pcapng_section([(1, 0)], [(1.0, 0, b"one"), (2.0, 0, b"two")])
    rows, err = read_all(good + tail)
    assert [r[2] for r in rows] == [b"one", b"two"]
    assert err is not None and reason in err.reason, err
    assert len(good) - 4 <= err.offset <= len(good) + len(tail)


def test_pcapng_trailer_mismatch_after_a_packet_is_reported_at_the_trailer() -> None:
    # The packet lies before the damaged trailer, so it is yielded first.
    good = pcapng_section([(1, 0)], [(1.0, 0, b"one")])
    epb = pcapng_block(6, struct.pack("<IIIII", 0, 0, 0, 1, 1) + b"x")
    for tail in (b"", pcapng_block(0xBAD, b"")):
        rows, err = read_all(good + epb[:-4] + b"\1\0\0\0" + tail)
        assert [r[2] for r in rows] == [b"one", b"x"]
        assert err is not None and err.offset == len(good) + len(epb) - 4
        assert err.reason == "pcapng block length 36 in header but 1 in trailer"


def test_pcapng_spb_before_any_interface() -> None:
    rows, err = read_all(pcapng_section([], []) + pcapng_block(3, struct.pack("<I", 1) + b"x"))
    assert rows == [] and err is not None and "defines 0 interfaces" in err.reason


# -- damage, truncation, files ----------------------------------------------------------------


def _variants() -> dict[str, bytes]:
    ng = pcapng_section([(1, 0), (101, 0, 9)], [(1.5, 0, b"abcde"), (2.25, 1, b"")])
    ng += pcapng_block(0xBAD, b"skip me")
    ng += pcapng_section([(113, 4)], [(0.0, 0, b"xyzw", 7)], byteorder=">", block="spb")
    ng += pcapng_section([(1, 0)], [(9.0, 0, b"old")], block="opb")
    return {
        "pcap-le-us": pcap_bytes(1, PACKETS[:3]),
        "pcap-be-ns": pcap_bytes(1, PACKETS[:3], nanosecond=True, byteorder=">"),
        "pcap-modified": pcap_bytes(1, PACKETS[:3], modified=True),
        "pcapng": ng,
    }


def _boundaries(buf: bytes) -> set[int]:
    """Offsets at which a cut leaves a well-formed file: record or block ends."""
    if buf[:4] != b"\x0a\x0d\x0d\x0a":
        reader = CaptureReader(buf)
        ends = {24}
        for _ in reader:
            ends.add(reader.offset)
        return ends
    ends, off, order = set(), 0, "<"
    while off < len(buf):
        if buf[off : off + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if buf[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        off += struct.unpack_from(order + "I", buf, off + 4)[0]
        ends.add(off)
    return ends


@pytest.mark.parametrize("name", sorted(_variants()))
def test_truncated_at_every_offset(name: str) -> None:
    full = _variants()[name]
    expected = read_ok(full)
    boundaries = _boundaries(full)
    reader = CaptureReader(full)
    packet_ends = [reader.offset for _ in reader]
    for cut in range(len(full)):
        rows, err = read_all(full[:cut])
        assert rows == expected[: sum(end <= cut for end in packet_ends)], cut
        assert (err is None) == (cut in boundaries), (cut, err)
        if err is not None:
            assert 0 <= err.offset <= cut and "\n" not in str(err)


def test_truncated_files_on_disk(tmp_path: Path) -> None:
    full = _variants()["pcapng"]
    for cut in (0, 3, 20, 40, len(full) - 1):
        path = tmp_path / f"cut{cut}.pcapng"
        path.write_bytes(full[:cut])
        with pytest.raises(CaptureFileError) as info, open_capture(path) as reader:
            for _ in reader:
                pass
        assert info.value.path == str(path)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"\xd4\xc3", "truncated file header (2 of at least 4 bytes)"),
        (b"GIF89a" + b"\0" * 40, "not a pcap or pcapng file (magic 0x47494638"),
        (b"\xd4\xc3\xb2\xa1\2\0\4\0", "truncated pcap file header (8 of 24 bytes)"),
        (b"\x0a\x0d\x0d\x0a\x1c\0\0\0", "truncated pcapng section header"),
        (pcap_bytes(1, [(1.0, b"abc")])[:-1], "truncated record: 3 bytes captured, only 2 left"),
        (pcap_bytes(1, [(1.0, b"abc")]) + b"\0" * 5, "truncated record header (5 of 16 bytes"),
    ],
)
def test_bad_files(data: bytes, reason: str) -> None:
    _rows, err = read_all(data, "f")
    assert err is not None and reason in str(err), err
    assert str(err).startswith("f: corrupt capture file at byte ")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CaptureFileError) as info:
        open_capture(tmp_path / "nope.pcap")
    err = info.value
    assert (err.offset, err.oserror) == (0, True)
    assert str(err) == f"{tmp_path}/nope.pcap: cannot read capture file: No such file or directory"
    with pytest.raises(CaptureFileError, match="Is a directory"):
        open_capture(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.pcap"
    path.write_bytes(pcap_bytes(1, []))
    path.chmod(0)
    with pytest.raises(CaptureFileError, match="Permission denied"):
        open_capture(path)


def test_fifo_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    data = pcap_bytes(1, PACKETS)

    def feed() -> None:
        with open(path, "wb") as f:
            f.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        with open_capture(path) as reader:
            assert reader.size == len(data)
            assert len(list(reader)) == len(PACKETS)
    finally:
        writer.join()


def test_views_outlive_close_and_close_stops_iteration(tmp_path: Path) -> None:
    path = tmp_path / "a.pcap"
    write_pcap(path, 1, PACKETS)
    reader = open_capture(path)
    it = iter(reader)
    first = next(it)
    reader.close()
    reader.close()
    assert bytes(first[2]) == PACKETS[0][1]  # still mapped while the view lives
    assert list(it) == []
    with pytest.raises(ValueError, match="closed"):
        iter(reader)
    with open_capture(path) as again:
        assert [bytes(p[2]) for p in again] == [bytes(p[2]) for p in again] != []


# -- the tcpdump test corpus ------------------------------------------------------------------

# Packet counts from Wireshark (`capinfos -c -M`, equal to `tshark -r FILE | wc -l`).
CORPUS_COUNTS = {
    "802_15_4_beacon.pcap": 1,  # big-endian
    "OSPFv2_Capture_FINAL.pcapng": 30,
    "afs.pcap": 601,
    "bootp_asan.pcap": 1,  # FCS bits in the link-type field
    "dhcp-option-108.pcapng": 2,  # has an interface statistics block
    "empty.pcapng": 0,
    "heap-overflow-1.pcap": 1,
    "huge-tipc-messages.pcap": 13,
    "isup.pcap": 6,  # big-endian
    "lisp_invalid_length.pcap": 1,  # snaplen 2164523008
    "nhrp.pcapng": 25,
    "of13_ericsson.pcapng": 174,
    "pim-packet-assortment.pcap": 245,
    "quic_handshake.pcap": 18,  # snaplen 524288
    "tcp-handshake-nano.pcap": 3,
    "time_2107.pcapng": 1,
    "timestamp_invalid_nano.pcap": 3,
    "unaligned-nfs-1.pcap": 1,
    "unsupported-link-type-dbus.pcap": 2,
    "vsock-1.pcapng": 10,
}
CORPUS_DETAILS = {
    "bootp_asan.pcap": [1],
    "heap-overflow-1.pcap": [101],
    "unsupported-link-type-dbus.pcap": [231],
    "vsock-1.pcapng": [271],
}

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"{CORPUS} is absent")


@needs_corpus
def test_corpus_reads_to_the_end_or_raises_capture_file_error() -> None:
    files = sorted(p for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert len(files) > 100
    for path in files:
        try:
            with open_capture(path) as reader:
                for _ts, _lt, data, _wl, _ifi in reader:
                    assert len(data) <= reader.size
                assert reader.offset == reader.size, path
        except CaptureFileError:
            pass


@needs_corpus
@pytest.mark.parametrize(("name", "count"), sorted(CORPUS_COUNTS.items()))
def test_corpus_packet_counts(name: str, count: int) -> None:
    with open_capture(CORPUS / name) as reader:
        assert sum(1 for _ in reader) == count
        if name in CORPUS_DETAILS:
            assert reader.linktypes == CORPUS_DETAILS[name]


@needs_corpus
def test_corpus_timestamps() -> None:
    with open_capture(CORPUS / "tcp-handshake-nano.pcap") as reader:
        assert next(iter(reader))[0] == pytest.approx(1418145369.924505488, abs=1e-6)
    with open_capture(CORPUS / "time_2107.pcapng") as reader:
        assert [p[0] for p in reader] == [4323283200.0]
