"""The nftables objects of netwarden, rendered as nft command text. Pure: no I/O.

netwarden owns one table, ``inet netwarden`` (one table for IPv4 and IPv6)::

    table inet netwarden {
        set blocked4 { type ipv4_addr; flags timeout; }            # blocked addresses
        set blocknet4 { type ipv4_addr; flags interval,timeout; }  # blocked CIDRs (by hand)
        set blocked6 { type ipv6_addr; flags timeout; }
        set blocknet6 { type ipv6_addr; flags interval,timeout; }
        chain prerouting {      # before conntrack (-200): blocked SYNs leave no conntrack entry
            type filter hook prerouting priority raw - 10; policy accept;
            tcp flags & (ack | rst) == 0 jump blocked_source
        }
        chain prerouting_ct {   # after conntrack: only the first packet of a new flow
            type filter hook prerouting priority mangle - 10; policy accept;
            ct state new meta l4proto != tcp jump blocked_source
        }
        chain blocked_source {
            ip saddr @blocked4 counter drop
            ip saddr @blocknet4 counter drop
            ip6 saddr @blocked6 counter drop
            ip6 saddr @blocknet6 counter drop
        }
    }

Why this shape (docs/detection.md has the long version):

- TCP is judged by its flags, before conntrack: a segment without ACK and without RST is a
  connection attempt (SYN) or a stealth probe (FIN, NULL, Xmas); every segment of an
  established connection carries ACK (or is a RST), so established TCP always passes, even
  when conntrack lost or never had the connection. Dropped SYNs create no conntrack entries.
- Other protocols are judged by conntrack: ``ct state new`` is the first packet of a UDP
  flow, an ICMP echo/timestamp/info request, ICMPv6 echo or node-information query, or the
  first packet of another protocol. Replies, established UDP flows and ICMP errors related to
  our own traffic (``established``/``related``) pass. Neighbour discovery and MLD are never
  ``new`` (conntrack does not track them), ARP is not in the ``inet`` family: both pass.
- ``policy accept`` everywhere: netwarden only ever drops, and only from the sets.
- Addresses go in ``blocked4``/``blocked6`` (hash sets, fast, one element per address);
  CIDRs from ``netwarden block CIDR`` go in ``blocknet4``/``blocknet6`` (interval sets).
  Every element may carry a timeout; the kernel removes it when it runs out.

Commands are text for libnftables (``nft -f`` syntax); several commands in one string are one
transaction. Listing is parsed from libnftables' JSON output (:func:`parse_elements`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

__all__ = [
    "CHAIN_CT",
    "CHAIN_DROP",
    "CHAIN_RAW",
    "FAMILY",
    "SETS",
    "TABLE",
    "Element",
    "KernelElement",
    "add_elements",
    "delete_elements",
    "delete_table",
    "element_text",
    "list_table",
    "parse_elements",
    "replace_elements",
    "ruleset",
    "set_for",
    "start_commands",
    "timeout_text",
]

IPNetwork = IPv4Network | IPv6Network

FAMILY = "inet"
TABLE = "netwarden"
CHAIN_RAW = "prerouting"
CHAIN_CT = "prerouting_ct"
CHAIN_DROP = "blocked_source"
#: set name by (IP version, is a CIDR)
SETS: dict[tuple[int, bool], str] = {
    (4, False): "blocked4",
    (4, True): "blocknet4",
    (6, False): "blocked6",
    (6, True): "blocknet6",
}
_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,30}\Z")


@dataclass(frozen=True, slots=True)
class Element:
    """A set element to add: an address (a /32 or /128) or a CIDR, with a timeout in
    milliseconds (None: no timeout)."""

    net: IPNetwork
    timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class KernelElement:
    """A set element as listed by the kernel: its timeout and the time left, in seconds
    (None for an element without timeout)."""

    net: IPNetwork
    timeout: float | None
    expires: float | None


def _table(table: str) -> str:
    if not _NAME.match(table):
        raise ValueError(f"bad nftables table name {table!r}")
    return table


def set_for(net: IPNetwork) -> str:
    """The set an address or CIDR goes in."""
    return SETS[(net.version, net.prefixlen != net.max_prefixlen)]


def element_text(net: IPNetwork) -> str:
    """An address without its /32 or /128, a CIDR as is."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def timeout_text(ms: int) -> str:
    """A timeout as nft reads it, in milliseconds (at least 1)."""
    return f"{max(1, int(ms))}ms"


def ruleset(table: str = TABLE) -> str:
    """The table definition: sets and chains, no elements (the layout in the docstring)."""
    t = _table(table)
    lines = [f"table {FAMILY} {t} {{"]
    for (version, is_net), name in SETS.items():
        flags = "interval,timeout" if is_net else "timeout"
        lines += [
            f"\tset {name} {{",
            f"\t\ttype {_TYPES[version]}",
            f"\t\tflags {flags}",
            "\t}",
        ]
    lines += [
        f"\tchain {CHAIN_RAW} {{",
        "\t\ttype filter hook prerouting priority raw - 10; policy accept;",
        f"\t\ttcp flags & (ack | rst) == 0 jump {CHAIN_DROP}",
        "\t}",
        f"\tchain {CHAIN_CT} {{",
        "\t\ttype filter hook prerouting priority mangle - 10; policy accept;",
        f"\t\tct state new meta l4proto != tcp jump {CHAIN_DROP}",
        "\t}",
        f"\tchain {CHAIN_DROP} {{",
    ]
    for (version, _is_net), name in SETS.items():
        ip = "ip" if version == 4 else "ip6"
        lines.append(f"\t\t{ip} saddr @{name} counter drop")
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def delete_table(table: str = TABLE) -> str:
    """Delete the table, without an error when it does not exist."""
    t = _table(table)
    return f"table {FAMILY} {t}\ndelete table {FAMILY} {t}\n"


def start_commands(elements: Sequence[Element] = (), table: str = TABLE) -> str:
    """One transaction: remove whatever a previous run left, create the table, add
    ``elements``. Idempotent: it gives the same result whether or not the table existed."""
    return delete_table(table) + ruleset(table) + add_elements(elements, table)


def _grouped(elements: Iterable[Element]) -> dict[str, list[Element]]:
    by_set: dict[str, list[Element]] = {}
    for e in elements:
        by_set.setdefault(set_for(e.net), []).append(e)
    return by_set


def _elem(e: Element) -> str:
    text = element_text(e.net)
    if e.timeout_ms is not None:
        text += f" timeout {timeout_text(e.timeout_ms)}"
    return text


def add_elements(elements: Iterable[Element], table: str = TABLE) -> str:
    """Add elements (an element already there keeps its old timeout: see
    :func:`replace_elements`)."""
    t = _table(table)
    return "".join(
        f"add element {FAMILY} {t} {name} {{ {', '.join(_elem(e) for e in elems)} }}\n"
        for name, elems in _grouped(elements).items()
    )


def delete_elements(nets: Iterable[IPNetwork], table: str = TABLE) -> str:
    """Delete elements (the transaction fails if one is not there)."""
    t = _table(table)
    out = []
    for name, elems in _grouped(Element(n) for n in nets).items():
        listed = ", ".join(element_text(e.net) for e in elems)
        out.append(f"delete element {FAMILY} {t} {name} {{ {listed} }}\n")
    return "".join(out)


def replace_elements(elements: Sequence[Element], table: str = TABLE) -> str:
    """Add elements, replacing those already there (and their timeouts), whether they exist
    or not: add without timeout (a no-op if present), delete, add with the new timeout."""
    bare = [Element(e.net) for e in elements]
    return (
        add_elements(bare, table)
        + delete_elements((e.net for e in elements), table)
        + add_elements(elements, table)
    )


def list_table(table: str = TABLE) -> str:
    """The command whose JSON output :func:`parse_elements` reads."""
    return f"list table {FAMILY} {_table(table)}\n"


def _net(val: Any) -> IPNetwork | None:
    if isinstance(val, str):
        return ip_network(val)
    if isinstance(val, dict):
        if "prefix" in val:
            p = val["prefix"]
            return ip_network(f"{p['addr']}/{p['len']}")
        if "range" in val:  # an interval that is not a prefix: not ours, skip
            return None
    return None


def parse_elements(doc: dict[str, Any], table: str = TABLE) -> dict[str, list[KernelElement]]:
    """The elements of netwarden's sets from libnftables' JSON listing, by set name.

    Sets of other tables and unknown shapes are skipped, never fatal.
    """
    out: dict[str, list[KernelElement]] = {}
    for obj in doc.get("nftables", ()):
        s = obj.get("set") if isinstance(obj, dict) else None
        if not isinstance(s, dict) or s.get("table") != table or s.get("family") != FAMILY:
            continue
        name = s.get("name")
        if not isinstance(name, str) or name not in SETS.values():
            continue
        elems = out.setdefault(name, [])
        for item in s.get("elem", ()):
            timeout = expires = None
            if isinstance(item, dict) and "elem" in item:
                body = item["elem"]
                val = body.get("val")
                if "timeout" in body:
                    timeout = float(body["timeout"])
                    expires = float(body.get("expires", body["timeout"]))
            else:
                val = item
            try:
                net = _net(val)
            except (ValueError, KeyError, TypeError):
                net = None
            if net is not None:
                elems.append(KernelElement(net, timeout, expires))
    return out
