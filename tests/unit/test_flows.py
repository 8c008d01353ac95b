"""The flow table, fed decoder-shaped tuples (no packets needed)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from netwarden.events import Direction, Event, EventType
from netwarden.stats.flows import FlowTable, Timeouts

A = ip_address("192.0.2.1").packed
B = ip_address("198.51.100.7").packed
C = ip_address("203.0.113.9").packed
D = ip_address("203.0.113.10").packed
A6 = ip_address("2001:db8::1").packed
B6 = ip_address("2001:db8::2").packed

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def pkt(
    src: bytes,
    dst: bytes,
    sport: int | None,
    dport: int | None,
    proto: int = 6,
    length: int = 60,
    flags: int = ACK,
    frag: int = 0,
    fragid: int = 0,
    aux: int | None = None,
) -> tuple[object, ...]:
    family = 4 if len(src) == 4 else 6
    return (family, proto, src, dst, sport, dport, length, flags, frag, fragid, aux, 0)


def table(**kw: object) -> tuple[FlowTable, list[Event]]:
    out: list[Event] = []
    t = FlowTable(out.append, id_prefix="t", **kw)  # type: ignore[arg-type]
    return t, out


def test_tcp_connection_new_end_counts() -> None:
    t, out = table(local_addrs=[A])
    t.packet(1.0, pkt(A, B, 40000, 80, flags=SYN, length=60))
    t.packet(1.1, pkt(B, A, 80, 40000, flags=SYN | ACK, length=60))
    t.packet(1.2, pkt(A, B, 40000, 80, flags=ACK, length=52))
    t.packet(1.3, pkt(A, B, 40000, 80, flags=ACK, length=152))
    t.packet(1.4, pkt(B, A, 80, 40000, flags=FIN | ACK, length=52))
    t.packet(1.5, pkt(A, B, 40000, 80, flags=FIN | ACK, length=52))
    t.packet(1.6, pkt(B, A, 80, 40000, flags=ACK, length=52))
    assert [e.event for e in out] == [EventType.NEW]
    new = out[0]
    assert (str(new.src), new.sport, str(new.dst), new.dport) == (
        "192.0.2.1",
        40000,
        "198.51.100.7",
        80,
    )
    assert new.direction is Direction.OUT
    assert new.orig_pkts == 1 and new.orig_bytes == 60 and new.resp_pkts == 0
    t.expire(2.0)  # linger (2 s) not over yet
    assert len(out) == 1
    t.expire(3.6)
    assert [e.event for e in out] == [EventType.NEW, EventType.END]
    end = out[1]
    assert end.flow == new.flow
    assert (end.orig_pkts, end.orig_bytes, end.resp_pkts, end.resp_bytes) == (4, 316, 3, 164)
    assert end.duration == pytest.approx(0.6)
    assert end.ts == 1.6


def test_rst_ends_and_new_syn_on_closing_tuple_starts_new_flow() -> None:
    t, out = table()
    t.packet(1.0, pkt(A, B, 1, 2, flags=SYN))
    t.packet(1.1, pkt(B, A, 2, 1, flags=RST | ACK))
    t.packet(1.2, pkt(A, B, 1, 2, flags=SYN))
    kinds = [(e.event, e.flow) for e in out]
    assert kinds == [(EventType.NEW, "t-1"), (EventType.END, "t-1"), (EventType.NEW, "t-2")]
    assert out[1].resp_pkts == 1


def test_synack_first_makes_its_receiver_the_initiator() -> None:
    t, out = table(local_addrs=[B])
    t.packet(5.0, pkt(B, A, 443, 5555, flags=SYN | ACK))
    e = out[0]
    assert (str(e.src), e.sport, e.dport) == ("192.0.2.1", 5555, 443)
    assert e.direction is Direction.IN
    assert e.resp_pkts == 1 and e.orig_pkts == 0


def test_udp_idle_timeouts_one_way_and_stream() -> None:
    t, out = table(timeouts=Timeouts(udp=30, udp_stream=120))
    t.packet(0.0, pkt(A, B, 5000, 53, proto=17))
    t.packet(0.0, pkt(A, C, 5001, 53, proto=17))
    t.packet(0.5, pkt(C, A, 53, 5001, proto=17))  # answered: a stream
    t.expire(29.0)
    assert [e.event for e in out] == [EventType.NEW, EventType.NEW]
    t.expire(31.0)
    assert out[-1].event is EventType.END and str(out[-1].dst) == "198.51.100.7"
    t.expire(100.0)
    assert len(out) == 3
    t.expire(121.0)
    assert out[-1].event is EventType.END and str(out[-1].dst) == "203.0.113.9"


def test_icmp_echo_keyed_by_identifier_and_other_by_type() -> None:
    t, out = table()
    t.packet(0, pkt(A, B, None, None, proto=1, aux=77))
    t.packet(0, pkt(B, A, None, None, proto=1, aux=77))  # the reply
    t.packet(0, pkt(A, B, None, None, proto=1, aux=78))  # another ping process
    t.packet(0, pkt(B, A, None, None, proto=1, aux=0x10003))  # unreachable
    t.close()
    ends = [e for e in out if e.event is EventType.END]
    assert len(ends) == 3
    echo = next(e for e in ends if e.orig_pkts == 1 and e.resp_pkts == 1)
    assert echo.sport is None and echo.dport is None


def test_fragments_follow_their_first_fragment_else_null_ports() -> None:
    t, out = table()
    t.packet(0, pkt(A, B, 7000, 7001, proto=17, length=1500, frag=1, fragid=9))
    t.packet(0, pkt(A, B, None, None, proto=17, length=500, frag=2, fragid=9))
    t.packet(0, pkt(A, B, None, None, proto=17, length=300, frag=2, fragid=10))
    t.close()
    ends = {(e.sport, e.dport): e for e in out if e.event is EventType.END}
    assert ends[(7000, 7001)].orig_bytes == 2000 and ends[(7000, 7001)].orig_pkts == 2
    assert ends[(None, None)].orig_bytes == 300


def test_lru_eviction_emits_end_and_counts() -> None:
    t, out = table(max_flows=2)
    t.packet(1, pkt(A, B, 1, 1, proto=17))
    t.packet(2, pkt(A, B, 2, 2, proto=17))
    t.packet(3, pkt(A, B, 1, 1, proto=17))  # flow 1 is now the most recent
    t.packet(4, pkt(A, B, 3, 3, proto=17))
    assert t.evicted == 1
    ends = [e for e in out if e.event is EventType.END]
    assert [e.sport for e in ends] == [2]
    assert len(t.flows) == 2


def test_directions_and_ipv6() -> None:
    t, out = table(local_addrs=[A, A6])
    t.packet(0, pkt(A6, B6, 1, 2, flags=SYN))
    t.packet(0, pkt(B6, A6, 3, 4, flags=SYN))
    t.packet(0, pkt(B, C, 5, 6, flags=SYN))
    t.packet(0, pkt(A, A, 7, 8, flags=SYN))
    t.packet(0, pkt(ip_address("127.0.0.5").packed, ip_address("127.0.0.1").packed, 9, 9, proto=17))
    dirs = [e.direction for e in out]
    assert dirs == [
        Direction.OUT,
        Direction.IN,
        Direction.TRANSIT,
        Direction.LOCAL,
        Direction.LOCAL,
    ]
    assert out[0].family == 6 and str(out[0].src) == "2001:db8::1"


def test_tcp_connections_only_hides_midstream_and_udp() -> None:
    t, out = table(tcp_connections_only=True)
    t.packet(0, pkt(A, B, 1, 2, flags=ACK))  # picked up mid-stream
    t.packet(0, pkt(A, B, 3, 4, proto=17))
    t.packet(0, pkt(A, B, 5, 6, flags=SYN))
    t.close()
    assert [(e.event, e.sport) for e in out] == [(EventType.NEW, 5), (EventType.END, 5)]
    assert t.flows_total == 3


def test_gso_segments_count_packets_and_headers() -> None:
    t, out = table()
    t.packet(0, pkt(A, B, 1, 2, flags=SYN, length=2960), segs=2, extra=52)
    t.close()
    end = out[-1]
    assert end.orig_pkts == 2 and end.orig_bytes == 3012


def test_event_json_roundtrip() -> None:
    t, out = table()
    t.packet(0.25, pkt(A, B, 1, 2, flags=SYN))
    e = out[0]
    assert Event.from_dict(e.to_dict()) == e
    d = e.to_dict()
    assert d["src"] == "192.0.2.1" and d["proto"] == "tcp" and d["pid"] is None
    assert d["source"] == "sniff" and d["attribution"] == "none"


def test_active_since_snapshots_recent_open_flows() -> None:
    t, out = table()
    t.packet(1.0, pkt(A, B, 1, 2, proto=17))
    t.packet(3.0, pkt(A, C, 3, 4, proto=17))
    t.packet(6.0, pkt(A, C, 3, 4, proto=17, length=100))
    t.packet(6.5, pkt(A, D, 5, 6, proto=17))  # one packet: its `new` said it all
    snaps = t.active_since(4.0)
    assert [(e.sport, e.orig_pkts, e.orig_bytes, e.event, e.duration) for e in snaps] == [
        (3, 2, 160, EventType.NEW, 3.0)
    ]
    assert snaps[0].flow == out[1].flow


def test_a_timed_out_flow_is_ended_by_its_next_packet() -> None:
    t, out = table()
    t.packet(0.0, pkt(A, B, 5, 6, flags=SYN))
    t.packet(0.1, pkt(B, A, 6, 5, flags=RST | ACK))
    t.packet(3.0, pkt(A, B, 5, 6, flags=ACK))  # past the 2 s linger, no expire() in between
    t.packet(3.1, pkt(B, A, 6, 5, flags=RST))
    t.packet(40.0, pkt(A, C, 7, 8, proto=17))
    t.packet(71.0, pkt(A, C, 7, 8, proto=17))  # UDP idle 31 s > 30 s
    t.close()
    ends = [(e.sport, e.orig_pkts, e.resp_pkts) for e in out if e.event is EventType.END]
    assert sorted(ends) == [(5, 1, 1), (5, 1, 1), (7, 1, 0), (7, 1, 0)]


# ------------------------------------------------------------------ unconfirmed flows
def _spoofed(i: int) -> bytes:
    return bytes([10, 66, i >> 8, i & 0xFF])


def test_a_spoofed_flood_evicts_only_unconfirmed_flows() -> None:
    """A flow is confirmed once its initiator speaks again after a reply; a spoofed source
    never does, so the flood churns the unconfirmed share and the connections stay."""
    t, out = table(local_addrs=[B], max_flows=64, max_unconfirmed=8)
    for port in (1000, 1001):  # two real connections: handshake, then data
        t.packet(1.0, pkt(A, B, port, 22, flags=SYN))
        t.packet(1.0, pkt(B, A, 22, port, flags=SYN | ACK))
        t.packet(1.0, pkt(A, B, port, 22, flags=ACK))
    t.packet(1.0, pkt(C, B, 5353, 53, proto=17))  # a DNS query answered ...
    t.packet(1.0, pkt(B, C, 53, 5353, proto=17))  # ... but never followed up: unconfirmed
    for i in range(200):  # SYNs from spoofed sources, each answered by a SYN+ACK
        t.packet(2.0 + i / 1000, pkt(_spoofed(i), B, 40000, 80, flags=SYN))
        t.packet(2.0 + i / 1000, pkt(B, _spoofed(i), 80, 40000, flags=SYN | ACK))
    assert t.unconfirmed == 8 and len(t.flows) == 10
    ended = [e for e in out if e.event is EventType.END]
    assert len(ended) == t.evicted == 200 + 1 - 8  # the DNS flow went first, being oldest
    assert {e.sport for e in ended} >= {5353}
    assert not any(e.dport == 22 for e in ended)  # the connections are still open
    assert {(f.sport, f.dport) for f in t.flows.values()} >= {(1000, 22), (1001, 22)}


def test_max_unconfirmed_defaults_to_no_bound_of_its_own() -> None:
    t, _out = table(max_flows=16)
    assert t.max_unconfirmed == 16
    for i in range(16):
        t.packet(1.0, pkt(_spoofed(i), B, 40000, 80, flags=SYN))
    assert t.unconfirmed == 16 and t.evicted == 0
    assert table(max_flows=16, max_unconfirmed=99)[0].max_unconfirmed == 16  # capped


def test_a_half_open_flow_times_out_like_an_unanswered_one() -> None:
    """SYN, SYN+ACK and nothing more (a half-open scan, a spoofed source): the SYN timeout
    (120 s), not the established one (5 days)."""
    t, out = table()
    t.packet(0.0, pkt(A, B, 40000, 80, flags=SYN))
    t.packet(0.0, pkt(B, A, 80, 40000, flags=SYN | ACK))
    t.expire(119.0)
    assert [e.event for e in out] == [EventType.NEW]
    t.expire(121.0)
    assert [e.event for e in out] == [EventType.NEW, EventType.END]
    # with the handshake's ACK it is established and stays
    t, out = table()
    t.packet(0.0, pkt(A, B, 40000, 80, flags=SYN))
    t.packet(0.0, pkt(B, A, 80, 40000, flags=SYN | ACK))
    t.packet(0.0, pkt(A, B, 40000, 80, flags=ACK))
    t.expire(3600.0)
    assert [e.event for e in out] == [EventType.NEW] and t.unconfirmed == 0


def test_the_captured_fast_path_confirms_flows_too() -> None:
    """feed_captured (the live path) moves flows between the same queues as packet()."""
    from netwarden.stats.packets import PacketCounter
    from tests import pktbuild as pb

    t, _out = table(local_addrs=[B], max_flows=64, max_unconfirmed=4)
    counter = PacketCounter(t)

    def frame(src: str, dst: str, sport: int, dport: int, flags: int) -> tuple[object, ...]:
        data = pb.ether(pb.ipv4(src, dst, 6, pb.tcp(sport, dport, flags)))
        return (1.0, data, len(data), 1, 1, 1)

    a, b = "192.0.2.1", "198.51.100.7"
    counter.feed(
        [
            frame(a, b, 1000, 22, SYN),
            frame(b, a, 22, 1000, SYN | ACK),
            frame(a, b, 1000, 22, ACK),
            frame(a, b, 1000, 22, ACK | 0x08),
            frame(b, a, 22, 1000, ACK),
        ]
    )
    assert t.unconfirmed == 0 and len(t.flows) == 1
    counter.feed([frame(f"10.66.0.{i}", b, 40000, 80, SYN) for i in range(1, 20)])
    assert t.unconfirmed == 4 and len(t.flows) == 5 and t.evicted == 15
