"""Packets → decoders → flow table, for the packet-based sources (``sniff``, ``replay``).

Pure: it is fed batches of captured packets and counts what it could not use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from netwarden.stats.flows import FlowTable
from netwarden.wire.packet import F_L4OFF, F_LEN, F_PROTO, UnsupportedLinkType, decoder_for

log = logging.getLogger(__name__)

#: one captured packet: (ts, data, wirelen, linktype, ifindex, segs)
Captured = tuple[float, "bytes | memoryview", int, int, int, int]
Decode = Callable[["bytes | memoryview", int], object]


def _segment_headers(r: tuple[int, ...], data: bytes | memoryview, wirelen: int, segs: int) -> int:
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


class PacketCounter:
    """Feeds captured packets to a :class:`FlowTable` and counts the rest.

    ``matches`` is an optional user-space filter (``replay FILE FILTER``): a callable
    ``(linktype) -> (data, wirelen) -> bool`` or None. Counters: ``captured`` packets seen,
    ``other`` (not IP), ``malformed`` (IP header cut off or inconsistent: the decode-stage
    errors), ``filtered`` (rejected by the filter), ``unsupported`` (link type we cannot read).
    """

    def __init__(
        self,
        table: FlowTable,
        *,
        matcher: Callable[[int], Callable[[bytes | memoryview, int], bool] | None] | None = None,
    ) -> None:
        self.table = table
        self._decoders: dict[int, Decode | None] = {}
        self._matcher = matcher
        self._filters: dict[int, Callable[[bytes | memoryview, int], bool] | None] = {}
        self.captured = 0
        self.other = 0
        self.malformed = 0
        self.filtered = 0
        self.unsupported = 0
        self.unsupported_types: set[int] = set()

    def decoder(self, linktype: int) -> Decode | None:
        try:
            return self._decoders[linktype]
        except KeyError:
            pass
        dec: Decode | None
        try:
            dec = decoder_for(linktype)
        except UnsupportedLinkType:
            dec = None
            self.unsupported_types.add(linktype)
            log.warning("unsupported link type %d: its packets are counted and skipped", linktype)
        self._decoders[linktype] = dec
        if self._matcher is not None:
            self._filters[linktype] = self._matcher(linktype) if dec is not None else None
        return dec

    def feed(self, batch: Iterable[Captured]) -> None:
        """Account a batch of captured packets (a ring block, a chunk of a file)."""
        decoders = self._decoders
        table_packet = self.table.packet
        filters = self._filters if self._matcher is not None else None
        n = 0
        for ts, data, wirelen, linktype, ifindex, segs in batch:
            n += 1
            dec = decoders.get(linktype, False)
            if dec is False:
                dec = self.decoder(linktype)
            if dec is None:
                self.unsupported += 1
                continue
            if filters is not None:
                flt = filters.get(linktype)
                if flt is not None and not flt(data, wirelen):
                    self.filtered += 1
                    continue
            r = dec(data, wirelen)  # type: ignore[operator]
            if r:
                if segs > 1:
                    table_packet(ts, r, ifindex, segs, _segment_headers(r, data, wirelen, segs))  # type: ignore[arg-type]
                else:
                    table_packet(ts, r, ifindex)  # type: ignore[arg-type]
            elif r is None:
                self.other += 1
            else:
                self.malformed += 1
        self.captured += n
