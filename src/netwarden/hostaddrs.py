"""The addresses of this host (of the network namespace we run in), through rtnetlink."""

from __future__ import annotations

import logging
import socket

from netwarden.wire.rtnl import RTM_NEWADDR, addr_dump_request, parse_addr_messages

log = logging.getLogger(__name__)


def local_addresses() -> frozenset[bytes]:
    """Every address configured in this namespace, packed (4 or 16 bytes).

    Loopback addresses are included (so loopback traffic is ``local``). On failure the
    result is empty and one line is logged: every flow then reads as ``transit``.
    """
    addrs: set[bytes] = set()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
            s.settimeout(2.0)
            s.send(addr_dump_request())
            done = False
            while not done:
                data = s.recv(65536)
                if not data:
                    break
                msgs, done = parse_addr_messages(data)
                addrs.update(a for t, _i, a in msgs if t == RTM_NEWADDR)
    except OSError as exc:
        log.warning("cannot read this host's addresses (%s): directions will read 'transit'", exc)
    return frozenset(addrs)
