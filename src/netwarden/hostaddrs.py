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


def _proc_net_addr(hexaddr: str) -> bytes:
    """/proc/net/tcp's address field (32-bit words in host byte order) → packed bytes."""
    raw = bytes.fromhex(hexaddr)
    return b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))


def established_peers(root: str = "/proc") -> set[bytes]:
    """Remote addresses of this namespace's ESTABLISHED TCP sockets (packed; IPv4-mapped
    IPv6 peers are given as IPv4). Read from ``root``/net/tcp and tcp6 (``root`` injectable)."""
    peers: set[bytes] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{root}/net/{name}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 4 or parts[3] != "01":  # TCP_ESTABLISHED
                        continue
                    addr = _proc_net_addr(parts[2].split(":")[0])
                    if len(addr) == 16 and addr[:12] == b"\0" * 10 + b"\xff\xff":
                        addr = addr[12:]
                    peers.add(addr)
        except (OSError, ValueError):
            continue
    return peers


RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100


class AddressWatcher:
    """Tells when this namespace's addresses change (rtnetlink address notifications).

    Non-blocking: :meth:`changed` drains whatever notifications arrived and says whether any
    did; the caller then re-reads :func:`local_addresses`. Call it from the daemon's loop.
    """

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            s.setblocking(False)
            self.sock = s
        except OSError as exc:
            log.warning("cannot watch address changes (%s): own addresses are read once", exc)

    def changed(self) -> bool:
        if self.sock is None:
            return False
        seen = False
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return seen
            except OSError:
                # ENOBUFS: notifications were lost; re-reading is the right answer anyway
                return True
            if not data:
                return seen
            seen = True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
