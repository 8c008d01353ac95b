"""Packets → decoders → flow table, for the packet-based sources (``sniff``, ``replay``).

Pure: it is fed batches of captured packets and counts what it could not use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from netwarden.stats.flows import FlowTable, segment_headers
from netwarden.wire.packet import (
    F_L4OFF,
    F_PROTO,
    F_SPORT,
    UnsupportedLinkType,
    decoder_for,
)

log = logging.getLogger(__name__)

#: one captured packet: (ts, data, wirelen, linktype, ifindex, segs)
Captured = tuple[float, "bytes | memoryview", int, int, int, int]
Decode = Callable[["bytes | memoryview", int], object]


def payload_of(r: tuple[object, ...], data: bytes | memoryview) -> bytes | memoryview:
    """The transport payload of a decoded packet (as far as it was captured)."""
    l4: int = r[F_L4OFF]  # type: ignore[assignment]
    proto = r[F_PROTO]
    if proto == 6:
        if len(data) <= l4 + 12:
            return b""
        return data[l4 + (data[l4 + 12] >> 4) * 4 :]
    if proto in (17, 136):
        return data[l4 + 8 :]
    if proto in (1, 58):
        return data[l4 + 8 :]
    if proto == 132:
        return data[l4 + 12 :]
    return data[l4:]


class PayloadInspector:
    """Net::Connection::Sniffer's payload selection, and DNS answers for the name cache.

    ``match``/``nomatch`` are regular expressions (bytes, case-insensitive) searched in the
    transport payload from ``offset`` on: a packet counts only if ``match`` is found (when
    given) and ``nomatch`` is not. ``on_dns`` receives the payload of UDP packets from port
    53 (answers), whatever the match settings.
    """

    def __init__(
        self,
        *,
        match: str | None = None,
        nomatch: str | None = None,
        offset: int = 0,
        on_dns: Callable[[bytes | memoryview], None] | None = None,
    ) -> None:
        import re

        from netwarden.errors import UsageError

        def compile_(expr: str | None, option: str) -> re.Pattern[bytes] | None:
            if expr is None:
                return None
            try:
                return re.compile(expr.encode(), re.IGNORECASE | re.DOTALL)
            except re.error as exc:
                raise UsageError(str(exc), option=option, value=expr) from None

        self.match = compile_(match, "--match")
        self.nomatch = compile_(nomatch, "--nomatch")
        if offset < 0:
            raise UsageError("negative", option="--payload-offset", value=offset)
        self.offset = offset
        self.on_dns = on_dns
        self.rejected = 0

    @property
    def selects(self) -> bool:
        return self.match is not None or self.nomatch is not None

    def accept(self, r: tuple[object, ...], data: bytes | memoryview) -> bool:
        if self.on_dns is not None and r[F_PROTO] == 17 and r[F_SPORT] == 53:
            self.on_dns(payload_of(r, data))
        if self.match is None and self.nomatch is None:
            return True
        payload = bytes(payload_of(r, data)[self.offset :])
        if self.match is not None and self.match.search(payload) is None:
            self.rejected += 1
            return False
        if self.nomatch is not None and self.nomatch.search(payload) is not None:
            self.rejected += 1
            return False
        return True


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
        inspector: PayloadInspector | None = None,
    ) -> None:
        self.table = table
        self.inspector = inspector
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

    def feed(self, batch: Sequence[Captured]) -> None:
        """Account a batch of captured packets (a ring block, a chunk of a file)."""
        if self._matcher is not None or self.inspector is not None:
            self._feed_filtered(batch)
            return
        other, malformed, unsupported = self.table.feed_captured(batch, self.decoder)
        self.captured += len(batch)
        self.other += other
        self.malformed += malformed
        self.unsupported += unsupported

    def _feed_filtered(self, batch: Sequence[Captured]) -> None:
        """:meth:`feed` with the user-space filter and the payload inspector."""
        table_packet = self.table.packet
        filters = self._filters if self._matcher is not None else None
        inspect = self.inspector.accept if self.inspector is not None else None
        for ts, data, wirelen, linktype, ifindex, segs in batch:
            dec = self.decoder(linktype)
            if dec is None:
                self.unsupported += 1
                continue
            if filters is not None:
                flt = filters.get(linktype)
                if flt is not None and not flt(data, wirelen):
                    self.filtered += 1
                    continue
            r = dec(data, wirelen)
            if r and inspect is not None and not inspect(r, data):  # type: ignore[arg-type]
                self.filtered += 1
                continue
            if r:
                if segs > 1:
                    table_packet(ts, r, ifindex, segs, segment_headers(r, data, wirelen, segs))  # type: ignore[arg-type]
                else:
                    table_packet(ts, r, ifindex)  # type: ignore[arg-type]
            elif r is None:
                self.other += 1
            else:
                self.malformed += 1
        self.captured += len(batch)
