#!/usr/bin/env python3
"""Blocking cost: one ``replace`` of an address through libnftables vs raw netlink (NftSets).

In a throw-away namespace (loopback only) with netwarden's table, N replaces per path and
case, each timed on its own (time.perf_counter_ns around the call):

libnftables
    ``Nft.run(nft.replace_elements([Element(addr, 60 s)]))``: the text the Blocker runs.
netlink
    ``NftSets.replace(addr, 60_000)``: one batch of three set-element messages.

Cases: ``new`` (N distinct IPv4 addresses: the set grows to N), ``same`` (one IPv4 address
replaced N times) and ``new6`` (N distinct IPv6 addresses). Each run follows a warm-up of
50 calls and starts from an empty table. Prints µs per operation (median, p90); nothing
here asserts a timing.

Run as root:  .venv/bin/python bench/nft_bench.py [--n 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.integration.netns import netns  # noqa: E402

from netwarden.act import nft as render  # noqa: E402
from netwarden.act.libnftables import Nft  # noqa: E402
from netwarden.act.nftnl import NftSets  # noqa: E402

TIMEOUT_MS = 60_000
WARMUP = 50

Addr = IPv4Address | IPv6Address


def addresses(case: str, n: int) -> list[Addr]:
    if case == "same":
        return [ip_address("192.0.2.7")] * n
    if case == "new6":
        return [ip_address(f"2001:db8::{i + 1:x}") for i in range(n)]
    return [ip_address(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}") for i in range(n)]


def warmup(case: str) -> list[Addr]:
    if case == "new6":
        return [ip_address(f"2001:db8:ffff::{i + 1:x}") for i in range(WARMUP)]
    return [ip_address(f"198.51.100.{i + 1}") for i in range(WARMUP)]


def timed(op: Callable[[Addr], None], addrs: list[Addr]) -> list[float]:
    """µs per call of ``op`` on each address."""
    out = []
    clock = time.perf_counter_ns
    for a in addrs:
        t0 = clock()
        op(a)
        out.append((clock() - t0) / 1000)
    return out


def summary(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=10)
    return statistics.median(samples), cuts[8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="replaces per path and case")
    args = ap.parse_args()

    def via_nft(a: Addr) -> None:
        nft.run(render.replace_elements([render.Element(ip_network(a), TIMEOUT_MS)]))

    def via_netlink(a: Addr) -> None:
        sets.replace(a, TIMEOUT_MS)

    rows = []
    with netns("nwb-") as ns, ns.entered(), Nft() as nft, NftSets() as sets:
        paths: dict[str, Callable[[Addr], None]] = {
            "libnftables": via_nft,
            "netlink": via_netlink,
        }
        for case in ("new", "same", "new6"):
            for path, op in paths.items():
                nft.run(render.start_commands())
                timed(op, warmup(case))
                nft.run(render.start_commands())  # empty again
                samples = timed(op, addresses(case, args.n))
                listed = render.parse_elements(nft.run_json(render.list_table()))
                size = len(listed.get("blocked6" if case == "new6" else "blocked4", []))
                med, p90 = summary(samples)
                rows.append((case, path, med, p90, size))
        nft.run(render.delete_table())

    print(f"replace, N={args.n} per row, timeout {TIMEOUT_MS} ms, µs per operation")
    print(f"{'case':<6} {'path':<12} {'median':>8} {'p90':>8} {'set size':>9}")
    for case, path, med, p90, size in rows:
        print(f"{case:<6} {path:<12} {med:>8.1f} {p90:>8.1f} {size:>9}")


if __name__ == "__main__":
    main()
