"""Every capture of tcpdump's test suite replays through the whole pipeline.

No exception escapes (a damaged file ends with a clean CaptureFileError after its packets),
and the flow records account for every IP packet and byte the decoders accepted.
"""

from __future__ import annotations

import pytest

from netwarden.capture.packets import ReplaySource
from netwarden.events import EventType
from tests.corpus import corpus_files

FILES = corpus_files()


@pytest.mark.skipif(not FILES, reason="tcpdump test captures not found beside the repo")
def test_whole_corpus_replays_and_flows_account_for_every_packet() -> None:
    damaged = 0
    flows = 0
    for path in FILES:
        try:
            src = ReplaySource(path)
        except Exception as exc:  # only the reader's clean error may stop a file
            assert type(exc).__name__ == "CaptureFileError", (path.name, exc)
            damaged += 1
            continue
        with src:
            events = list(src)
        if src.error is not None:
            damaged += 1
        ends = [e for e in events if e.event is EventType.END]
        news = [e for e in events if e.event is EventType.NEW]
        assert len(ends) == len(news) == src.table.flows_total, path.name
        pkts = sum(e.orig_pkts + e.resp_pkts for e in ends)
        nbytes = sum(e.orig_bytes + e.resp_bytes for e in ends)
        assert pkts == src.table.packets, path.name
        assert nbytes == src.table.bytes, path.name
        c = src.counter
        assert c.captured == src.table.packets + c.other + c.malformed + c.unsupported, path.name
        flows += len(ends)
    assert len(FILES) >= 800
    assert flows > 500
    assert damaged < len(FILES) // 4
