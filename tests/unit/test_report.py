"""Per-remote report rows, grouping and merging."""

from __future__ import annotations

from typing import Any

import pytest

from netwarden.stats.report import DomainOf, aggregate, merge, net_of


def f(
    dst: str,
    ob: int,
    rb: int,
    ts: float,
    comm: str | None = "curl",
    direction: str = "out",
    src: str = "192.0.2.1",
    unit: str | None = None,
    dur: float = 1.0,
) -> dict[str, Any]:
    return dict(event="end", src=src, dst=dst, orig_bytes=ob, resp_bytes=rb, ts=ts,
                duration=dur, comm=comm, direction=direction, unit=unit)  # fmt: skip


FLOWS = [
    f("198.51.100.7", 100, 1000, 100.0),
    f("198.51.100.7", 50, 500, 3700.0, comm="wget"),
    f("198.51.100.9", 10, 20, 200.0, unit="app.service"),
    f("2001:db8:1:2::5", 1, 2, 300.0),
    # inbound: the remote is the initiator; what it sent is bytes_in
    f("192.0.2.1", 300, 30, 400.0, src="203.0.113.50", direction="in", comm="nginx"),
]


def names(addr: str) -> tuple[list[str], float | None]:
    table = {
        "198.51.100.7": (["www.example.co.uk"], 5000.0),
        "198.51.100.9": (["mail.example.co.uk"], 4000.0),
        "203.0.113.50": ([":ns.unknown-tld-zz"], 6000.0),
    }
    return table.get(addr, ([], None))


def test_by_ip_fields() -> None:
    rows = aggregate(FLOWS, "ip", names=names)
    r = rows[0]
    assert r["key"] == "198.51.100.7"
    assert (r["bytes_out"], r["bytes_in"], r["bytes"], r["conns"]) == (150, 1500, 1650, 2)
    assert r["first"] == 99.0 and r["last"] == 3700.0
    assert r["conns_per_hour"] == pytest.approx(2 * 3600 / 3601, abs=1e-3)
    assert r["names"] == ["www.example.co.uk"] and r["names_expire"] == 5000.0
    assert r["processes"] == ["curl", "wget"]
    inbound = next(x for x in rows if x["key"] == "203.0.113.50")
    assert inbound["bytes_in"] == 300 and inbound["bytes_out"] == 30
    assert list(r)[:12] == [
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
    ]


def test_by_net_domain_process_unit() -> None:
    keys = {r["key"]: r for r in aggregate(FLOWS, "net")}
    assert keys["198.51.100.0/24"]["conns"] == 3
    assert "2001:db8:1:2::/64" in keys
    dom = {r["key"]: r for r in aggregate(FLOWS, "domain", names=names)}
    assert dom["example.co.uk"]["conns"] == 3
    assert "unknown-tld-zz" in " ".join(dom)  # unknown suffix: last two labels
    assert "2001:db8:1:2::5" in dom  # unresolved stays by address
    procs = {r["key"]: r["conns"] for r in aggregate(FLOWS, "process")}
    assert procs == {"curl": 3, "wget": 1, "nginx": 1}
    units = {r["key"] for r in aggregate(FLOWS, "unit")}
    assert units == {"app.service", "(none)"}


def test_domain_of() -> None:
    d = DomainOf()
    assert d("a.b.example.com.") == "example.com"
    assert d("x.example.co.uk") == "example.co.uk"
    assert d(":ns1.zone.example.org") == "example.org"
    assert d("host.internal-zz") == "host.internal-zz"


def test_merge_several_hosts() -> None:
    a = aggregate(FLOWS[:2], "ip", names=names)
    b = aggregate(FLOWS[1:3], "ip", names=names)
    rows = {r["key"]: r for r in merge([a, b])}
    r = rows["198.51.100.7"]
    assert r["conns"] == 3 and r["bytes"] == 1650 + 550 and r["hosts"] == 2
    assert r["processes"] == ["curl", "wget"]
    assert rows["198.51.100.9"]["hosts"] == 1


def test_net_of() -> None:
    assert net_of("10.1.2.3") == "10.1.2.0/24"
    assert net_of("2001:db8:1:2:3::4") == "2001:db8:1:2::/64"
