"""Per-remote statistics (Net::Connection::Sniffer's report), pure.

Rows are computed from flow records (event-field dicts, as the store and the JSON API give
them) and grouped ``by`` ``ip`` (the remote address), ``net`` (its /24 or /64), ``domain``
(the registrable domain of its first reverse-DNS name), ``process`` (comm) or ``unit``.
"Remote" is the peer of the local socket: the initiator of an ``in`` flow, else the responder.

Rates are over the time the group has been seen (first to last), at least one minute, so a
single short connection does not read as thousands per hour.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

GROUPINGS = ("ip", "net", "domain", "process", "unit")
MIN_RATE_SPAN = 60.0

#: names lookup: address → (names, expiry Unix time or None)
NameLookup = Callable[[str], tuple[list[str], float | None]]


def _no_names(addr: str) -> tuple[list[str], float | None]:
    return [], None


def remote_of(flow: dict[str, Any]) -> str | None:
    r = flow.get("src") if flow.get("direction") == "in" else flow.get("dst")
    return None if r is None else str(r)


def net_of(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


class DomainOf:
    """Registrable domain of a host name (Public Suffix List, bundled; no download).

    A name under an unknown suffix groups by its last two labels; a ``:``-prefixed SOA name
    (an NXDOMAIN answer) groups by that zone's registrable domain.
    """

    def __init__(self) -> None:
        from publicsuffixlist import PublicSuffixList

        self._psl = PublicSuffixList(only_icann=True, accept_unknown=False)

    def __call__(self, name: str) -> str:
        n = name.lstrip(":").rstrip(".").lower()
        if not n:
            return name
        dom = self._psl.privatesuffix(n)
        if dom:
            return str(dom)
        labels = n.split(".")
        return ".".join(labels[-2:])


def _key(
    flow: dict[str, Any],
    by: str,
    remote: str,
    names: NameLookup,
    domain_of: Callable[[str], str] | None,
) -> str:
    if by == "ip":
        return remote
    if by == "net":
        return net_of(remote)
    if by == "domain":
        found, _ = names(remote)
        if not found or domain_of is None:
            return remote
        return domain_of(found[0])
    if by == "process":
        return str(flow.get("comm") or "(unknown)")
    if by == "unit":
        return str(flow.get("unit") or "(none)")
    raise ValueError(by)


def aggregate(
    flows: Iterable[dict[str, Any]],
    by: str = "ip",
    *,
    names: NameLookup = _no_names,
    domain_of: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """One row per group, most bytes first."""
    return list(summarize(flows, by, names=names, domain_of=domain_of).rows())


#: one group of a summary: key, bytes_in, bytes_out, conns, first, last, its remote
#: address(es) (one, or a set), {comm: bytes} (or None)
Group = tuple[str, int, int, int, float, float, "str | set[str]", "dict[str, int] | None"]


class Summary:
    """Flows added up by group: the totals at once, and :meth:`rows`, each row made as it
    is asked for, most bytes first (it can be iterated once). A spoofed flood makes 100,000
    groups of one flow each, and stats.json is written while it goes on: the groups come
    compact (:func:`summarize`) or one at a time from the store (:func:`summarize_store`)."""

    def __init__(
        self, count: int, conns: int, total_bytes: int, groups: Iterator[Group], names: NameLookup
    ) -> None:
        self.count = count
        self.conns = conns
        self.bytes = total_bytes
        self._groups = groups
        self._names = names

    def rows(self) -> Iterator[dict[str, Any]]:
        names = self._names
        for key, b_in, b_out, conns, first, last, remotes, procs in self._groups:
            names_list: list[str] = []
            expire: float | None = None
            for r in sorted(remotes) if isinstance(remotes, set) else (remotes,):
                found, exp = names(r)
                for n in found:
                    if n not in names_list:
                        names_list.append(n)
                if exp is not None:
                    expire = exp if expire is None else min(expire, exp)
            by_bytes = sorted((procs or {}).items(), key=lambda kv: (-kv[1], kv[0]))
            yield _finish(
                {
                    "key": key,
                    "bytes_in": b_in,
                    "bytes_out": b_out,
                    "conns": conns,
                    "first": first,
                    "last": last,
                    "names": names_list,
                    "names_expire": expire,
                    "processes": [p for p, _ in by_bytes],
                }
            )


def summarize_store(
    store: Any, since: float | None, limit: int | None, *, names: NameLookup = _no_names
) -> Summary:
    """:func:`summarize` by ``ip`` of the latest ``limit`` flows in ``store`` (a
    :class:`netwarden.store.sqlite.Store`), added up by SQLite: Python holds one row at a
    time."""
    (count, conns, total), rows = store.remote_totals(since, limit)
    groups = ((r, bi, bo, c, f, la, r, p or None) for r, bi, bo, c, f, la, p in rows)
    return Summary(count, conns, total, groups, names)


def summarize(
    flows: Iterable[dict[str, Any]],
    by: str = "ip",
    *,
    names: NameLookup = _no_names,
    domain_of: Callable[[str], str] | None = None,
) -> Summary:
    """The flows added up by ``by`` (see :data:`GROUPINGS`): :func:`aggregate`'s rows, made
    one at a time."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS}")
    if by == "domain" and domain_of is None:
        domain_of = DomainOf()
    groups: dict[str, list[Any]] = {}
    for f in flows:
        remote = remote_of(f)
        if remote is None:
            continue
        key = _key(f, by, remote, names, domain_of)
        inbound = f.get("direction") == "in"
        ob = int(f.get("orig_bytes") or 0)
        rb = int(f.get("resp_bytes") or 0)
        ts = float(f.get("ts") or 0.0)
        first = ts - float(f.get("duration") or 0.0) if f.get("event") == "end" else ts
        comm = f.get("comm")
        g = groups.get(key)
        if g is None:
            groups[key] = [
                ob if inbound else rb,
                rb if inbound else ob,
                1,
                first,
                ts,
                remote,
                {comm: ob + rb} if comm else None,
            ]
            continue
        g[0] += ob if inbound else rb
        g[1] += rb if inbound else ob
        g[2] += 1
        if first < g[3]:
            g[3] = first
        if ts > g[4]:
            g[4] = ts
        remotes = g[5]
        if isinstance(remotes, set):
            remotes.add(remote)
        elif remotes != remote:
            g[5] = {remotes, remote}
        if comm:
            procs = g[6]
            if procs is None:
                g[6] = {comm: ob + rb}
            else:
                procs[comm] = procs.get(comm, 0) + ob + rb

    def ordered() -> Iterator[Group]:
        order = sorted(groups, key=lambda k: (-(groups[k][0] + groups[k][1]), k))
        for key in order:
            b_in, b_out, conns, first, last, remotes, procs = groups.pop(key)
            yield key, b_in, b_out, conns, first, last, remotes, procs

    return Summary(
        len(groups),
        sum(g[2] for g in groups.values()),
        sum(g[0] + g[1] for g in groups.values()),
        ordered(),
        names,
    )


def _finish(g: dict[str, Any]) -> dict[str, Any]:
    g["bytes"] = g["bytes_in"] + g["bytes_out"]
    span = max((g["last"] or 0.0) - (g["first"] or 0.0), MIN_RATE_SPAN)
    g["conns_per_hour"] = round(g["conns"] * 3600.0 / span, 3)
    g["bytes_per_hour"] = round(g["bytes"] * 3600.0 / span, 3)
    order = (
        "key",
        "bytes",
        "bytes_in",
        "bytes_out",
        "conns",
        "first",
        "last",
        "conns_per_hour",
        "bytes_per_hour",
        "names",
        "names_expire",
        "processes",
    )
    return {k: g[k] for k in order} | {k: v for k, v in g.items() if k not in order}


def merge(reports: Sequence[Iterable[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge report rows of several hosts by key (Sniffer's coalescing)."""
    groups: dict[str, dict[str, Any]] = {}
    for rows in reports:
        for r in rows:
            g = groups.get(r["key"])
            if g is None:
                groups[r["key"]] = g = {
                    "key": r["key"],
                    "bytes_in": 0,
                    "bytes_out": 0,
                    "conns": 0,
                    "first": None,
                    "last": None,
                    "names": [],
                    "names_expire": None,
                    "processes": [],
                    "hosts": 0,
                }
            g["bytes_in"] += int(r.get("bytes_in") or 0)
            g["bytes_out"] += int(r.get("bytes_out") or 0)
            g["conns"] += int(r.get("conns") or 0)
            for k, pick in (("first", min), ("last", max)):
                v = r.get(k)
                if v is not None:
                    g[k] = v if g[k] is None else pick(g[k], v)
            for n in r.get("names") or []:
                if n not in g["names"]:
                    g["names"].append(n)
            exp = r.get("names_expire")
            if exp is not None:
                g["names_expire"] = (
                    exp if g["names_expire"] is None else min(g["names_expire"], exp)
                )
            for p in r.get("processes") or []:
                if p not in g["processes"]:
                    g["processes"].append(p)
            g["hosts"] += 1
    rows = [_finish(g) for g in groups.values()]
    rows.sort(key=lambda r: (-r["bytes"], r["key"]))
    return rows
