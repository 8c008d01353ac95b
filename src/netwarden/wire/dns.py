"""Pure decoding of DNS responses: the addresses a name resolved to (A/AAAA answers).

Used to learn names from the wire: the name a process asked for before it connected.
Compression pointers are followed with a hop limit; anything malformed gives ``None``.
"""

from __future__ import annotations

import struct

_HDR = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_MAX_HOPS = 32


def _name(buf: bytes, off: int) -> tuple[str, int] | None:
    """(dotted name, offset after the name in the original position) or None."""
    labels: list[str] = []
    end = -1
    hops = 0
    n = len(buf)
    while True:
        if off >= n:
            return None
        ln = buf[off]
        if ln == 0:
            off += 1
            break
        if ln & 0xC0 == 0xC0:
            if off + 1 >= n:
                return None
            if end < 0:
                end = off + 2
            off = ((ln & 0x3F) << 8) | buf[off + 1]
            hops += 1
            if hops > _MAX_HOPS:
                return None
            continue
        if ln & 0xC0:
            return None
        if off + 1 + ln > n:
            return None
        labels.append(buf[off + 1 : off + 1 + ln].decode("ascii", "replace"))
        off += 1 + ln
        if len(labels) > 127:
            return None
    return ".".join(labels), (end if end >= 0 else off)


def parse_answers(payload: bytes | memoryview) -> tuple[str, list[tuple[bytes, int]]] | None:
    """A DNS response → (the question name, [(address bytes, ttl), ...]) for A/AAAA answers.

    Answers reached through CNAMEs count for the question name. None for a query, an error
    response, or anything malformed.
    """
    buf = bytes(payload)
    if len(buf) < _HDR.size:
        return None
    _id, flags, qd, an, _ns, _ar = _HDR.unpack_from(buf, 0)
    if not flags & 0x8000 or flags & 0x000F or qd != 1:
        return None
    q = _name(buf, _HDR.size)
    if q is None:
        return None
    qname, off = q
    off += 4
    out: list[tuple[bytes, int]] = []
    for _ in range(an):
        r = _name(buf, off)
        if r is None:
            return None
        _owner, off = r
        if off + _RR.size > len(buf):
            return None
        rtype, rclass, ttl, rdlen = _RR.unpack_from(buf, off)
        off += _RR.size
        if off + rdlen > len(buf):
            return None
        if rclass == 1 and ((rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16)):
            out.append((buf[off : off + rdlen], ttl))
        off += rdlen
    return (qname, out) if out else None
