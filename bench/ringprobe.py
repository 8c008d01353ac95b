#!/usr/bin/env python3
"""Where a live capture's CPU goes: netwarden's ring with more and more of the pipeline.

Run inside the receiving namespace by ``run.py --breakdown`` (one mode per step, the same
offered traffic each time)::

    ringprobe.py IFACE MODE

MODE is one of

- ``count``: read each ring block into its packet list and count it (the ring alone);
- ``decode``: and decode every packet;
- ``feed``: and update the flow table (``PacketCounter.feed`` + ``expire``, as ``sniff``);
- ``sniff``: ``SniffSource`` itself, events discarded (adds event hand-over).

A ``-nogc`` suffix (``feed-nogc``) runs with the cyclic garbage collector off.

Prints "ready" on stderr once capturing, and on SIGINT one JSON line on stdout: packets,
kernel drops, CPU seconds from "ready" on (``time.process_time``), µs per packet.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

MODES = ("count", "decode", "feed", "sniff")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2].removesuffix("-nogc") not in MODES:
        print(f"usage: ringprobe.py IFACE {{{','.join(MODES)}}}[-nogc]", file=sys.stderr)
        return 2
    iface, mode = argv[1], argv[2]
    if mode.endswith("-nogc"):
        gc.disable()
        mode = mode.removesuffix("-nogc")

    from netwarden.capture.afpacket import RingCapture
    from netwarden.capture.packets import SniffSource
    from netwarden.stats.flows import FlowTable
    from netwarden.stats.packets import PacketCounter
    from netwarden.wire.packet import decoder_for

    packets = 0
    source: Any = None
    if mode == "sniff":
        source = SniffSource(iface)
        ring = source.ring
    else:
        ring = RingCapture(iface)
    signal.signal(signal.SIGINT, lambda s, f: source.stop() if source else ring.stop())
    print("ready", file=sys.stderr, flush=True)
    t0 = time.process_time()
    if mode == "sniff":
        for _event in source:
            pass
        packets = source.counter.captured
    elif mode == "count":
        for batch in ring.batches(0.2):
            packets += len(batch)
    elif mode == "decode":
        decode = decoder_for(ring.linktype)
        for batch in ring.batches(0.2):
            for _ts, data, wirelen, _lt, _ifi, _segs in batch:
                decode(data, wirelen)
            packets += len(batch)
    else:
        pending: list[object] = []
        table = FlowTable(pending.append)
        counter = PacketCounter(table)
        for batch in ring.batches(0.2):
            if batch:
                counter.feed(batch)
            table.expire(time.time())
            pending.clear()
        packets = counter.captured
    cpu = time.process_time() - t0
    captured, drops = ring.stats()
    ring.close()
    print(
        json.dumps(
            {
                "mode": argv[2],
                "packets": packets,
                "ring_captured": captured,
                "drops": drops,
                "cpu_s": round(cpu, 4),
                "us_per_packet": round(cpu * 1e6 / packets, 4) if packets else None,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
