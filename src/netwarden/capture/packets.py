"""The packet-based event sources: live sniffing (AF_PACKET ring) and pcap/pcapng replay.

Both are iterators of :class:`~netwarden.events.Event` with ``stop()``/``close()``; a live
source also has ``fileno()`` (readable when packets are ready) for event loops.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from netwarden.closing import Closing
from netwarden.events import Event, Source
from netwarden.stats.flows import FlowTable, Timeouts
from netwarden.stats.packets import PacketCounter, PayloadInspector

log = logging.getLogger(__name__)

REPLAY_CHUNK = 2048
#: frame size of the immediate ring (``run --block``): a 1500-byte-MTU packet whole with its
#: link-layer and virtio headers; longer (GRO) packets are kept truncated, counted exactly
IMMEDIATE_FRAME = 2048
#: events judged ahead of their outputs while the ring has more packets ready
JUDGE_AHEAD = 1024


def tune_gc() -> None:
    """Make the cyclic garbage collector run rarely: for long-running captures.

    The capture loop allocates tuples per packet while whole ring blocks of them are alive;
    with the default thresholds (a collection every 700 allocations) the collector rescans
    them again and again: 0.4 µs per packet measured at 300k packets/s. netwarden creates few
    reference cycles, so a collection every 100,000 allocations loses nothing. Objects alive
    at start-up are frozen out of collections altogether. A process-wide setting: the
    commands call it, the library never does.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


class _EventSource(Closing):
    """Shared plumbing: a flow table whose events queue up until iterated."""

    def __init__(
        self,
        source: Source,
        *,
        local_addrs: Iterable[bytes],
        timeouts: Timeouts | None,
        tcp_connections_only: bool,
        iface_name: Callable[[int], str | None] | None = None,
        max_flows: int = 262144,
        max_unconfirmed: int | None = None,
        matcher: Any = None,
        inspector: PayloadInspector | None = None,
    ) -> None:
        self._pending: deque[Event] = deque()
        self.table = FlowTable(
            self._emit,
            source=source,
            local_addrs=local_addrs,
            timeouts=timeouts,
            tcp_connections_only=tcp_connections_only,
            iface_name=iface_name,
            max_flows=max_flows,
            max_unconfirmed=max_unconfirmed,
        )
        self.counter = PacketCounter(self.table, matcher=matcher, inspector=inspector)
        self._stopping = False
        #: held while the flow table changes (set to the daemon's pipeline lock, so that
        #: its ticker thread reads the table between batches, never during one)
        self.lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        #: called with each event as the flow table makes it, under :attr:`lock`, before
        #: it is queued: the daemon's scan detection, so that a scanner's threshold probe
        #: is judged as soon as its packet is counted, not after the rest of its batch
        self.judge: Callable[[Event], None] | None = None

    def _emit(self, e: Event) -> None:
        judge = self.judge
        if judge is not None:
            judge(e)
        self._pending.append(e)

    def stop(self) -> None:
        """Ask the iteration to finish: open flows are ended, then it stops (signal-safe)."""
        self._stopping = True

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def summary(self) -> dict[str, Any]:
        c = self.counter
        t = self.table
        return {
            "packets": c.captured,
            "ip_packets": t.packets,
            "ip_bytes": t.bytes,
            "other_packets": c.other,
            "malformed_packets": c.malformed,
            "filtered_packets": c.filtered,
            "unsupported_packets": c.unsupported,
            "flows": t.flows_total,
            "flows_evicted": t.evicted,
            "proto_packets": dict(sorted(t.proto_packets.items())),
        }

    def errors(self) -> dict[str, int]:
        """Counted-and-skipped problems by stage, for ``netwarden_errors_total``."""
        return {"decode": self.counter.malformed}

    def dropped(self) -> dict[str, int]:
        """Events or packets lost by stage, for ``netwarden_events_dropped_total``."""
        return {"flow_table": self.table.evicted}


class SniffSource(_EventSource):
    """Live capture on one interface or all of them, with a tcpdump filter expression."""

    name = "sniff"

    def __init__(
        self,
        iface: str | None = None,
        filter_expr: str | None = None,
        *,
        snaplen: int = 262144,
        local_addrs: Iterable[bytes] | None = None,
        timeouts: Timeouts | None = None,
        tcp_connections_only: bool = False,
        poll_interval: float = 0.2,
        inspector: PayloadInspector | None = None,
        buffer_kib: int = 65536,
        block_timeout_ms: int = 50,
        immediate: bool = False,
        max_flows: int = 262144,
        max_unconfirmed: int | None = None,
    ) -> None:
        from netwarden.capture.afpacket import RingCapture  # lazily: needs the kernel
        from netwarden.hostaddrs import local_addresses

        # the ring in 1 MiB blocks (tcpdump's -B is in KiB too); at least 2 blocks;
        # ``immediate``: in 2 KiB frames, each packet handed over as it arrives
        self.ring = RingCapture(
            iface,
            filter_expr=filter_expr,
            snaplen=snaplen,
            block_size=1 << 20,
            block_count=max(2, buffer_kib // 1024),
            block_timeout_ms=block_timeout_ms,
            frame_size=IMMEDIATE_FRAME if immediate else None,
        )
        super().__init__(
            Source.SNIFF,
            local_addrs=local_addresses() if local_addrs is None else local_addrs,
            timeouts=timeouts,
            tcp_connections_only=tcp_connections_only,
            iface_name=self.ring.ifname,
            inspector=inspector,
            max_flows=max_flows,
            max_unconfirmed=max_unconfirmed,
        )
        self.iface = iface
        self.poll_interval = poll_interval

    def fileno(self) -> int:
        return self.ring.fileno()

    def __iter__(self) -> Iterator[Event]:
        for events in self.batches():
            yield from events

    def batches(self) -> Iterator[list[Event]]:
        """The events of the packets handed over by the ring (possibly an empty list when
        the poll interval passes without packets), made under :attr:`lock`; while the ring
        has more ready, up to :data:`JUDGE_AHEAD` events, its next batch is counted (and
        judged) before these are handed on; at the end, every open flow's ``end``."""
        pending = self._pending
        feed = self.counter.feed
        expire = self.table.expire
        ring = self.ring
        for batch in ring.batches(self.poll_interval):
            with self.lock:
                if batch:
                    feed(batch)  # each event judged as it is made (see judge)
                if ring.ready() and len(pending) < JUDGE_AHEAD:
                    # more packets are in: count and judge them before this batch's events
                    # go out, so that a threshold probe never waits behind the outputs
                    continue
                expire(time.time())
                events = list(pending)
                pending.clear()
            yield events
        # stop() makes the ring hand over what it still holds, then batches() ends
        with self.lock:
            self.table.close(time.time())
            events = list(pending)
            pending.clear()
        yield events

    def stop(self) -> None:
        super().stop()
        self.ring.stop()

    def kernel_stats(self) -> tuple[int, int]:
        """(packets captured, packets dropped by the kernel) so far."""
        return self.ring.stats()

    def dropped(self) -> dict[str, int]:
        return {**super().dropped(), "kernel": self.ring.stats()[1]}

    def close(self) -> None:
        self.ring.close()


class ReplaySource(_EventSource):
    """The same pipeline over a pcap or pcapng file; time is the packets' time."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        filter_expr: str | None = None,
        *,
        local_addrs: Iterable[bytes] = (),
        timeouts: Timeouts | None = None,
        tcp_connections_only: bool = False,
        progress: Callable[[int, int, int], None] | None = None,
        inspector: PayloadInspector | None = None,
    ) -> None:
        from netwarden.wire.pcapfile import open_capture

        matcher = None
        if filter_expr:
            from netwarden.capture.bpf_filter import compile_filter

            def matcher(linktype: int) -> Callable[[bytes | memoryview, int], bool]:
                return compile_filter(filter_expr, linktype).matches

        self.reader = open_capture(os.fspath(path))
        super().__init__(
            Source.REPLAY,
            local_addrs=local_addrs,
            timeouts=timeouts,
            tcp_connections_only=tcp_connections_only,
            matcher=matcher,
            inspector=inspector,
        )
        self.path = os.fspath(path)
        self.progress = progress
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[Event]:
        from netwarden.wire.pcapfile import CaptureFileError

        pending = self._pending
        feed = self.counter.feed
        table = self.table
        reader = self.reader
        chunk: list[Any] = []
        last_ts = 0.0
        try:
            for ts, linktype, data, wirelen, ifindex in reader:
                chunk.append((ts, data, wirelen, linktype, ifindex, 1))
                if len(chunk) >= REPLAY_CHUNK:
                    last_ts = ts
                    feed(chunk)
                    chunk.clear()
                    table.expire(ts)
                    if self.progress is not None:
                        self.progress(reader.offset, reader.size, self.counter.captured)
                    while pending:
                        yield pending.popleft()
                    if self._stopping:
                        break
        except CaptureFileError as exc:
            self.error = exc
        if chunk:
            last_ts = chunk[-1][0]
            feed(chunk)
            chunk.clear()
        if self.progress is not None:
            self.progress(reader.size, reader.size, self.counter.captured)
        table.expire(last_ts)
        table.close()
        while pending:
            yield pending.popleft()

    def close(self) -> None:
        self.reader.close()
