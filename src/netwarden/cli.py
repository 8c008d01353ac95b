"""The ``netwarden`` command line."""

from __future__ import annotations

import argparse
import ipaddress
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
  netwarden run                            watch all interfaces, print new connections
  netwarden run --json --jsonl /var/log/netwarden.jsonl
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


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", metavar="DIR", help="where state lives (accepted; unused here)")
    p.add_argument("--config", metavar="FILE", help="config file (TOML)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")


def _add_capture_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "ebpf", "conntrack", "sniff"),
        help="capture backend (this version: sniff)",
    )
    p.add_argument("-i", "--iface", metavar="IFACE", help="interface (default: all)")
    p.add_argument(
        "--snaplen", type=int, default=262144, metavar="N", help="bytes kept of each packet"
    )
    p.add_argument("filter", nargs="*", help="a tcpdump filter expression")


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
    _add_common(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "run",
        help="watch all interfaces and print new connections (the daemon, in the foreground)",
        description="Watch this host's traffic and report each new connection.",
        epilog=EPILOG_RUN,
        formatter_class=fmt,
    )
    _add_capture_flags(p)
    _add_output_flags(p)
    _add_common(p)
    p.add_argument("--jsonl", metavar="FILE", help="also append every event to FILE as JSON")
    p.set_defaults(func=cmd_run)

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
    if args.backend in ("ebpf", "conntrack"):
        from netwarden.errors import MissingCapability

        raise MissingCapability(
            f"backend {args.backend!r} is not in this version of netwarden",
            "use --backend sniff (or auto)",
        )
    if args.snaplen < 64 or args.snaplen > 262144:
        raise UsageError(
            "out of range", option="--snaplen", value=args.snaplen, allowed="64-262144"
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


def _emit_loop(source: Any, printer: Printer, limit: int | None, extra: Any = None) -> None:
    for event in source:
        printer(event)
        if extra is not None:
            extra(event)
        if limit is not None and printer.count >= limit:
            source.stop()
            break


# ---------------------------------------------------------------------------- commands
def _live(args: argparse.Namespace, default_events: str | None, jsonl: str | None) -> int:
    from netwarden.capture.packets import SniffSource

    _check_backend(args)
    printer = _printer(args, sys.stdout, default_events)
    jsonl_file = None
    if jsonl:
        try:
            jsonl_file = open(jsonl, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(exc.strerror or str(exc), option="--jsonl", value=jsonl) from None
    src = SniffSource(
        args.iface,
        _filter_text(args.filter),
        snaplen=args.snaplen,
        tcp_connections_only=args.tcp_connects,
    )
    _install_stop(src.stop)
    where = args.iface or "all interfaces"
    sys.stderr.write(f"listening on {where}\n")
    sys.stderr.flush()

    def to_jsonl(e: Any) -> None:
        assert jsonl_file is not None
        jsonl_file.write(e.to_json() + "\n")
        jsonl_file.flush()

    try:
        _emit_loop(src, printer, args.count, to_jsonl if jsonl_file else None)
        captured, dropped = src.kernel_stats()
    finally:
        src.close()
        if jsonl_file is not None:
            jsonl_file.close()
    if args.stats:
        _print_summary(src.summary(), sys.stderr)
    sys.stderr.write(f"{captured} packets captured\n{dropped} packets dropped by kernel\n")
    return 0


def cmd_sniff(args: argparse.Namespace) -> int:
    return _live(args, None, None)


def cmd_run(args: argparse.Namespace) -> int:
    return _live(args, "new", args.jsonl)


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
