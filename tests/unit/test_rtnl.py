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


def test_established_peers_from_a_fake_proc(tmp_path: object) -> None:
    from pathlib import Path

    from netwarden.hostaddrs import established_peers

    root = Path(str(tmp_path))
    (root / "net").mkdir()
    head = "  sl  local_address rem_address   st tx_queue rx_queue\n"
    (root / "net" / "tcp").write_text(
        head
        + "   0: 0100007F:0016 0201A8C0:D431 01 00000000:00000000\n"  # 192.168.1.2 established
        + "   1: 00000000:0050 00000000:0000 0A 00000000:00000000\n"  # listening
    )
    (root / "net" / "tcp6").write_text(
        head + "   0: 00000000000000000000000001000000:0016 "
        "0000000000000000FFFF00000A01A8C0:D432 01 0\n"  # ::ffff:192.168.1.10
         + "   1: 00000000000000000000000001000000:0016 "
        "B80D0120000000000000000001000000:D433 01 0\n"  # 2001:db8::1
    )
    peers = established_peers(str(root))
    assert peers == {bytes([192, 168, 1, 2]), bytes([192, 168, 1, 10]),
                     bytes.fromhex("20010db8000000000000000000000001")}  # fmt: skip
