"""The ``netwarden`` command line."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TextIO

from netwarden import __version__
from netwarden.errors import NetwardenError, UsageError
from netwarden.output import DEFAULT_TS_FORMAT, Printer, check_template, parse_events_option

log = logging.getLogger(__name__)

EPILOG_SNIFF = """\
examples:
  netwarden sniff                          every new flow on all interfaces
  netwarden sniff -i eth0 tcp port 443     flows matching a tcpdump filter on eth0
  netwarden sniff -c --json                new TCP connections only, as JSON lines
  netwarden sniff --stats -i eth0 'not port 22'
  netwarden sniff --format '{ts} {src} -> {dst}:{dport} {proto}' --format-ts '%H:%M:%S'
"""

EPILOG_REPLAY = """\
examples:
  netwarden replay capture.pcap
  netwarden replay capture.pcapng 'tcp and port 80' --json
  netwarden replay --local 192.0.2.10 capture.pcap   say whose capture it is (for direction)
  netwarden replay --stats --events end big.pcap
"""

EPILOG_RUN = """\
examples:
  netwarden run                            watch this host; dashboard on http://127.0.0.1:9750/
  netwarden run --detach                   in the background; `netwarden stop` ends it
  netwarden run --json --jsonl /var/log/netwarden.jsonl
  netwarden run --scan-ports 10 --scan-window 30s --allow 10.0.0.0/8
"""

EPILOG_QUERY = """\
examples:
  netwarden query --since 1h --dst 192.0.2.0/24
  netwarden query --comm curl --port 443 --json
  netwarden query --since 2026-11-22T08:00 --until 2026-11-22T09:00 --unit nginx.service
"""

EPILOG_REPORT = """\
examples:
  netwarden report                         per remote address, most bytes first
  netwarden report --by net --since 1d     by /24 and /64
  netwarden report --by domain --html report.html
  netwarden report --from http://10.0.0.2:9750 --from http://10.0.0.3:9750 --local-too
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        """One line on stderr, exit 2 (argparse's usage block is noise for scripts)."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="one JSON object per event and line")
    g.add_argument(
        "--format",
        metavar="TEMPLATE",
        help="a line template with {field} names from the event table, e.g. '{ts} {src} {dport}'",
    )
    g.add_argument(
        "--format-ts",
        metavar="STRFTIME",
        default=DEFAULT_TS_FORMAT,
        help="how {ts} is written (strftime, plus %%f for microseconds; default %(default)r)",
    )
    g.add_argument(
        "--events",
        metavar="LIST",
        help="which events to print, comma-separated: new,end (default: both)",
    )
    g.add_argument(
        "-c",
        "--tcp-connects",
        action="store_true",
        help="only new TCP connections (flows that began with a SYN)",
    )
    g.add_argument("--count", type=int, metavar="N", help="stop after printing N events")
    g.add_argument(
        "--stats",
        action="store_true",
        help="print a summary (packets, bytes, flows by protocol) to stderr at the end",
    )


def _add_payload_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("payload (Net::Connection::Sniffer's match/nomatch)")
    g.add_argument(
        "--match",
        metavar="REGEX",
        help="count only packets whose payload matches (case-insensitive)",
    )
    g.add_argument(
        "--nomatch",
        metavar="REGEX",
        help="do not count packets whose payload matches (case-insensitive)",
    )
    g.add_argument(
        "--payload-offset",
        type=int,
        default=0,
        metavar="N",
        help="match from N bytes into the transport payload",
    )


def _inspector(args: argparse.Namespace) -> Any:
    from netwarden.stats.packets import PayloadInspector

    if args.match is None and args.nomatch is None:
        if args.payload_offset:
            raise UsageError(
                "needs --match or --nomatch", option="--payload-offset", value=args.payload_offset
            )
        return None
    return PayloadInspector(match=args.match, nomatch=args.nomatch, offset=args.payload_offset)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", metavar="DIR", help="where state lives (accepted; unused here)")
    p.add_argument("--config", metavar="FILE", help="config file (TOML)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")


def _add_capture_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=("auto", "ebpf", "conntrack", "sniff"),
        help="capture backend (default auto: ebpf, then conntrack, then sniff)",
    )
    p.add_argument("-i", "--iface", metavar="IFACE", help="interface (default: all)")
    p.add_argument(
        "--snaplen",
        type=int,
        metavar="N",
        help="bytes kept of each packet (sniff: 262144; run: 512, enough for headers and DNS)",
    )
    p.add_argument(
        "-B",
        "--buffer-size",
        type=int,
        metavar="KIB",
        help="capture ring size in KiB, as tcpdump's -B (sniff: 65536; run: 16384)",
    )
    p.add_argument("filter", nargs="*", help="a tcpdump filter expression")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("daemon (each is also a config key and a NETWARDEN_* variable)")
    g.add_argument(
        "--scan-ports",
        type=int,
        metavar="N",
        help="more than N distinct ports of one host in the window is a port scan (3)",
    )
    g.add_argument(
        "--scan-hosts",
        type=int,
        metavar="N",
        help="more than N hosts on one port in the window is a sweep (25)",
    )
    g.add_argument("--scan-window", metavar="DURATION", help="the sliding window (60s)")
    g.add_argument("--block", action="store_const", const=True, help="block detected scanners")
    g.add_argument(
        "--block-for", metavar="DURATION", help="how long a block lasts (1h; 0 = until unblocked)"
    )
    g.add_argument(
        "--allow",
        action="append",
        metavar="CIDR",
        help="never flag or block these sources (repeatable)",
    )
    g.add_argument(
        "--no-allow-self",
        action="store_const",
        const=True,
        help="do not allowlist this host's own addresses",
    )
    g.add_argument(
        "--listen", metavar="ADDR:PORT", help="dashboard, API, /metrics (127.0.0.1:9750)"
    )
    g.add_argument("--token-file", metavar="FILE", help="API token (or NETWARDEN_TOKEN)")
    g.add_argument("--jsonl", metavar="FILE", help="also append every event to FILE as JSON")
    g.add_argument("--exec", metavar="CMD", help="run CMD for each scan/block/unblock event")
    g.add_argument(
        "--all-netns",
        action="store_const",
        const=True,
        help="every network namespace of the host (ebpf backend)",
    )
    g.add_argument(
        "--detach", action="store_true", help="go to the background (pidfile in the state dir)"
    )
    g.add_argument(
        "--xdp",
        action="append",
        metavar="IFACE",
        help="with --block: the XDP fast path on IFACE (repeatable): blocked sources dropped "
        "before the stack, scanners blocked in the kernel at the threshold probe",
    )
    g.add_argument(
        "--xdp-mode",
        choices=("auto", "native", "generic"),
        help="how XDP attaches (auto: native where the driver can)",
    )


def _add_query_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters")
    g.add_argument("--since", metavar="TIME", help="Unix seconds, ISO 8601, or a duration ago (1h)")
    g.add_argument("--until", metavar="TIME", help="same forms as --since")
    g.add_argument("--src", metavar="IP|CIDR", help="initiator address or network")
    g.add_argument("--dst", metavar="IP|CIDR", help="responder address or network")
    g.add_argument("--port", type=int, metavar="PORT", help="either port")
    g.add_argument("--proto", choices=("tcp", "udp", "icmp", "icmpv6", "sctp", "ip"))
    g.add_argument("--pid", type=int, metavar="PID")
    g.add_argument("--comm", metavar="NAME", help="process name")
    g.add_argument("--exe", metavar="PATH", help="executable path")
    g.add_argument("--unit", metavar="UNIT", help="systemd unit")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="netwarden",
        description="Host network auditor: which process talked to whom, when, and how much "
        "— and who is probing this host.",
    )
    parser.add_argument("--version", action="version", version=f"netwarden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "sniff",
        help="passive capture with a tcpdump filter; prints flows",
        description="Capture packets (AF_PACKET ring, filter in the kernel) and print each "
        "flow when first seen (new) and when it ends (end).",
        epilog=EPILOG_SNIFF,
        formatter_class=fmt,
    )
    _add_capture_flags(p)
    _add_output_flags(p)
    _add_payload_flags(p)
    _add_common(p)
    p.set_defaults(func=cmd_sniff)

    p = sub.add_parser(
        "replay",
        help="the same pipeline over a pcap or pcapng file",
        description="Read a pcap or pcapng file and print its flows as sniff would.",
        epilog=EPILOG_REPLAY,
        formatter_class=fmt,
    )
    p.add_argument("file", help="pcap or pcapng file")
    p.add_argument("filter", nargs="*", help="a tcpdump filter expression")
    p.add_argument(
        "--local",
        action="append",
        default=[],
        metavar="CIDR",
        help="addresses of the host the capture was taken on (decides direction); repeatable",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress on stderr (auto: when stderr is a terminal and the file is large)",
    )
    _add_output_flags(p)
    _add_payload_flags(p)
    _add_common(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "run",
        help="the daemon: capture, attribution, detection, store, metrics, dashboard",
        description="Watch this host's traffic: every flow goes to the audit store "
        "(query/report), /metrics and the dashboard; new connections are printed.",
        epilog=EPILOG_RUN,
        formatter_class=fmt,
    )
    _add_capture_flags(p)
    _add_output_flags(p)
    _add_common(p)
    _add_run_flags(p)
    p.set_defaults(func=cmd_run)

    for name, help_text, func in (
        ("status", "is the daemon running? (exit 0 yes, 1 no)", cmd_status),
        ("stop", "stop the daemon and wait for it (at most 10 s)", cmd_stop),
        ("dump", "ask the daemon to write stats.json now, and print it", cmd_dump),
        ("config", "print the effective configuration (file < environment < flags)", cmd_config),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(p)
        if name == "config":
            _add_run_flags(p)
            p.add_argument("--backend", choices=("auto", "ebpf", "conntrack", "sniff"))
            p.add_argument("-i", "--iface", metavar="IFACE")
        p.set_defaults(func=func)

    p = sub.add_parser(
        "query",
        help="search the audit store",
        description="Flows from the audit store (the daemon's state dir), oldest first.",
        epilog=EPILOG_QUERY,
        formatter_class=fmt,
    )
    _add_query_flags(p)
    p.add_argument("--limit", type=int, metavar="N", help="only the N most recent flows")
    p.add_argument("--json", action="store_true", help="one JSON object per flow and line")
    p.add_argument("--format", metavar="TEMPLATE", help="a line template with {field} names")
    p.add_argument("--format-ts", metavar="STRFTIME", default=DEFAULT_TS_FORMAT)
    _add_common(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser(
        "report",
        help="per-remote statistics, grouped by ip, net, domain, process or unit",
        description="Net::Connection::Sniffer's report over the audit store, or merged from "
        "other hosts' daemons (--from).",
        epilog=EPILOG_REPORT,
        formatter_class=fmt,
    )
    p.add_argument("--by", default="ip", choices=("ip", "net", "domain", "process", "unit"))
    _add_query_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per group and line")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        metavar="URL",
        help="merge the report of the daemon at URL (repeatable); "
        "the token comes from --token-file or NETWARDEN_TOKEN",
    )
    p.add_argument("--local-too", action="store_true", help="with --from: add this host's rows")
    p.add_argument("--token-file", metavar="FILE", help="token for --from URLs")
    p.add_argument("--top", type=int, metavar="N", help="only the N biggest groups")
    p.add_argument("--no-names", action="store_true", help="no reverse DNS")
    _add_common(p)
    p.set_defaults(func=cmd_report)

    from netwarden.livecmds import add_log_parser, add_trap_parser

    add_log_parser(sub, _add_common)
    add_trap_parser(sub, _add_common)

    p = sub.add_parser(
        "blocks",
        help="list the active blocks",
        description="The active blocks (from the state dir): address, since, until, reason, ports.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per block and line")
    _add_common(p)
    p.set_defaults(func=cmd_blocks)

    p = sub.add_parser(
        "block",
        help="block an address or CIDR (new connections from it are dropped)",
        description="Block new connections (TCP SYNs, new UDP and ICMP) from an address or "
        "CIDR, in netwarden's own nftables table. Allowlisted, own and loopback addresses are "
        "refused.",
        epilog="examples:\n  netwarden block 203.0.113.7 --for 1h\n"
        "  netwarden block 2001:db8:bad::/48 --reason 'abuse report'",
        formatter_class=fmt,
    )
    p.add_argument("addr", metavar="IP|CIDR")
    p.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="how long (30s, 10m, 1h, 7d; 0 = until unblocked); default: --block-for",
    )
    p.add_argument("--reason", default="manual", help="why (shown by blocks)")
    p.add_argument("--allow", action="append", metavar="CIDR", help="as for run")
    p.add_argument("--no-allow-self", action="store_const", const=True, help="as for run")
    _add_common(p)
    p.set_defaults(func=cmd_block)

    p = sub.add_parser(
        "unblock",
        help="remove a block",
        description="Remove a block; the detector forgets the source.",
    )
    p.add_argument("addr", metavar="IP|CIDR")
    _add_common(p)
    p.set_defaults(func=cmd_unblock)

    p = sub.add_parser(
        "doctor",
        help="which backends and blockers work here, why not, and how to fix",
        description="A table of each capture backend and blocker: available or not, why, "
        "and how to fix it. Exit 0 when at least one backend works, 3 when none does.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per check")
    _add_common(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("version", help="print the version")
    _add_common(p)
    p.set_defaults(func=cmd_version)
    return parser


# ---------------------------------------------------------------------------- helpers
def _printer(args: argparse.Namespace, out: TextIO, default_events: str | None) -> Printer:
    if args.format is not None:
        check_template(args.format)
    try:
        time.strftime(args.format_ts)
    except ValueError as exc:
        raise UsageError(str(exc), option="--format-ts", value=args.format_ts) from None
    events_opt = args.events or default_events
    events = parse_events_option(events_opt) if events_opt else None
    if args.count is not None and args.count < 1:
        raise UsageError("must be at least 1", option="--count", value=args.count)
    return Printer(
        out,
        json_lines=args.json,
        template=args.format,
        ts_format=args.format_ts,
        events=events,
    )


def _filter_text(words: Sequence[str]) -> str | None:
    text = " ".join(words).strip()
    return text or None


def _check_backend(args: argparse.Namespace) -> None:
    if args.backend is None:
        args.backend = "auto"
    if args.backend in ("ebpf", "conntrack"):
        raise UsageError(
            "sniff is the packet backend; ebpf and conntrack are for run and log",
            option="--backend",
            value=args.backend,
            allowed="auto, sniff",
        )
    if args.snaplen is None:
        args.snaplen = 262144
    if args.buffer_size is None:
        args.buffer_size = 65536
    if not 64 <= args.snaplen <= 262144:
        raise UsageError(
            "out of range", option="--snaplen", value=args.snaplen, allowed="64-262144"
        )
    if not 2048 <= args.buffer_size <= 1 << 22:
        raise UsageError(
            "out of range",
            option="--buffer-size",
            value=args.buffer_size,
            allowed="2048-4194304 KiB",
        )


def _install_stop(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _print_summary(summary: dict[str, Any], err: TextIO) -> None:
    from netwarden.events import PROTO_NAMES

    names = {n: PROTO_NAMES.get(n, f"ip/{n}") for n in summary["proto_packets"]}
    err.write(
        f"{summary['packets']} packets, {summary['ip_packets']} IP packets, "
        f"{summary['ip_bytes']} IP bytes, {summary['flows']} flows\n"
    )
    for n, count in summary["proto_packets"].items():
        err.write(f"  {names[n]:<8} {count} packets\n")
    err.write(
        f"  {summary['other_packets']} not IP, {summary['malformed_packets']} malformed, "
        f"{summary['filtered_packets']} filtered out, {summary['flows_evicted']} flows evicted\n"
    )


def _emit_loop(source: Any, printer: Printer, limit: int | None) -> None:
    for event in source:
        printer(event)
        if limit is not None and printer.count >= limit:
            source.stop()
            break


# ---------------------------------------------------------------------------- commands
def cmd_sniff(args: argparse.Namespace) -> int:
    from netwarden.capture.packets import SniffSource, tune_gc

    _check_backend(args)
    printer = _printer(args, sys.stdout, None)
    src = SniffSource(
        args.iface,
        _filter_text(args.filter),
        snaplen=args.snaplen,
        tcp_connections_only=args.tcp_connects,
        inspector=_inspector(args),
        buffer_kib=args.buffer_size,
    )
    _install_stop(src.stop)
    tune_gc()
    sys.stderr.write(f"listening on {args.iface or 'all interfaces'}\n")
    sys.stderr.flush()
    try:
        _emit_loop(src, printer, args.count)
        captured, dropped = src.kernel_stats()
    finally:
        src.close()
    if args.stats:
        _print_summary(src.summary(), sys.stderr)
    sys.stderr.write(f"{captured} packets captured\n{dropped} packets dropped by kernel\n")
    return 0


_RUN_KEYS = (
    "backend",
    "iface",
    "scan_ports",
    "scan_hosts",
    "scan_window",
    "block",
    "block_for",
    "allow",
    "no_allow_self",
    "listen",
    "token_file",
    "jsonl",
    "exec",
    "all_netns",
    "state_dir",
    "snaplen",
    "buffer_size",
    "xdp",
    "xdp_mode",
)


def _config(args: argparse.Namespace) -> Any:
    from netwarden import config

    flags = {k: getattr(args, k, None) for k in _RUN_KEYS}
    return config.load(file=args.config, flags=flags)


def _token(cfg: Any, token_file: str | None = None) -> str | None:
    path = token_file or cfg.token_file
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise UsageError(exc.strerror or str(exc), option="--token-file", value=path) from None
        if not token:
            raise UsageError("the file is empty", option="--token-file", value=path)
        return token
    return os.environ.get("NETWARDEN_TOKEN") or None


def cmd_run(args: argparse.Namespace) -> int:
    from netwarden import daemon

    cfg = _config(args)
    printer = _printer(args, sys.stdout, "new,probe,scan,block,unblock")
    token = _token(cfg)

    def reload() -> Any:
        return _config(args)

    return daemon.run(
        cfg,
        printer=printer,
        filter_expr=_filter_text(args.filter),
        detach=args.detach,
        token=token,
        reload=reload,
    )


def _state_dir(args: argparse.Namespace) -> str:
    from netwarden.config import default_state_dir

    if args.state_dir:
        return str(args.state_dir)
    if args.config:
        from netwarden import config

        return config.load(file=args.config).effective_state_dir()
    return default_state_dir()


def cmd_status(args: argparse.Namespace) -> int:
    from netwarden import daemon

    running, text = daemon.status(_state_dir(args))
    print(text)
    return 0 if running else 1


def cmd_stop(args: argparse.Namespace) -> int:
    from netwarden import daemon

    print(daemon.stop(_state_dir(args)))
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    from netwarden import daemon

    path = daemon.request_dump(_state_dir(args))
    with open(path, encoding="utf-8") as f:
        sys.stdout.write(f.read())
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from netwarden import config

    print(config.dump(_config(args)), end="")
    return 0


def _flow_filter(args: argparse.Namespace, limit: int | None = None) -> Any:
    from netwarden.config import parse_time
    from netwarden.store.sqlite import FlowFilter

    if limit is not None and limit < 1:
        raise UsageError("must be at least 1", option="--limit", value=limit)
    return FlowFilter(
        since=None if args.since is None else parse_time(args.since, "--since"),
        until=None if args.until is None else parse_time(args.until, "--until"),
        src=args.src,
        dst=args.dst,
        port=args.port,
        proto=args.proto,
        pid=args.pid,
        comm=args.comm,
        exe=args.exe,
        unit=args.unit,
        limit=limit,
    )


def _validate_cidrs(args: argparse.Namespace) -> None:
    from netwarden.config import parse_cidr

    for opt in ("src", "dst"):
        v = getattr(args, opt)
        if v is not None:
            parse_cidr(v, "--" + opt)


def cmd_query(args: argparse.Namespace) -> int:
    from netwarden.events import Event
    from netwarden.store.sqlite import open_store

    _validate_cidrs(args)
    flt = _flow_filter(args, args.limit)
    if args.format is not None:
        check_template(args.format)
    store = open_store(_state_dir(args), readonly=True)
    printer = Printer(
        sys.stdout, json_lines=args.json, template=args.format, ts_format=args.format_ts
    )
    for row in store.flows(flt):
        if args.json:
            sys.stdout.write(json.dumps(row, separators=(",", ":")) + "\n")
        else:
            printer(Event.from_dict(row))
    sys.stdout.flush()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from netwarden.report_cli import run as report

    _validate_cidrs(args)
    return report(args, _flow_filter(args), _state_dir(args))


def _local_option(values: Sequence[str]) -> frozenset[bytes]:
    out: set[bytes] = set()
    for v in values:
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise UsageError(
                "not an address or CIDR", option="--local", value=v, allowed="e.g. 192.0.2.10"
            ) from None
        if net.num_addresses > 65536:
            raise UsageError(
                "too wide", option="--local", value=v, allowed="at most 65536 addresses"
            )
        out.update(a.packed for a in (net if net.num_addresses > 1 else [net.network_address]))
    return frozenset(out)


class _Progress:
    """``replay`` progress on stderr: percent of the file, packets, rate."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = time.monotonic()
        self.next = 0.0

    def __call__(self, offset: int, size: int, packets: int) -> None:
        now = time.monotonic()
        if now < self.next and offset < size:
            return
        self.next = now + 0.5
        pct = 100.0 * offset / size if size else 100.0
        rate = packets / max(now - self.start, 1e-6)
        self.out.write(f"\rreplay: {pct:5.1f}%  {packets} packets  {rate:,.0f} packets/s ")
        if offset >= size:
            self.out.write("\n")
        self.out.flush()


def cmd_replay(args: argparse.Namespace) -> int:
    from netwarden.capture.packets import ReplaySource

    printer = _printer(args, sys.stdout, None)
    local = _local_option(args.local)
    progress = None
    try:
        size = os.path.getsize(args.file)
    except OSError:
        size = 0
    if args.progress == "always" or (
        args.progress == "auto" and sys.stderr.isatty() and size > 8 * 1024 * 1024
    ):
        progress = _Progress(sys.stderr)
    from netwarden.wire.pcapfile import CaptureFileError

    try:
        src = ReplaySource(
            args.file,
            _filter_text(args.filter),
            local_addrs=local,
            tcp_connections_only=args.tcp_connects,
            progress=progress,
            inspector=_inspector(args),
        )
    except CaptureFileError as exc:
        raise UsageError(str(exc)) from None
    _install_stop(src.stop)
    try:
        _emit_loop(src, printer, args.count)
    finally:
        src.close()
    if args.stats:
        _print_summary(src.summary(), sys.stderr)
    if src.counter.unsupported and not src.table.packets:
        types = ", ".join(str(t) for t in sorted(src.counter.unsupported_types))
        raise UsageError(f"{args.file}: unsupported link type {types}")
    if src.error is not None:
        raise UsageError(str(src.error))
    return 0


def _blocker(args: argparse.Namespace) -> Any:
    from netwarden.act.blocker import Blocker
    from netwarden.defense import make_policy
    from netwarden.hostaddrs import local_addresses

    cfg = _config(args)
    policy = make_policy(cfg, local_addresses())
    return cfg, Blocker(cfg.effective_state_dir(), guard=policy.refusal)


def _block_line(b: dict[str, Any]) -> str:
    from netwarden.output import format_ts, sanitize

    until = "never" if b["until"] is None else format_ts(b["until"], "%Y-%m-%d %H:%M:%S")
    ports = ",".join(str(p) for p in b["ports"]) or "-"
    since = format_ts(b["since"], "%Y-%m-%d %H:%M:%S")
    return f"{b['addr']:<40} since {since}  until {until}  ports {ports}  {sanitize(b['reason'])}"


def cmd_blocks(args: argparse.Namespace) -> int:
    _cfg, blocker = _blocker(args)
    for b in blocker.blocks():
        d = b.to_dict()
        print(json.dumps(d) if args.json else _block_line(d))
    return 0


def cmd_block(args: argparse.Namespace) -> int:
    from netwarden.config import parse_duration

    cfg, blocker = _blocker(args)
    seconds = cfg.block_for if args.duration is None else parse_duration(args.duration, "--for")
    b = blocker.block(args.addr, seconds or None, reason=args.reason)
    print("blocked " + _block_line(b.to_dict()))
    return 0


def cmd_unblock(args: argparse.Namespace) -> int:
    _cfg, blocker = _blocker(args)
    b = blocker.unblock(args.addr)
    if b is None:
        print(f"{args.addr} was not blocked")
        return 1
    print(f"unblocked {b.addr}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from netwarden.doctor import render, run_checks

    checks = run_checks()
    if args.json:
        for c in checks:
            print(json.dumps(dataclasses.asdict(c)))
    else:
        sys.stdout.write(render(checks))
    return 0 if any(c.ok and c.kind == "backend" for c in checks) else 3


def cmd_version(args: argparse.Namespace) -> int:
    print(f"netwarden {__version__}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2),
        format="netwarden: %(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc: int = args.func(args)
        return rc
    except NetwardenError as exc:
        sys.stderr.write(f"netwarden: {exc}\n")
        return exc.exit_code
    except BrokenPipeError:
        # the reader went away (| head): not an error, and no traceback at interpreter exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
