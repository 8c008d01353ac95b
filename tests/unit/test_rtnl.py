"""rtnetlink address messages."""

from __future__ import annotations

import struct

from netwarden.wire.rtnl import (
    IFADDRMSG,
    NLMSG_HDR,
    RTM_NEWADDR,
    addr_dump_request,
    parse_addr_messages,
)


def addr_msg(family: int, index: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = IFADDRMSG.pack(family, 24, 0, 0, index)
    for t, v in attrs:
        a = struct.pack("=HH", 4 + len(v), t) + v
        body += a + b"\0" * (-len(a) % 4)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), RTM_NEWADDR, 2, 1, 0) + body


def test_parse_v4_v6_prefers_local_and_sees_done() -> None:
    data = addr_msg(2, 3, [(1, bytes([10, 0, 0, 2])), (2, bytes([10, 0, 0, 1]))])
    data += addr_msg(10, 4, [(1, bytes(range(16)))])
    data += NLMSG_HDR.pack(20, 3, 2, 1, 0) + b"\0\0\0\0"
    msgs, done = parse_addr_messages(data)
    assert done
    assert msgs == [(RTM_NEWADDR, 3, bytes([10, 0, 0, 1])), (RTM_NEWADDR, 4, bytes(range(16)))]


def test_truncated_and_garbage_do_not_raise() -> None:
    data = addr_msg(2, 3, [(2, bytes([10, 0, 0, 1]))])
    for cut in range(len(data)):
        parse_addr_messages(data[:cut])
    parse_addr_messages(b"\xff" * 64)
    assert len(addr_dump_request()) == 24
