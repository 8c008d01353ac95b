"""The flow table: packets in, ``new`` and ``end`` events out.

Pure: no I/O, the clock is an argument. A flow is a direction-independent 5-tuple (for ICMP
the addresses plus the echo identifier or the message type); its initiator is the sender of
the first packet seen, except that a TCP SYN+ACK seen first makes its receiver the initiator.
Per direction it counts IP-layer bytes and packets.

A flow ends

- TCP: after a RST, or after a FIN from each side, once ``close_linger`` seconds have passed
  (so the last ACKs still count); a new SYN on a closing flow ends it at once;
- any protocol: when idle longer than its timeout (conntrack's defaults, see
  :class:`Timeouts`);
- when the table is full (``max_flows``): the least recently active flow is evicted, with an
  ``end`` event, and counted in ``evicted``; likewise the least recently active
  *unconfirmed* flow when those reach ``max_unconfirmed``. A flow is confirmed when its
  initiator sends again after a reply was seen (a TCP handshake's ACK, a UDP or ICMP
  exchange that goes on): a spoofed source never gets there, so a flood of them churns
  the unconfirmed share of the table and leaves the established connections alone;
- on :meth:`FlowTable.close` (end of a replay, a clean stop): every flow still open.

Hot path: :meth:`FlowTable.packet` takes the decoder's plain tuple. Keys are tuples of
bytes and ints; ``ipaddress`` objects and text are made only when an event is emitted.
Flows are kept in one dict per timeout class, each ordered by last activity, so expiry
looks only at the oldest entries of each class.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from netwarden.events import Direction, Event, EventType, Proto, Source
from netwarden.wire.packet import (
    F_FAMILY,
    F_FRAG,
    F_FRAGID,
    F_L4OFF,
    F_LEN,
    F_PROTO,
)

_FIN = 0x01
_SYN = 0x02
_RST = 0x04
_ACK = 0x10

_TCP = 6
_UDP = 17

# Timeout classes: the index of the queue a flow sits in.
_Q_TCP_OPEN = 0  # SYN seen, no reply yet (or picked up mid-stream, one direction only)
_Q_TCP_EST = 1  # confirmed: the initiator spoke again after a reply (the handshake's ACK)
_Q_CLOSING = 2  # RST or FIN both ways: ends after close_linger
_Q_UDP = 3  # one direction only
_Q_UDP_STREAM = 4  # confirmed: the initiator sent again after a reply
_Q_ICMP = 5
_Q_OTHER = 6
_Q_TCP_REPLIED = 7  # a reply seen (a SYN+ACK), the initiator silent since
_Q_UDP_REPLIED = 8  # a reply seen, the initiator silent since (a one-shot DNS query)
_NQ = 9
#: a reply moves a flow from the first queue to the second
_ON_REPLY = {_Q_TCP_OPEN: _Q_TCP_REPLIED, _Q_UDP: _Q_UDP_REPLIED}
#: the initiator's next packet confirms it
_ON_CONFIRM = {_Q_TCP_REPLIED: _Q_TCP_EST, _Q_UDP_REPLIED: _Q_UDP_STREAM}
#: unconfirmed flows (anybody can make them with spoofed packets), and closing ones (a
#: spoofed SYN answered by RST lingers there; ending anyway): bounded apart
_UNCONFIRMED = (_Q_TCP_OPEN, _Q_TCP_REPLIED, _Q_UDP, _Q_UDP_REPLIED, _Q_ICMP, _Q_OTHER, _Q_CLOSING)

_MAX_FRAGS = 4096


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Idle timeouts in seconds, conntrack's defaults (nf_conntrack_*_timeout_*)."""

    tcp_open: float = 120.0  # tcp_timeout_syn_sent
    tcp_established: float = 432000.0  # tcp_timeout_established (5 days)
    close_linger: float = 2.0  # after RST / FIN both ways, for the last ACKs
    udp: float = 30.0  # udp_timeout
    udp_stream: float = 120.0  # udp_timeout_stream
    icmp: float = 30.0  # icmp_timeout
    other: float = 600.0  # generic_timeout

    def by_queue(self) -> tuple[float, ...]:
        return (
            self.tcp_open,
            self.tcp_established,
            self.close_linger,
            self.udp,
            self.udp_stream,
            self.icmp,
            self.other,
            self.tcp_open,  # replied, not yet confirmed (conntrack's SYN_RECV is shorter)
            self.udp_stream,
        )


class Flow:
    """One flow's state. Mutable, internal to the table."""

    __slots__ = (
        "aux",
        "closing",
        "dport",
        "dst",
        "family",
        "fins",
        "first",
        "id",
        "iface",
        "key",
        "last",
        "obytes",
        "opkts",
        "proto",
        "q",
        "rbytes",
        "rpkts",
        "sport",
        "src",
        "syn",
    )

    def __init__(
        self,
        key: tuple[object, ...],
        fid: str,
        family: int,
        proto: int,
        src: bytes,
        sport: int | None,
        dst: bytes,
        dport: int | None,
        aux: int | None,
        now: float,
        iface: str | None,
        q: int,
    ) -> None:
        self.key = key
        self.id = fid
        self.family = family
        self.proto = proto
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
        self.aux = aux
        self.first = now
        self.last = now
        self.opkts = 0
        self.obytes = 0
        self.rpkts = 0
        self.rbytes = 0
        self.closing = 0.0
        self.fins = 0  # bit 1: initiator sent FIN, bit 2: responder did
        self.syn = False  # began with a SYN (a real new TCP connection)
        self.iface = iface
        self.q = q


def segment_headers(r: tuple[int, ...], data: bytes | memoryview, wirelen: int, segs: int) -> int:
    """The IP and transport header bytes of the segments after the first of a GSO packet.

    The link header is what the wire length has beyond the IP length; the transport header
    is TCP's data offset (8 for UDP).
    """
    l4 = r[F_L4OFF]
    iphdr = l4 - (wirelen - r[F_LEN])
    if r[F_PROTO] == 6 and len(data) > l4 + 12:
        l4hdr = (data[l4 + 12] >> 4) * 4
    else:
        l4hdr = 8
    return (segs - 1) * max(0, iphdr + l4hdr)


_ADDRS: dict[bytes, IPv4Address | IPv6Address] = {}
_ADDRS_MAX = 4096


def _addr(b: bytes) -> IPv4Address | IPv6Address:
    """The address object of packed bytes, shared while recent: this host's own addresses
    are on every flow (one object instead of one per event), and a flood of one-off
    sources only recycles the small cache."""
    a = _ADDRS.get(b)
    if a is None:
        if len(_ADDRS) >= _ADDRS_MAX:
            _ADDRS.clear()
        a = _ADDRS[b] = IPv4Address(b) if len(b) == 4 else IPv6Address(b)
    return a


class FlowTable:
    """Tracks flows from decoded packets and emits ``new``/``end`` events to ``emit``.

    ``local_addrs`` (addresses as packed bytes) decide each flow's direction; with none,
    every flow is ``transit``. ``iface_name`` maps a packet's interface index to a name.
    ``tcp_connections_only`` keeps the events of TCP flows that began with a SYN (ptrap's and
    tcptracker's "new TCP connections"); the others are still tracked and counted.
    """

    def __init__(
        self,
        emit: Callable[[Event], None],
        *,
        source: Source = Source.SNIFF,
        local_addrs: Iterable[bytes] = (),
        timeouts: Timeouts | None = None,
        max_flows: int = 262144,
        max_unconfirmed: int | None = None,
        id_prefix: str | None = None,
        iface_name: Callable[[int], str | None] | None = None,
        emit_new: bool = True,
        tcp_connections_only: bool = False,
    ) -> None:
        self._emit = emit
        self.source = source
        self.local_addrs: frozenset[bytes] = frozenset(local_addrs)
        self.timeouts = timeouts or Timeouts()
        self._tmo = self.timeouts.by_queue()
        self.max_flows = max(1, max_flows)
        #: at most this many unconfirmed flows (default: no bound of their own): a flood of
        #: spoofed sources then evicts its own kind, never the confirmed connections
        self.max_unconfirmed = max(
            1, self.max_flows if max_unconfirmed is None else min(max_unconfirmed, max_flows)
        )
        self._prefix = id_prefix if id_prefix is not None else secrets.token_hex(3)
        self._seq = 0
        self._iface_name = iface_name
        self._emit_new = emit_new
        self._syn_only = tcp_connections_only
        self.flows: dict[tuple[object, ...], Flow] = {}
        self._queues: list[OrderedDict[tuple[object, ...], Flow]] = [
            OrderedDict() for _ in range(_NQ)
        ]
        self._frags: dict[tuple[object, ...], tuple[object, ...]] = {}
        # counters (packets and bytes of ended flows; open flows are added on demand)
        self._ended_pkts = 0
        self._ended_bytes = 0
        self._ended_proto: dict[int, int] = {}
        self.flows_total = 0
        self.evicted = 0

    # ------------------------------------------------------------------ hot path
    def packet(
        self, ts: float, p: tuple[Any, ...], ifindex: int = 0, segs: int = 1, extra: int = 0
    ) -> None:
        """Account one decoded packet (the decoder's tuple) seen at ``ts``.

        ``segs`` > 1 marks an offloaded (GSO/GRO) super-packet of that many segments: it counts
        as that many packets, and ``extra`` bytes (the IP and transport headers of the segments
        after the first) are added to its IP length, so bytes count as on the wire.
        """
        # the hot path: one unpack, one key, one lookup, a few attribute updates
        _fam, proto, src, dst, sport, dport, nbytes, flags, frag, _fid, aux, _l4 = p
        if frag:
            sport, dport, aux = self._fragment(p, src, dst, proto, sport, dport, aux)
        if src < dst or (src == dst and (sport or 0) <= (dport or 0)):
            key = (proto, src, sport, dst, dport, aux)
        else:
            key = (proto, dst, dport, src, sport, aux)
        f = self.flows.get(key)
        if proto != _TCP:
            flags = 0
        new = False
        if f is None or f.closing or ts - f.last > self._tmo[f.q]:
            f, new = self._slow(f, key, p, src, sport, dst, dport, aux, flags, ts, ifindex)
        else:
            self._queues[f.q].move_to_end(key)
        if extra:
            nbytes += extra
        f.last = ts
        if sport == f.sport and src == f.src:
            f.opkts += segs
            f.obytes += nbytes
            if f.q in _ON_CONFIRM:
                self._move(f, _ON_CONFIRM[f.q])
            if flags & 5:  # FIN or RST
                self._fin_rst(f, flags, True, ts)
        else:
            f.rpkts += segs
            f.rbytes += nbytes
            if f.q in _ON_REPLY:
                self._move(f, _ON_REPLY[f.q])
            if flags & 5:
                self._fin_rst(f, flags, False, ts)
        if new and self._emit_new and (f.syn or not self._syn_only):
            self._emit(self._event(f, EventType.NEW))

    def feed_captured(
        self,
        batch: Iterable[tuple[Any, ...]],
        decoder: Callable[[int], Callable[[Any, int], Any] | None],
    ) -> tuple[int, int, int]:
        """Decode and account a batch of captured packets ``(ts, data, wirelen, linktype,
        ifindex, segs)``: :meth:`packet` inlined for the common case (a known, open flow; no
        fragment, no offload) to save a call per packet; anything else goes through it.
        Returns (not IP, malformed, unsupported link type) counts."""
        flows_get = self.flows.get
        queues = self._queues
        tmo = self._tmo
        slow = self.packet
        on_reply = _ON_REPLY
        on_confirm = _ON_CONFIRM
        last_lt = -1
        dec: Callable[[Any, int], Any] | None = None
        other = malformed = unsupported = 0
        for ts, data, wirelen, linktype, ifindex, segs in batch:
            if linktype != last_lt:
                last_lt = linktype
                dec = decoder(linktype)
            if dec is None:
                unsupported += 1
                continue
            r = dec(data, wirelen)
            if not r:
                if r is None:
                    other += 1
                else:
                    malformed += 1
                continue
            _fam, proto, src, dst, sport, dport, nbytes, flags, frag, _fid, aux, _l4 = r
            if frag or segs != 1:
                if segs != 1:
                    slow(ts, r, ifindex, segs, segment_headers(r, data, wirelen, segs))
                else:
                    slow(ts, r, ifindex)
                continue
            if src < dst or (src == dst and (sport or 0) <= (dport or 0)):
                key = (proto, src, sport, dst, dport, aux)
            else:
                key = (proto, dst, dport, src, sport, aux)
            f = flows_get(key)
            if f is None or f.closing or ts - f.last > tmo[f.q] or (proto == _TCP and flags & 5):
                slow(ts, r, ifindex)
                continue
            qi = f.q
            queues[qi].move_to_end(key)
            f.last = ts
            if sport == f.sport and src == f.src:
                f.opkts += 1
                f.obytes += nbytes
                if qi in on_confirm:
                    self._move(f, on_confirm[qi])
            else:
                f.rpkts += 1
                f.rbytes += nbytes
                if qi in on_reply:
                    self._move(f, on_reply[qi])
        return other, malformed, unsupported

    def _fragment(
        self,
        p: tuple[object, ...],
        src: bytes,
        dst: bytes,
        proto: int,
        sport: int | None,
        dport: int | None,
        aux: object,
    ) -> tuple[int | None, int | None, object]:
        """A fragment's ports (and ICMP discriminator): a non-first fragment takes those of
        the first fragment with the same addresses, protocol and IP id, else none."""
        fkey = (src, dst, proto, p[F_FRAGID])
        frags = self._frags
        if p[F_FRAG] == 1:
            if len(frags) >= _MAX_FRAGS:
                del frags[next(iter(frags))]
            frags[fkey] = (sport, dport, aux)
            return sport, dport, aux
        known = frags.get(fkey)
        return known if known is not None else (sport, dport, aux)  # type: ignore[return-value]

    def _slow(
        self,
        f: Flow | None,
        key: tuple[object, ...],
        p: tuple[object, ...],
        src: bytes,
        sport: int | None,
        dst: bytes,
        dport: int | None,
        aux: object,
        flags: int,
        ts: float,
        ifindex: int,
    ) -> tuple[Flow, bool]:
        """A packet that starts a flow, or meets a closing or timed-out one: the flow to
        count it in, and whether that flow is new."""
        if f is not None:
            if f.closing and not (
                flags & (_SYN | _ACK) == _SYN or ts - f.closing > self._tmo[_Q_CLOSING]
            ):
                self._queues[f.q].move_to_end(key)
                return f, False
            # a new connection on a closing flow's tuple, past the linger, or timed out
            # before expire() came round to it (between batches, in replays)
            self._end(f, ts)
        return self._new_flow(key, p, src, sport, dst, dport, aux, flags, ts, ifindex), True

    def _fin_rst(self, f: Flow, flags: int, orig: bool, ts: float) -> None:
        if f.closing:
            return
        if flags & _RST:
            self._closing(f, ts)
        else:
            f.fins |= 1 if orig else 2
            if f.fins == 3:
                self._closing(f, ts)

    def _new_flow(
        self,
        key: tuple[object, ...],
        p: tuple[object, ...],
        src: bytes,
        sport: int | None,
        dst: bytes,
        dport: int | None,
        aux: object,
        flags: int,
        ts: float,
        ifindex: int,
    ) -> Flow:
        if len(self.flows) >= self.max_flows:
            self._evict_one(ts)
        elif self._unconfirmed() >= self.max_unconfirmed:
            self._evict_one(ts, _UNCONFIRMED)
        proto: int = p[F_PROTO]  # type: ignore[assignment]
        if proto == _TCP:
            q = _Q_TCP_OPEN
            if flags & (_SYN | _ACK) == _SYN | _ACK:
                # the SYN was missed: the receiver of the SYN+ACK initiated
                src, sport, dst, dport = dst, dport, src, sport
        elif proto == _UDP or proto == 136:  # UDP, UDP-Lite
            q = _Q_UDP
        elif proto == 1 or proto == 58:
            q = _Q_ICMP
        else:
            q = _Q_OTHER
        self._seq += 1
        iface = self._iface_name(ifindex) if self._iface_name is not None else None
        f = Flow(
            key,
            f"{self._prefix}-{self._seq:x}",
            p[F_FAMILY],  # type: ignore[arg-type]
            proto,
            src,
            sport,
            dst,
            dport,
            aux,  # type: ignore[arg-type]
            ts,
            iface,
            q,
        )
        f.syn = proto == _TCP and flags & (_SYN | _ACK) == _SYN
        self.flows[key] = f
        self._queues[q][key] = f
        self.flows_total += 1
        return f

    # ------------------------------------------------------------------ state changes
    def _move(self, f: Flow, q: int) -> None:
        del self._queues[f.q][f.key]
        f.q = q
        self._queues[q][f.key] = f

    def _closing(self, f: Flow, ts: float) -> None:
        f.closing = ts
        self._move(f, _Q_CLOSING)

    @property
    def packets(self) -> int:
        """IP packets accounted so far (ended and open flows)."""
        return self._ended_pkts + sum(f.opkts + f.rpkts for f in self.flows.values())

    @property
    def bytes(self) -> int:
        """IP-layer bytes accounted so far."""
        return self._ended_bytes + sum(f.obytes + f.rbytes for f in self.flows.values())

    @property
    def proto_packets(self) -> dict[int, int]:
        """Packets by IP protocol number."""
        out = dict(self._ended_proto)
        for f in self.flows.values():
            out[f.proto] = out.get(f.proto, 0) + f.opkts + f.rpkts
        return out

    def _end(self, f: Flow, now: float) -> None:
        n = f.opkts + f.rpkts
        self._ended_pkts += n
        self._ended_bytes += f.obytes + f.rbytes
        self._ended_proto[f.proto] = self._ended_proto.get(f.proto, 0) + n
        del self.flows[f.key]
        del self._queues[f.q][f.key]
        if f.syn or not self._syn_only:
            self._emit(self._event(f, EventType.END))

    def _unconfirmed(self) -> int:
        q = self._queues
        return sum(len(q[i]) for i in _UNCONFIRMED)

    @property
    def unconfirmed(self) -> int:
        """Open flows not confirmed by their initiator after a reply, closing ones included
        (what ``max_unconfirmed`` bounds)."""
        return self._unconfirmed()

    def _evict_one(self, now: float, among: Iterable[int] = range(_NQ)) -> None:
        oldest: Flow | None = None
        queues = self._queues
        for i in among:
            q = queues[i]
            if q:
                f = next(iter(q.values()))
                if oldest is None or f.last < oldest.last:
                    oldest = f
        if oldest is not None:
            self.evicted += 1
            self._end(oldest, now)

    def expire(self, now: float) -> int:
        """End the flows idle past their timeout (and closing ones past the linger).

        Call it regularly (once per batch is fine): it looks only at the oldest entries.
        Returns how many flows ended.
        """
        ended = 0
        for qi, q in enumerate(self._queues):
            limit = now - self._tmo[qi]
            while q:
                f = next(iter(q.values()))
                t = f.closing if qi == _Q_CLOSING else f.last
                if t > limit:
                    break
                self._end(f, now)
                ended += 1
        return ended

    def active_since(self, since: float) -> list[Event]:
        """Snapshots of the open flows active since ``since``: ``new`` events with the
        counters and duration so far (keeps the store fresh for long flows). A flow of one
        packet is left out: its own ``new`` said all there is (a spoofed flood makes tens of
        thousands of those). Looks only at the recent end of each queue."""
        out = []
        for q in self._queues:
            for key in reversed(q):
                f = q[key]
                if f.last < since:
                    break
                if f.last > f.first and (f.syn or not self._syn_only):
                    out.append(self._event(f, EventType.NEW, snapshot=True))
        return out

    def close(self, now: float | None = None) -> None:
        """End every open flow (oldest first): the end of a replay or a clean stop."""
        for f in sorted(self.flows.values(), key=lambda f: f.first):
            self._end(f, f.last if now is None else now)

    # ------------------------------------------------------------------ events
    def direction(self, f: Flow) -> Direction:
        local = self.local_addrs
        s = f.src in local or (f.src[:1] == b"\x7f" and len(f.src) == 4)
        d = f.dst in local or (f.dst[:1] == b"\x7f" and len(f.dst) == 4)
        if s and d:
            return Direction.LOCAL
        if s:
            return Direction.OUT
        if d:
            return Direction.IN
        return Direction.TRANSIT

    def _event(self, f: Flow, kind: EventType, snapshot: bool = False) -> Event:
        """The event of a flow; a snapshot is a ``new`` with the duration so far."""
        end = kind is EventType.END
        return Event(
            ts=f.last if end else f.first,
            event=kind,
            proto=Proto.from_number(f.proto),
            ipproto=f.proto,
            family=f.family,
            src=_addr(f.src),
            dst=_addr(f.dst),
            sport=f.sport,
            dport=f.dport,
            flow=f.id,
            direction=self.direction(f),
            orig_bytes=f.obytes,
            resp_bytes=f.rbytes,
            orig_pkts=f.opkts,
            resp_pkts=f.rpkts,
            duration=(f.last - f.first) if end or snapshot else None,
            iface=f.iface,
            source=self.source,
        )
