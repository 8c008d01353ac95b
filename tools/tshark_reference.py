#!/usr/bin/env python3
"""Compute tshark's view of the tcpdump test corpus, for tests/unit/test_corpus_tshark.py.

For every capture in the corpus whose link types are all ones netwarden.wire.packet decodes,
run tshark (PDML output, no reassembly of any kind), find each packet's OUTERMOST IP layer and
summarise the file the way the counting rules of INTERFACE.md count it:

- ``counts``: packets per protocol of the outer IP layer (``tcp``, ``udp``, ``icmp``,
  ``icmpv6``, ``sctp``, ``ip`` = any other protocol; the IPv6 protocol is the one after the
  extension headers, AH included);
- ``malformed``: packets whose outer IP header tshark found cut off or inconsistent;
- ``other``: frames without an IP layer reached through a supported encapsulation;
- ``flows``: distinct TCP and UDP flows (unordered address/port pairs of the outer IP layer); a
  non-first fragment joins the flow of the earlier first fragment with the same addresses,
  protocol and IP id, else a flow with null ports; a transport header cut off before the ports
  gives null ports;
- checks of the finer fields: ``ip_bytes`` (sum of ``F_LEN``), ``tcp_syn`` (SYN without ACK),
  ``icmp_kinds`` (distinct ICMP discriminators) and ``records_sha256``, a digest of every
  packet's record, equal only when every field of every packet is.

Eligible files have one link type, one of SUPPORTED_LINKTYPES.

docs/corpus.md explains every choice. The result goes to tests/data/tshark_reference.json, so
the tests do not need tshark. Run from the repository root:

    python3 tools/tshark_reference.py            # whole corpus, rewrites the JSON
    python3 tools/tshark_reference.py --print FILE ...   # per-packet view, for debugging

Standard library only; needs tshark on PATH.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "pcaps" / "tcpdump-tests"
DEFAULT_OUT = REPO / "tests" / "data" / "tshark_reference.json"

# The link types netwarden.wire.packet decodes (kept in step with SUPPORTED_LINKTYPES there;
# the test checks that).
SUPPORTED_LINKTYPES = frozenset({0, 1, 12, 14, 101, 108, 113, 228, 229, 276})

# No reassembly: every frame is dissected on its own, as netwarden's decoder sees it.
# ip.tso_support is tshark's default; ipv6.tso_support makes a zero payload length mean
# "the rest of the frame", as the contract says (docs/internals.md, F_LEN).
TSHARK_OPTIONS = (
    "ip.defragment:FALSE",
    "ipv6.defragment:FALSE",
    "ip.tso_support:TRUE",
    "ipv6.tso_support:TRUE",
    "tcp.desegment_tcp_streams:FALSE",
    "tcp.reassemble_out_of_order:FALSE",
    "tcp.analyze_sequence_numbers:FALSE",
    "tcp.check_checksum:FALSE",
    "udp.check_checksum:FALSE",
    "ip.check_checksum:FALSE",
)

# Top-level tshark protocols that may stand between the frame and the outer IP layer: the
# encapsulations netwarden decodes. IP found behind anything else (MPLS, MACsec, vendor
# tags, ...) is not something netwarden sees as IP: the frame counts as "other".
LINK_PROTOS = frozenset(
    {"eth", "ethertype", "vlan", "ieee8021ad", "llc", "pppoes", "ppp", "sll", "null", "raw"}
)
EXCEPTION_PROTOS = frozenset({"_ws.short", "_ws.malformed"})
# The marker tshark adds after an exception names the protocol that raised it, e.g.
# "[Malformed Packet: IPv6 Hop-by-Hop]" or "[Packet size limited during capture: IPv4
# truncated]": only those of the IP layer (extension headers included) make the IP header
# cut off; one raised by ICMP, IPComp, ... leaves the IP header whole.
IP_LAYER_EXCEPTION = re.compile(
    r": (IPv4|IPv6|IPv6 Hop-by-Hop|IPv6 Routing|IPv6 Fragment|IPv6 Destination Options|AH)"
    r"( truncated)?\]$"
)
# Raw IP link types: the frame must be IP (of the given family, for 228 and 229).
RAW_IP_LINKTYPES: dict[int, str | None] = {12: None, 14: None, 101: None, 228: "ip", 229: "ipv6"}

# Expert infos of tshark's IP dissectors that mean "the IP header is inconsistent" in the
# sense of the counting rules (the header's own length fields contradict each other or the
# frame). Other expert infos (options, checksums, deprecated headers) are not counted.
IP_HEADER_ERRORS = (
    re.compile(r"^Bogus IP(v6)? version"),
    re.compile(r"^Bogus IP header length"),
    re.compile(r"^Bogus IP length"),
    re.compile(r"^IPv4 total length exceeds packet length"),
    re.compile(r"^IPv6 payload length exceeds framing length"),
    re.compile(r"^IPv6 header must be exactly 40 bytes"),
)

# Protocols with ports: tshark's protocol element and field prefix.
PORT_PROTOS = {
    6: ("tcp", "tcp"),
    17: ("udp", "udp"),
    33: ("dccp", "dccp"),
    132: ("sctp", "sctp"),
    136: ("udplite", "udp"),
}
CATEGORY = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp"}
CATEGORIES = ("tcp", "udp", "icmp", "icmpv6", "sctp", "ip")

# IPv6 extension headers as tshark nests them inside its ipv6 tree, with their next-header
# field.
IPV6_EXT_NXT = {
    "ipv6.hopopts": "ipv6.hopopts.nxt",
    "ipv6.routing": "ipv6.routing.nxt",
    "ipv6.fraghdr": "ipv6.fraghdr.nxt",
    "ipv6.dstopts": "ipv6.dstopts.nxt",
    "ah": "ah.next_header",
}

MALFORMED = "malformed"
OTHER = "other"
UNSUPPORTED_ENCAP = "unsupported-encap"

# A packet record: OTHER, UNSUPPORTED_ENCAP, MALFORMED, or
# (family, proto, src hex, dst hex, sport, dport, frag 0/1/2, fragid, TCP flags, ICMP aux,
# IP length).
Record = Any


# --------------------------------------------------------------------------- link types


def linktypes(path: Path) -> list[int] | None:
    """Link types declared by a pcap header or by pcapng IDBs (low 16 bits); None if neither."""
    with path.open("rb") as f:
        data = f.read()
    if len(data) >= 24 and data[:4] in (
        b"\xd4\xc3\xb2\xa1",
        b"\x4d\x3c\xb2\xa1",
        b"\x34\xcd\xb2\xa1",
    ):
        return [struct.unpack_from("<I", data, 20)[0] & 0xFFFF]
    if len(data) >= 24 and data[:4] in (
        b"\xa1\xb2\xc3\xd4",
        b"\xa1\xb2\x3c\x4d",
        b"\xa1\xb2\xcd\x34",
    ):
        return [struct.unpack_from(">I", data, 20)[0] & 0xFFFF]
    if data[:4] != b"\x0a\x0d\x0d\x0a":
        return None
    found: list[int] = []
    off = 0
    order = "<"
    while off + 12 <= len(data):
        if data[off : off + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if data[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        btype, blen = struct.unpack_from(order + "II", data, off)
        if blen < 12 or off + blen > len(data):
            break
        if btype == 1 and blen >= 16:
            found.append(struct.unpack_from(order + "H", data, off + 8)[0])
        off += blen
    return found


# --------------------------------------------------------------------------- PDML


def _fields(elem: ET.Element) -> Iterator[ET.Element]:
    """The field elements of one proto element, not descending into nested protos."""
    for child in elem:
        if child.tag == "field":
            yield child
            yield from _fields(child)


def _first(elem: ET.Element, name: str) -> ET.Element | None:
    for f in _fields(elem):
        if f.get("name") == name:
            return f
    return None


def _int_show(elem: ET.Element, name: str) -> int | None:
    f = _first(elem, name)
    if f is None:
        return None
    show = f.get("show", "")
    try:
        return int(show, 0)
    except ValueError:
        return None


def _hex_value(elem: ET.Element, name: str) -> str | None:
    f = _first(elem, name)
    return None if f is None else f.get("value")


def _header_error(elem: ET.Element) -> str | None:
    """The first IP-header consistency error tshark reported inside ``elem`` (nested protos
    included: IPv6 extension headers live there), or a nested malformed marker."""
    for node in elem.iter():
        if node.tag == "proto" and node.get("name") == "_ws.malformed":
            return "exception inside the IP layer"
        if node.tag == "field" and node.get("name") == "_ws.expert.message":
            msg = node.get("show", "")
            if any(p.search(msg) for p in IP_HEADER_ERRORS):
                return msg
    return None


def _transport(
    proto: int, elem: ET.Element | None
) -> tuple[int | None, int | None, int, int | None]:
    """(sport, dport, TCP flags, ICMP discriminator) from the protocol element that follows
    the IP layer, as docs/internals.md defines them."""
    sport = dport = aux = None
    flags = 0
    if elem is None:
        return sport, dport, flags, aux
    name = elem.get("name")
    if proto in PORT_PROTOS and name == PORT_PROTOS[proto][0]:
        prefix = PORT_PROTOS[proto][1]
        sport = _int_show(elem, prefix + ".srcport")
        dport = _int_show(elem, prefix + ".dstport")
        if sport is None or dport is None:
            sport = dport = None
        if proto == 6:
            flags = (_int_show(elem, "tcp.flags") or 0) & 0xFF
    elif proto == 1 and name == "icmp":
        icmp_type = _int_show(elem, "icmp.type")
        if icmp_type in (0, 8):
            aux = _int_show(elem, "icmp.ident")
        elif icmp_type is not None:
            aux = 0x10000 | icmp_type
    elif proto == 58 and name == "icmpv6":
        icmp_type = _int_show(elem, "icmpv6.type")
        if icmp_type in (128, 129):
            aux = _int_show(elem, "icmpv6.echo.identifier")
        elif icmp_type is not None:
            aux = 0x10000 | icmp_type
    return sport, dport, flags, aux


def packet_record(packet: ET.Element, linktype: int) -> tuple[Record, str]:
    """The record of one PDML packet, and a short reason (for --print)."""
    protos = [p for p in packet if p.tag == "proto" and p.get("name") not in ("geninfo", "frame")]
    i = 0
    while i < len(protos) and protos[i].get("name") in LINK_PROTOS:
        i += 1
    if i == len(protos) or protos[i].get("name") not in ("ip", "ipv6"):
        if linktype in RAW_IP_LINKTYPES:
            return MALFORMED, "raw IP link type without an IP header"
        if any(p.get("name") in ("ip", "ipv6") for p in protos[i:]):
            return UNSUPPORTED_ENCAP, "IP behind " + str(protos[i].get("name"))
        return OTHER, "no IP"
    ip = protos[i]
    family_wanted = RAW_IP_LINKTYPES.get(linktype)
    if family_wanted and ip.get("name") != family_wanted:
        return MALFORMED, f"{ip.get('name')} on link type {linktype}"
    after = protos[i + 1] if i + 1 < len(protos) else None
    if after is not None and after.get("name") in EXCEPTION_PROTOS:
        where = str(after.get("showname"))
        if IP_LAYER_EXCEPTION.search(where):
            return MALFORMED, "exception in the IP layer: " + where
    err = _header_error(ip)
    if err:
        return MALFORMED, err
    if ip.get("name") == "ip":
        family = 4
        proto = _int_show(ip, "ip.proto")
        src = _hex_value(ip, "ip.src")
        dst = _hex_value(ip, "ip.dst")
        ident = _int_show(ip, "ip.id")
        more = _int_show(ip, "ip.flags.mf")
        offset = _int_show(ip, "ip.frag_offset")
        length = _int_show(ip, "ip.len")  # tshark fills in a TSO zero itself
        if None in (proto, src, dst, ident, more, offset, length):
            return MALFORMED, "IPv4 header incomplete"
        frag = 2 if offset else (1 if more else 0)
    else:
        family = 6
        proto = _int_show(ip, "ipv6.nxt")
        src = _hex_value(ip, "ipv6.src")
        dst = _hex_value(ip, "ipv6.dst")
        plen = _int_show(ip, "ipv6.plen")  # a TSO zero filled in by tshark, not a jumbo one
        if None in (proto, src, dst, plen):
            return MALFORMED, "IPv6 header incomplete"
        if plen == 0:
            jumbo = next((f for f in ip.iter("field") if f.get("name") == "ipv6.opt.jumbo"), None)
            if jumbo is not None:
                plen = int(jumbo.get("show", "0"))
        assert plen is not None
        length = 40 + plen
        frag = 0
        ident = 0
        for ext in ip.iter("proto"):
            name = ext.get("name", "")
            if name not in IPV6_EXT_NXT:
                continue
            nxt = _int_show(ext, IPV6_EXT_NXT[name])
            if nxt is None:
                return MALFORMED, name + " incomplete"
            proto = nxt
            if name == "ipv6.fraghdr":
                offset = _int_show(ext, "ipv6.fraghdr.offset")
                more = _int_show(ext, "ipv6.fraghdr.more")
                fid = _int_show(ext, "ipv6.fraghdr.ident")
                if None in (offset, more, fid):
                    return MALFORMED, "ipv6.fraghdr incomplete"
                if offset:
                    frag, ident = 2, fid
                elif more:
                    frag, ident = 1, fid
    assert proto is not None
    sport, dport, flags, aux = _transport(proto, None if frag == 2 else after)
    fragid = ident if frag else 0
    return (family, proto, src, dst, sport, dport, frag, fragid, flags, aux, length), "ok"


def tshark_command(path: Path) -> list[str]:
    cmd = ["tshark", "-n", "-r", str(path), "-T", "pdml"]
    for opt in TSHARK_OPTIONS:
        cmd += ["-o", opt]
    return cmd


def records_from_pdml(stream: IO[bytes], linktype: int) -> list[tuple[Record, str]]:
    """Records (with the reason for each) of every packet of a PDML document."""
    records: list[tuple[Record, str]] = []
    try:
        for _event, elem in ET.iterparse(stream, events=("end",)):
            if elem.tag == "packet":
                records.append(packet_record(elem, linktype))
                elem.clear()
    except ET.ParseError as exc:  # tshark died mid-document
        records.append((MALFORMED, f"PDML parse error {exc}"))
    return records


def tshark_packets(path: Path, linktype: int) -> tuple[list[tuple[Record, str]], str]:
    """Records of every packet tshark reads from ``path``, and tshark's complaint if any."""
    proc = subprocess.Popen(
        tshark_command(path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert proc.stdout is not None
    records = records_from_pdml(proc.stdout, linktype)
    _, err = proc.communicate()
    complaint = " ".join(
        line.strip()
        for line in err.decode(errors="replace").splitlines()
        if line.strip() and "Running as user" not in line and "could be dangerous" not in line
    )
    return records, complaint


# --------------------------------------------------------------------------- counting


def summarise(records: Iterable[Record]) -> dict[str, Any]:
    """Per-protocol counts and distinct TCP/UDP flows, by the counting rules; plus two checks
    of the finer fields: TCP packets with SYN and not ACK (``F_FLAGS``), and the distinct ICMP
    and ICMPv6 discriminators (``F_AUX``); and a digest of every packet's record, which only
    agrees when every field of every packet does."""
    counts = dict.fromkeys(CATEGORIES, 0)
    frames = other = malformed = unsupported = syn = ip_bytes = 0
    digest = hashlib.sha256()
    icmp_kinds: set[tuple[int, int | None]] = set()
    flows: dict[int, set[tuple[Any, ...]]] = {6: set(), 17: set()}
    first_fragments: dict[tuple[Any, ...], tuple[int | None, int | None]] = {}
    for rec in records:
        frames += 1
        digest.update(json.dumps(OTHER if rec == UNSUPPORTED_ENCAP else rec).encode() + b"\n")
        if rec == OTHER:
            other += 1
            continue
        if rec == UNSUPPORTED_ENCAP:
            other += 1
            unsupported += 1
            continue
        if rec == MALFORMED:
            malformed += 1
            continue
        family, proto, src, dst, sport, dport, frag, fragid, flags, aux, length = rec
        counts[CATEGORY.get(proto, "ip")] += 1
        ip_bytes += length
        if proto == 6 and flags & 0x12 == 0x02:
            syn += 1
        elif proto in (1, 58):
            icmp_kinds.add((proto, aux))
        if proto not in flows:
            continue
        if frag:
            key = (family, src, dst, proto, fragid)
            if frag == 1:
                first_fragments[key] = (sport, dport)
            else:
                sport, dport = first_fragments.get(key, (None, None))
        a = (src, -1 if sport is None else sport)
        b = (dst, -1 if dport is None else dport)
        flows[proto].add((a, b) if a <= b else (b, a))
    return {
        "frames": frames,
        "counts": counts,
        "other": other,
        "malformed": malformed,
        "ip_behind_unsupported_encapsulation": unsupported,
        "flows": {"tcp": len(flows[6]), "udp": len(flows[17])},
        "ip_bytes": ip_bytes,
        "tcp_syn": syn,
        "icmp_kinds": len(icmp_kinds),
        "records_sha256": digest.hexdigest()[:16],
    }


def reference_for(path: Path, linktype: int) -> dict[str, Any]:
    records, complaint = tshark_packets(path, linktype)
    summary = summarise(rec for rec, _why in records)
    if complaint:
        summary["tshark_said"] = complaint[:300]
    return summary


# --------------------------------------------------------------------------- main


def tshark_version() -> str:
    out = subprocess.run(["tshark", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def eligible(corpus: Path) -> tuple[dict[str, int], int]:
    """Files whose link types are all supported -> link type; and the number of files seen."""
    chosen: dict[str, int] = {}
    total = 0
    for path in sorted(corpus.iterdir()):
        if not path.is_file() or path.suffix not in (".pcap", ".pcapng"):
            continue
        total += 1
        lts = linktypes(path)
        if lts and all(lt in SUPPORTED_LINKTYPES for lt in lts) and len(set(lts)) == 1:
            chosen[path.name] = lts[0]
    return chosen, total


def dump(doc: dict[str, Any]) -> str:
    """JSON with one line per file: small diffs when the reference is regenerated."""
    head = {k: v for k, v in doc.items() if k != "files"}
    lines = [json.dumps(head, indent=1)[:-2] + ',\n "files": {']
    rows = [f"  {json.dumps(name)}: {json.dumps(row)}" for name, row in doc["files"].items()]
    lines.append(",\n".join(rows))
    lines.append(" }\n}\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--print", nargs="+", metavar="FILE", help="show per-packet records")
    args = ap.parse_args(argv)

    if args.print:
        for name in args.print:
            path = Path(name) if os.sep in name else args.corpus / name
            lts = linktypes(path) or [-1]
            records, complaint = tshark_packets(path, lts[0])
            print(f"== {path.name} {lts} {complaint}")
            for n, (rec, why) in enumerate(records, 1):
                print(n, rec, why)
            print(json.dumps(summarise(r for r, _ in records)))
        return 0

    files, seen = eligible(args.corpus)
    results: dict[str, Any] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(reference_for, args.corpus / name, files[name]): name for name in files
        }
        for done, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            name = futures[fut]
            results[name] = {"linktype": files[name], **fut.result()}
            if done % 50 == 0:
                print(f"{done}/{len(files)}", file=sys.stderr)
    doc = {
        "generator": "tools/tshark_reference.py",
        "tshark_version": tshark_version(),
        "tshark_options": list(TSHARK_OPTIONS),
        "corpus": "shared/pcaps/tcpdump-tests",
        "files_in_corpus": seen,
        "files": dict(sorted(results.items())),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(doc))
    print(f"{len(results)} eligible files of {seen} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
