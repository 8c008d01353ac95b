"""Pure decoding of rtnetlink address messages (RTM_NEWADDR) into packed addresses."""

from __future__ import annotations

import struct

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTA_HDR = struct.Struct("=HH")  # len, type

NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
AF_INET = 2
AF_INET6 = 10


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_addr_messages(data: bytes) -> tuple[list[tuple[int, int, bytes]], bool]:
    """Decode a buffer of netlink messages.

    Returns ``([(msg_type, ifindex, address), ...], done)`` for RTM_NEWADDR/RTM_DELADDR
    messages (IFA_LOCAL preferred over IFA_ADDRESS, as point-to-point links have both),
    and whether NLMSG_DONE or an error ended the dump. Malformed input stops the parse.
    """
    out: list[tuple[int, int, bytes]] = []
    off = 0
    done = False
    n = len(data)
    while off + NLMSG_HDR.size <= n:
        mlen, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, off)
        if mlen < NLMSG_HDR.size or off + mlen > n:
            break
        if mtype in (NLMSG_DONE, NLMSG_ERROR):
            done = True
        elif mtype in (RTM_NEWADDR, RTM_DELADDR) and mlen >= NLMSG_HDR.size + IFADDRMSG.size:
            base = off + NLMSG_HDR.size
            family, _plen, _fl, _scope, index = IFADDRMSG.unpack_from(data, base)
            size = 4 if family == AF_INET else 16 if family == AF_INET6 else 0
            a = base + IFADDRMSG.size
            found: dict[int, bytes] = {}
            while size and a + RTA_HDR.size <= off + mlen:
                rlen, rtype = RTA_HDR.unpack_from(data, a)
                if rlen < RTA_HDR.size or a + rlen > off + mlen:
                    break
                if rtype in (IFA_ADDRESS, IFA_LOCAL) and rlen - RTA_HDR.size == size:
                    found[rtype] = bytes(data[a + 4 : a + 4 + size])
                a += _align(rlen)
            addr = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
            if addr is not None:
                out.append((mtype, index, addr))
        off += _align(mlen)
    return out, done


def addr_dump_request(seq: int = 1) -> bytes:
    """An RTM_GETADDR dump request for every family."""
    body = IFADDRMSG.pack(0, 0, 0, 0, 0)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), RTM_GETADDR, 0x301, seq, 0) + body
