"""Reverse DNS for report rows: a small worker pool and a TTL cache, never on the capture path.

:meth:`NameCache.lookup` answers from the cache at once (an empty list while a lookup is
pending) and queues a lookup for an unknown or expired address. Names come from the system
resolver (``getnameinfo``/``gethostbyaddr``, so /etc/hosts and nsswitch are honoured); when it
has no name, a PTR query through dnspython gives the NXDOMAIN answer's SOA, reported as
``:`` + the zone name (Net::Connection::Sniffer's convention). Names are also learned from
DNS answers seen on the wire (:meth:`learn`): the name a process asked for before it
connected.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from netwarden.output import sanitize

log = logging.getLogger(__name__)

DEFAULT_TTL = 3600.0
NEGATIVE_TTL = 300.0

Resolver = Callable[[str], tuple[list[str], float]]


def system_resolve(addr: str) -> tuple[list[str], float]:
    """(names, ttl) for an address; ``[":zone"]`` for NXDOMAIN; ``[]`` when unknown.

    The names are raw (the cache sanitizes them)."""
    try:
        host, aliases, _ = socket.gethostbyaddr(addr)
        names = [host, *[a for a in aliases if a != host]]
        return names, DEFAULT_TTL
    except (socket.herror, socket.gaierror, OSError, UnicodeError):
        pass
    try:
        import dns.exception
        import dns.resolver
        import dns.reversename

        qname = dns.reversename.from_address(addr)
        try:
            ans = dns.resolver.resolve(qname, "PTR", lifetime=3.0, raise_on_no_answer=False)
            rrset = ans.rrset
            if rrset is not None:
                return [str(r.target).rstrip(".") for r in rrset], float(rrset.ttl)
            return [], NEGATIVE_TTL
        except dns.resolver.NXDOMAIN as nx:
            for resp in nx.responses().values():  # type: ignore[no-untyped-call]
                for rrset in resp.authority:
                    if rrset.rdtype == 6:  # SOA
                        zone = str(rrset.name).rstrip(".")
                        return [":" + zone], float(min(rrset.ttl, rrset[0].minimum))
            return [], NEGATIVE_TTL
    except Exception as exc:  # a resolver failure only costs the name
        log.debug("reverse lookup of %s failed: %s", addr, exc)
    return [], NEGATIVE_TTL


class NameCache:
    """Names by address with expiry; lookups run on ``workers`` threads."""

    def __init__(
        self,
        resolve: Resolver = system_resolve,
        *,
        workers: int = 4,
        max_entries: int = 65536,
        max_pending: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._resolve = resolve
        self._clock = clock
        self._max = max_entries
        self._max_pending = max_pending
        self.skipped = 0
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[list[str], float]] = OrderedDict()
        self._pending: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nw-rdns")
        self.lookups = 0
        self.learned = 0

    def lookup(self, addr: str) -> tuple[list[str], float | None]:
        """The names known for ``addr`` (and when they expire); unknown or expired: what
        is known, and a reverse lookup is started (names come with a later call)."""
        return self._lookup(addr, resolve=True)

    def known(self, addr: str) -> tuple[list[str], float | None]:
        """What :meth:`lookup` says, without starting a lookup (see :meth:`prefetch`)."""
        return self._lookup(addr, resolve=False)

    def prefetch(self, addrs: Iterable[str]) -> None:
        """Start the reverse lookups of ``addrs`` not known yet (up to the pending bound)."""
        for addr in addrs:
            self._lookup(addr, resolve=True)

    def _lookup(self, addr: str, *, resolve: bool) -> tuple[list[str], float | None]:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(addr)
            if hit is not None and hit[1] > now:
                self._cache.move_to_end(addr)
                return hit[0], hit[1]
            if resolve and addr not in self._pending:
                if len(self._pending) >= self._max_pending:
                    # thousands of new addresses at once (a dump during a spoofed flood):
                    # the rest wait for a later call rather than queue without bound
                    self.skipped += 1
                else:
                    self._pending.add(addr)
                    self._pool.submit(self._work, addr)
        return (hit[0], hit[1]) if hit is not None else ([], None)

    def _work(self, addr: str) -> None:
        try:
            names, ttl = self._resolve(addr)
        except Exception as exc:  # never let a worker die silently
            log.debug("reverse lookup of %s failed: %s", addr, exc)
            names, ttl = [], NEGATIVE_TTL
        self.lookups += 1
        self._store(addr, [sanitize(n) for n in names], self._clock() + ttl)
        with self._lock:
            self._pending.discard(addr)

    def _store(self, addr: str, names: list[str], expire: float) -> None:
        with self._lock:
            self._cache[addr] = (names, expire)
            self._cache.move_to_end(addr)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)

    def learn(self, addr: str, name: str, ttl: float, now: float | None = None) -> None:
        """A name seen in a DNS answer for ``addr`` (kept first among its names)."""
        now = self._clock() if now is None else now
        clean = sanitize(name.rstrip("."))
        with self._lock:
            old = self._cache.get(addr)
        names = [clean] + [n for n in (old[0] if old else []) if n != clean]
        expire = now + max(ttl, 1.0)
        if old is not None:
            expire = max(expire, old[1])
        self._store(addr, names, expire)

    def learn_dns(self, payload: bytes | memoryview) -> None:
        """Learn from a DNS answer seen on the wire (a UDP payload from port 53)."""
        from ipaddress import ip_address

        from netwarden.wire.dns import parse_answers

        parsed = parse_answers(payload)
        if parsed is None:
            return
        qname, answers = parsed
        for addr, ttl in answers:
            self.learn(str(ip_address(addr)), qname, float(ttl))
        self.learned += len(answers)

    def wait(self, timeout: float = 10.0) -> None:
        """Wait until pending lookups finish (tests, one-shot reports)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._pending:
                    return
            time.sleep(0.01)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
