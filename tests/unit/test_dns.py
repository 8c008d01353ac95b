"""DNS answer decoding, from hand-built responses, truncated and hostile variants."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from netwarden.wire.dns import parse_answers


def qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def response(name: str, answers: list[tuple[int, bytes, int]], cname: str | None = None) -> bytes:
    body = qname(name) + struct.pack("!HH", 1, 1)
    rrs = b""
    count = 0
    if cname:
        target = qname(cname)
        rrs += b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, len(target)) + target
        count += 1
    for rtype, data, ttl in answers:
        rrs += b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, ttl, len(data)) + data
        count += 1
    return struct.pack("!HHHHHH", 7, 0x8180, 1, count, 0, 0) + body + rrs


def test_a_and_aaaa_answers() -> None:
    r = response("www.example.com", [(1, bytes([192, 0, 2, 1]), 300), (28, bytes(16), 60)])
    assert parse_answers(r) == ("www.example.com", [(bytes([192, 0, 2, 1]), 300), (bytes(16), 60)])


def test_cname_chain_counts_for_question() -> None:
    r = response("a.example.org", [(1, bytes([198, 51, 100, 9]), 30)], cname="b.example.net")
    assert parse_answers(r) == ("a.example.org", [(bytes([198, 51, 100, 9]), 30)])


def test_queries_errors_and_pointer_loops() -> None:
    r = bytearray(response("x.example", [(1, bytes(4), 1)]))
    q = bytes(r)
    r[2] &= 0x7F  # a query, not a response
    assert parse_answers(bytes(r)) is None
    nx = struct.pack("!HHHHHH", 1, 0x8183, 1, 0, 0, 0) + qname("nx.example") + b"\0\x01\0\x01"
    assert parse_answers(nx) is None
    loop = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + b"\xc0\x0c" + b"\0\x01\0\x01"
    assert parse_answers(loop) is None
    for cut in range(len(q)):
        parse_answers(q[:cut])


@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse_answers(data)
