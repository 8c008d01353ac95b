"""``netwarden report``: the table, ``--json``, ``--html FILE`` and ``--from URL`` merging."""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from netwarden.errors import NetwardenError, UsageError
from netwarden.output import format_ts, sanitize
from netwarden.stats.report import aggregate, merge
from netwarden.store.sqlite import FlowFilter, open_store


def _fetch(url: str, by: str, flt: FlowFilter, token: str | None) -> list[dict[str, Any]]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError("not an http(s) URL", option="--from", value=url)
    from netwarden.web.server import is_loopback

    if not is_loopback(parsed.hostname) and parsed.hostname != "localhost" and not token:
        raise UsageError(
            "a token is needed for a daemon not on loopback (--token-file or NETWARDEN_TOKEN)",
            option="--from",
            value=url,
        )
    params = {"by": by}
    for key in ("since", "until", "src", "dst", "port", "proto", "pid", "comm", "exe", "unit"):
        v = getattr(flt, key)
        if v is not None:
            params[key] = str(v)
    full = url.rstrip("/") + "/api/report?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(full, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise NetwardenError(f"--from {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NetwardenError(f"--from {url}: {reason}") from None
    if not isinstance(data, list):
        raise NetwardenError(f"--from {url}: not a report")
    return data


def _table(rows: list[dict[str, Any]], out: Any) -> None:
    head = ("key", "bytes", "in", "out", "conns", "conn/h", "first", "last", "names", "processes")
    lines = [head]
    for r in rows:
        lines.append(
            (
                sanitize(str(r["key"])),
                str(r["bytes"]),
                str(r["bytes_in"]),
                str(r["bytes_out"]),
                str(r["conns"]),
                f"{r['conns_per_hour']:.1f}",
                "-" if r["first"] is None else format_ts(r["first"], "%m-%d %H:%M:%S"),
                "-" if r["last"] is None else format_ts(r["last"], "%m-%d %H:%M:%S"),
                sanitize(",".join(r.get("names") or [])) or "-",
                sanitize(",".join(r.get("processes") or [])) or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")


def html_report(rows: list[dict[str, Any]], by: str, generated: float) -> str:
    """One self-contained page: a bar chart (inline SVG) and the table; every string escaped."""
    e = html.escape
    top = rows[:20]
    biggest = max((r["bytes"] for r in top), default=1) or 1
    bars = []
    for i, r in enumerate(top):
        y = i * 22
        win = 600 * r["bytes_in"] / biggest
        wout = 600 * r["bytes_out"] / biggest
        bars.append(
            f'<text x="0" y="{y + 15}">{e(str(r["key"]))[:40]}</text>'
            f'<rect x="260" y="{y + 3}" width="{win:.1f}" height="16" fill="#2f80ed"/>'
            f'<rect x="{260 + win:.1f}" y="{y + 3}" width="{wout:.1f}" height="16" fill="#eb5757"/>'
        )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="880" height="{22 * len(top) + 4}" '
        f'font-family="sans-serif" font-size="12">{"".join(bars)}</svg>'
    )
    body = []
    for r in rows:
        cells = [
            e(str(r["key"])),
            str(r["bytes"]),
            str(r["bytes_in"]),
            str(r["bytes_out"]),
            str(r["conns"]),
            f"{r['conns_per_hour']:.1f}",
            f"{r['bytes_per_hour']:.0f}",
            e(format_ts(r["first"], "%Y-%m-%d %H:%M:%S")) if r["first"] else "",
            e(format_ts(r["last"], "%Y-%m-%d %H:%M:%S")) if r["last"] else "",
            e(", ".join(r.get("names") or [])),
            e(", ".join(r.get("processes") or [])),
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>netwarden report by {e(by)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #1c1e21; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px 2px 0; text-align: left;
border-bottom: 1px solid #eee; }} .legend span {{ margin-right: 1em; }}
</style></head><body>
<h1>netwarden report by {e(by)}</h1>
<p>{len(rows)} groups; generated {e(format_ts(generated, "%Y-%m-%d %H:%M:%S"))}.</p>
<p class="legend"><span style="color:#2f80ed">&#9632; bytes in</span>
<span style="color:#eb5757">&#9632; bytes out</span></p>
{svg}
<table><thead><tr><th>{e(by)}</th><th>bytes</th><th>in</th><th>out</th><th>conns</th>
<th>conns/h</th><th>bytes/h</th><th>first</th><th>last</th><th>names</th><th>processes</th>
</tr></thead><tbody>
{"".join(body)}
</tbody></table></body></html>
"""


def run(args: argparse.Namespace, flt: FlowFilter, state_dir: str) -> int:
    from netwarden import cli

    sets: list[list[dict[str, Any]]] = []
    if args.sources:
        # --token-file, else NETWARDEN_TOKEN (cli._token reads both)
        token = cli._token(argparse.Namespace(token_file=None), args.token_file)
        for url in args.sources:
            sets.append(_fetch(url, args.by, flt, token))
    if not args.sources or args.local_too:
        store = open_store(state_dir, readonly=True)
        names = None
        if not args.no_names and args.by in ("ip", "domain"):
            from netwarden.stats.names import NameCache

            names = NameCache()
            flows = store.flows(flt)
            for flow in flows:
                remote = flow["src"] if flow.get("direction") == "in" else flow["dst"]
                if remote:
                    names.lookup(remote)
            names.wait(10.0)
            rows = aggregate(flows, args.by, names=names.lookup)
            names.close()
        else:
            rows = aggregate(store.flows(flt), args.by)
        sets.append(rows)
    rows = sets[0] if len(sets) == 1 else merge(sets)
    if args.top is not None:
        rows = rows[: args.top]
    if args.html:
        try:
            with open(args.html, "w", encoding="utf-8") as page:
                page.write(html_report(rows, args.by, time.time()))
        except OSError as exc:
            raise UsageError(exc.strerror or str(exc), option="--html", value=args.html) from None
    if args.json:
        for r in rows:
            sys.stdout.write(json.dumps(r, separators=(",", ":")) + "\n")
    elif not args.html:
        _table(rows, sys.stdout)
    sys.stdout.flush()
    return 0
