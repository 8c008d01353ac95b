"""A tiny pcap/pcapng writer for tests and tools (the reader is ``netwarden.wire.pcapfile``).

``pcap_bytes``/``pcapng_section`` build a file (or one pcapng section) in memory;
``write_pcap``/``write_pcapng`` write one to a path.  Timestamps are float Unix seconds,
rounded to the file's resolution.  A packet's wire length defaults to its captured length.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

__all__ = [
    "pcap_bytes",
    "pcapng_block",
    "pcapng_section",
    "write_pcap",
    "write_pcapng",
]

PcapPacket = tuple[float, bytes] | tuple[float, bytes, int]
PcapngPacket = tuple[float, int, bytes] | tuple[float, int, bytes, int]
Interface = tuple[int, int] | tuple[int, int, int] | tuple[int, int, int, int]
"""``(linktype, snaplen[, tsresol[, tsoffset]])``; tsresol is the ``if_tsresol`` byte."""

ByteOrder = Literal["<", ">"]


def _ticks(ts: float, per_second: int) -> tuple[int, int]:
    """``ts`` as (whole seconds, fraction in 1/per_second units)."""
    return divmod(round(ts * per_second), per_second)


def pcap_bytes(
    linktype: int,
    packets: Iterable[PcapPacket],
    nanosecond: bool = False,
    byteorder: ByteOrder = "<",
    *,
    snaplen: int = 262144,
    modified: bool = False,
) -> bytes:
    """A classic pcap file; ``modified`` writes the Kuznetzov variant (24-byte records)."""
    return b"".join(_pcap_chunks(linktype, packets, nanosecond, byteorder, snaplen, modified))


def _pcap_chunks(
    linktype: int,
    packets: Iterable[PcapPacket],
    nanosecond: bool,
    byteorder: ByteOrder,
    snaplen: int,
    modified: bool,
) -> Iterator[bytes]:
    if modified and nanosecond:
        raise ValueError("the modified pcap format has microsecond timestamps only")
    magic = 0xA1B2CD34 if modified else 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    per_second = 10**9 if nanosecond else 10**6
    rec = struct.Struct(byteorder + ("IIIIiHBx" if modified else "IIII"))
    yield struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
    extra = (0, 0x0800, 0) if modified else ()
    for ts, data, *rest in packets:
        sec, frac = _ticks(ts, per_second)
        wirelen = rest[0] if rest else len(data)
        yield rec.pack(sec, frac, len(data), wirelen, *extra) + bytes(data)


def pcapng_block(btype: int, body: bytes, byteorder: ByteOrder = "<") -> bytes:
    """One pcapng block: header, ``body`` padded to 4 bytes, trailer."""
    body = body + b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return (
        struct.pack(byteorder + "II", btype, length) + body + struct.pack(byteorder + "I", length)
    )


def _option(code: int, value: bytes, byteorder: ByteOrder) -> bytes:
    return struct.pack(byteorder + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def pcapng_section(
    interfaces: Sequence[Interface],
    packets: Iterable[PcapngPacket],
    tsresol: int = 6,
    byteorder: ByteOrder = "<",
    *,
    block: Literal["epb", "spb", "opb"] = "epb",
) -> bytes:
    """One pcapng section: SHB, one IDB per interface, one packet block per packet.

    ``tsresol`` is the default ``if_tsresol`` byte (bit 7 set: a power of 2).  ``block='spb'``
    writes simple packet blocks (interface 0 only; no timestamp, the captured length must be
    min(wirelen, snaplen)); ``'opb'`` the obsolete packet block.
    """
    return b"".join(_pcapng_chunks(interfaces, packets, tsresol, byteorder, block))


def _pcapng_chunks(
    interfaces: Sequence[Interface],
    packets: Iterable[PcapngPacket],
    tsresol: int,
    byteorder: ByteOrder,
    block: Literal["epb", "spb", "opb"],
) -> Iterator[bytes]:
    e = byteorder
    yield (pcapng_block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e))
    per_second: list[float] = []
    offsets: list[int] = []
    for linktype, snaplen, *opts in interfaces:
        resol = opts[0] if opts else tsresol
        tsoffset = opts[1] if len(opts) > 1 else 0
        options = b""
        if resol != 6:
            options += _option(9, bytes([resol]), e)
        if tsoffset:
            options += _option(14, struct.pack(e + "q", tsoffset), e)
        if options:
            options += _option(0, b"", e)
        yield pcapng_block(1, struct.pack(e + "HHI", linktype, 0, snaplen) + options, e)
        per_second.append(2.0 ** (resol & 0x7F) if resol & 0x80 else 10.0**resol)
        offsets.append(tsoffset)
    for ts, ifindex, data, *rest in packets:
        wirelen = rest[0] if rest else len(data)
        if block == "spb":
            snaplen = interfaces[0][1]
            if ifindex != 0 or len(data) != (min(wirelen, snaplen) if snaplen else wirelen):
                raise ValueError("a simple packet block is on interface 0 and not cut short")
            yield pcapng_block(3, struct.pack(e + "I", wirelen) + bytes(data), e)
            continue
        ticks = round((ts - offsets[ifindex]) * per_second[ifindex])
        hi, lo = divmod(ticks, 1 << 32)
        if block == "opb":
            fixed = struct.pack(e + "HHIIII", ifindex, 0, hi, lo, len(data), wirelen)
            yield pcapng_block(2, fixed + bytes(data), e)
        else:
            fixed = struct.pack(e + "IIIII", ifindex, hi, lo, len(data), wirelen)
            yield pcapng_block(6, fixed + bytes(data), e)


def write_pcap(
    path: str | os.PathLike[str],
    linktype: int,
    packets: Iterable[PcapPacket],
    nanosecond: bool = False,
    byteorder: ByteOrder = "<",
) -> None:
    """Write a classic pcap file."""
    with open(path, "wb") as f:
        f.writelines(_pcap_chunks(linktype, packets, nanosecond, byteorder, 262144, False))


def write_pcapng(
    path: str | os.PathLike[str],
    interfaces: Sequence[Interface],
    packets: Iterable[PcapngPacket],
    tsresol: int = 6,
    byteorder: ByteOrder = "<",
) -> None:
    """Write a one-section pcapng file."""
    with open(path, "wb") as f:
        f.writelines(_pcapng_chunks(interfaces, packets, tsresol, byteorder, "epb"))
