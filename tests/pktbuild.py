"""Hand-built packets for tests (struct-packed headers; no scapy)."""

from __future__ import annotations

import struct
from ipaddress import ip_address

ETH_IP4 = 0x0800
ETH_IP6 = 0x86DD


def ether(payload: bytes, ethertype: int = ETH_IP4) -> bytes:
    return (
        b"\x02\x00\x00\x00\x00\x02"
        + b"\x02\x00\x00\x00\x00\x01"
        + struct.pack("!H", ethertype)
        + payload
    )


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 1, frag: int = 0) -> bytes:
    total = 20 + len(payload)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, total, ident, frag, 64, proto, 0,
        ip_address(src).packed, ip_address(dst).packed,
    )  # fmt: skip
    return hdr + payload


def ipv6(src: str, dst: str, nxt: int, payload: bytes) -> bytes:
    hdr = struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), nxt, 64,
        ip_address(src).packed, ip_address(dst).packed,
    )  # fmt: skip
    return hdr + payload


def tcp(sport: int, dport: int, flags: int, payload: bytes = b"", seq: int = 1) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_echo(ident: int, seq: int, reply: bool = False, payload: bytes = b"") -> bytes:
    return struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload


SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


def tcp_session(
    cli: str, srv: str, cport: int, sport: int, request: bytes, response: bytes, t0: float = 1.0
) -> list[tuple[float, bytes]]:
    """An Ethernet/IPv4 TCP session: handshake, request, response, FIN both ways, last ACK."""
    seq = [
        (cli, srv, cport, sport, SYN, b""),
        (srv, cli, sport, cport, SYN | ACK, b""),
        (cli, srv, cport, sport, ACK, b""),
        (cli, srv, cport, sport, PSH | ACK, request),
        (srv, cli, sport, cport, PSH | ACK, response),
        (cli, srv, cport, sport, FIN | ACK, b""),
        (srv, cli, sport, cport, FIN | ACK, b""),
        (cli, srv, cport, sport, ACK, b""),
    ]
    return [
        (t0 + i * 0.01, ether(ipv4(s, d, 6, tcp(sp, dp, fl, data))))
        for i, (s, d, sp, dp, fl, data) in enumerate(seq)
    ]
