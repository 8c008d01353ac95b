"""The reverse-DNS cache (resolver injected) and the system resolver on /etc/hosts names."""

from __future__ import annotations

import threading

from netwarden.stats.names import NameCache, system_resolve


def test_lookup_is_async_cached_and_expires() -> None:
    calls: list[str] = []
    gate = threading.Event()
    now = [1000.0]

    def resolve(addr: str) -> tuple[list[str], float]:
        gate.wait(5)
        calls.append(addr)
        return [f"host-{addr}\x1b"], 60.0

    c = NameCache(resolve, clock=lambda: now[0])
    assert c.lookup("192.0.2.1") == ([], None)  # pending: the caller never waits
    assert c.lookup("192.0.2.1") == ([], None)
    gate.set()
    c.wait()
    assert c.lookup("192.0.2.1") == (["host-192.0.2.1\\x1b"], 1060.0)
    assert calls == ["192.0.2.1"]
    now[0] = 1061.0
    assert c.lookup("192.0.2.1")[0] == ["host-192.0.2.1\\x1b"]  # stale answer while refreshing
    c.wait()
    assert calls == ["192.0.2.1", "192.0.2.1"]
    c.close()


def test_learned_names_come_first_and_bound() -> None:
    c = NameCache(lambda a: ([], 60.0), max_entries=2, clock=lambda: 0.0)
    c.learn("198.51.100.7", "www.example.com.", 300)
    assert c.lookup("198.51.100.7") == (["www.example.com"], 300.0)
    c.learn("198.51.100.8", "a", 10)
    c.learn("198.51.100.9", "b", 10)
    assert c.lookup("198.51.100.7") == ([], None)  # evicted (LRU bound)
    c.close()


def test_system_resolver_honours_etc_hosts() -> None:
    names, ttl = system_resolve("127.0.0.1")
    assert names and "localhost" in names[0] and ttl > 0


def test_lookups_waiting_are_bounded() -> None:
    """A dump during a spoofed flood asks for tens of thousands of names at once: at most
    ``max_pending`` wait for a resolver thread; the rest are asked again later."""
    import threading

    gate = threading.Event()

    def slow(addr: str) -> tuple[list[str], float]:
        gate.wait(10)
        return [f"h-{addr}"], 60.0

    c = NameCache(slow, workers=1, max_pending=3, clock=lambda: 0.0)
    try:
        for i in range(10):
            assert c.lookup(f"192.0.2.{i}") == ([], None)
        assert c.skipped == 7 and len(c._pending) == 3
    finally:
        gate.set()
        c.close()


def test_known_starts_nothing_prefetch_does() -> None:
    calls: list[str] = []

    def resolve(addr: str) -> tuple[list[str], float]:
        calls.append(addr)
        return [f"h-{addr}"], 60.0

    c = NameCache(resolve, clock=lambda: 0.0)
    try:
        assert c.known("192.0.2.1") == ([], None)
        c.wait()
        assert calls == []
        c.prefetch(["192.0.2.1", "192.0.2.2"])
        c.wait()
        assert sorted(calls) == ["192.0.2.1", "192.0.2.2"]
        assert c.known("192.0.2.2") == (["h-192.0.2.2"], 60.0)
    finally:
        c.close()
