"""``netwarden log`` (conntrack-logger) and ``netwarden trap`` (ptrap)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from types import FrameType
from typing import Any

from netwarden.errors import UsageError
from netwarden.events import Event, EventType
from netwarden.output import LOG_FORMAT, Printer, check_template, parse_events_option

log = logging.getLogger(__name__)

PROTO_GROUPS = {"tcp": {"tcp"}, "udp": {"udp"}, "icmp": {"icmp", "icmpv6"}}

EPILOG_LOG = """\
examples:
  netwarden log                            every flow with its process (default line below)
  netwarden log -p udp --events new        new UDP flows only
  netwarden log --json | jq .              JSON lines
  netwarden log --format '{ts} {comm}[{pid}] {dst}:{dport}' --format-ts %H:%M:%S
  netwarden log --all-netns                containers too (each event carries its netns)

default line (conntrack-logger's):
  {ts}: {proto} {src}/{sport} > {dst}/{dport} :: {pid} {uid}:{gid} {unit} :: {cmdline}
"""

EPILOG_TRAP = """\
examples:
  netwarden trap -t -i 192.0.2.7 -p 443             who connects to 192.0.2.7:443?
  netwarden trap -u -p 53 --count 1                 the first process sending to port 53
  netwarden trap -t -p 25 -e 'kill -STOP {pid}'     stop whatever talks SMTP
  netwarden trap -t -i 192.0.2.7 -e 'gcore'         run `gcore PID` per match
  netwarden trap -c -n 2 --timeout 60               new TCP connections, 2/min each, for 60 s

-e CMD is split like a shell would but no shell runs it; {pid} in it is replaced by the pid,
else the pid is added as the last argument; every event field is in NETWARDEN_* variables.
"""


def add_log_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "log",
        help="live log of flows with their local process (conntrack-logger)",
        description="One line per flow event with the local process responsible.",
        epilog=EPILOG_LOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-p", "--proto", choices=sorted(PROTO_GROUPS), help="only this protocol")
    p.add_argument("--backend", choices=("auto", "ebpf", "conntrack", "sniff"), default="auto")
    p.add_argument("--json", action="store_true", help="one JSON object per event and line")
    p.add_argument("--format", metavar="TEMPLATE", default=None, help="a {field} line template")
    p.add_argument("--format-ts", metavar="STRFTIME", default="%Y-%m-%d %H:%M:%S.%f")
    p.add_argument("--events", metavar="LIST", default="new,end", help="new,end (default both)")
    p.add_argument("--all-netns", action="store_true", help="every network namespace (ebpf)")
    p.add_argument(
        "--hold",
        action="store_true",
        help="conntrack backend: hold new TCP SYNs until their owner is found",
    )
    common(p)
    p.set_defaults(func=cmd_log)


def add_trap_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "trap",
        help="find the process sending to IP:PORT and run a command with its pid (ptrap)",
        description="Report each process that sends to the given address and port, and run a "
        "command with its pid. Exact attribution at the socket hook (ebpf), else the "
        "conntrack backend with new TCP SYNs (and with -u, UDP) held in an NFQUEUE until "
        "their owner is found.",
        epilog=EPILOG_TRAP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("-t", "--tcp", action="store_true", help="TCP only")
    g.add_argument("-u", "--udp", action="store_true", help="UDP only")
    p.add_argument("-i", "--ip", metavar="IP", help="remote address (or CIDR)")
    p.add_argument("-p", "--port", type=int, metavar="PORT", help="remote port")
    p.add_argument("-c", "--connections", action="store_true", help="new TCP connections only")
    p.add_argument("-e", "--exec", dest="exec_cmd", metavar="CMD", help="run per match")
    p.add_argument(
        "-n",
        "--per-minute",
        type=int,
        metavar="N",
        help="at most N matches per minute per connection",
    )
    p.add_argument("--count", type=int, metavar="N", help="exit after N matches")
    p.add_argument("--timeout", type=float, metavar="S", help="exit after S seconds")
    p.add_argument("--backend", choices=("auto", "ebpf", "conntrack", "sniff"), default="auto")
    p.add_argument("--json", action="store_true", help="one JSON object per match")
    p.add_argument("--format", metavar="TEMPLATE", help="a {field} line template")
    p.add_argument("--format-ts", metavar="STRFTIME", default="%Y-%m-%d %H:%M:%S.%f")
    p.add_argument(
        "--exec-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="kill a -e command after S seconds (30)",
    )
    common(p)
    p.set_defaults(func=cmd_trap)


# ---------------------------------------------------------------------------- helpers
def _install(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _open(
    backend: str, *, all_netns: bool = False, hold: Any = None, protocols: set[int] | None = None
) -> Any:
    from netwarden.errors import MissingCapability
    from netwarden.pipeline import open_backend

    if hold is not None and backend in ("auto", "conntrack"):
        # the hold serves the conntrack backend; with eBPF there is nothing to hold
        if backend == "auto":
            try:
                return open_backend("ebpf", all_netns=all_netns)
            except MissingCapability as exc:
                log.warning("backend ebpf unavailable: %s", exc)
        from netwarden.capture.conntrack import ConntrackSource

        return ConntrackSource(hold=hold, protocols=protocols)
    return open_backend(backend, all_netns=all_netns)


def _finish(src: Any) -> None:
    summary: dict[str, Any] = {}
    try:
        summary = src.summary()
    except Exception:  # a summary must never hide the exit
        pass
    if hasattr(src, "kernel_stats"):
        captured, dropped = src.kernel_stats()
        sys.stderr.write(f"{captured} packets captured\n{dropped} packets dropped by kernel\n")
    else:
        sys.stderr.write(f"{int(summary.get('events_lost', 0))} events lost\n")


# ---------------------------------------------------------------------------- log
def cmd_log(args: argparse.Namespace) -> int:
    template = None if args.json else (args.format or LOG_FORMAT)
    if template is not None:
        check_template(template)
    events = parse_events_option(args.events, {"new": 1, "end": 1})
    printer = Printer(
        sys.stdout, json_lines=args.json, template=template, ts_format=args.format_ts, events=events
    )
    wanted = PROTO_GROUPS.get(args.proto) if args.proto else None
    hold = None
    if args.hold:
        from netwarden.capture.nfqueue import Hold

        hold = Hold(tcp=True)
    src = _open(args.backend, all_netns=args.all_netns, hold=hold)
    _install(src.stop)
    sys.stderr.write("listening on all interfaces\n")
    sys.stderr.flush()
    try:
        for e in src:
            if wanted is not None and str(e.proto) not in wanted:
                continue
            printer(e)
    finally:
        src.close()
    _finish(src)
    return 0


# ---------------------------------------------------------------------------- trap
class Trap:
    """Which events match, with ptrap's per-connection rate limit. Pure (clock injected)."""

    def __init__(
        self,
        *,
        proto: str | None,
        ip: str | None,
        port: int | None,
        connections: bool,
        per_minute: int | None,
    ) -> None:
        self.proto = proto
        self.net = None
        if ip is not None:
            try:
                self.net = ipaddress.ip_network(ip, strict=False)
            except ValueError:
                raise UsageError("not an address or CIDR", option="-i", value=ip) from None
        if port is not None and not 0 <= port <= 65535:
            raise UsageError("out of range", option="-p", value=port, allowed="0-65535")
        if per_minute is not None and per_minute < 1:
            raise UsageError("must be at least 1", option="-n", value=per_minute)
        self.port = port
        self.connections = connections
        self.per_minute = per_minute
        self._seen: OrderedDict[tuple[object, ...], list[float]] = OrderedDict()
        self.limited = 0

    def match(self, e: Event, now: float) -> bool:
        if e.event is not EventType.NEW or e.scan is not None:
            return False
        if str(e.direction) not in ("out", "local"):
            return False
        proto = str(e.proto)
        if self.connections and proto != "tcp":
            return False
        if self.proto is not None and proto != self.proto:
            return False
        if self.net is not None and (e.dst is None or e.dst not in self.net):
            return False
        if self.port is not None and e.dport != self.port:
            return False
        if self.per_minute is not None:
            key = (proto, e.src, e.sport, e.dst, e.dport)
            times = [t for t in self._seen.pop(key, []) if now - t < 60.0]
            if len(times) >= self.per_minute:
                self._seen[key] = times
                self.limited += 1
                return False
            times.append(now)
            self._seen[key] = times
            while len(self._seen) > 65536:
                self._seen.popitem(last=False)
        return True


def exec_argv(command: list[str], pid: int | None) -> list[str]:
    """``{pid}`` in the command is replaced by the pid; else the pid is the last argument."""
    text = "" if pid is None else str(pid)
    if any("{pid}" in a for a in command):
        return [a.replace("{pid}", text) for a in command]
    return [*command, text] if text else list(command)


def cmd_trap(args: argparse.Namespace) -> int:
    import shlex

    from netwarden.act.hooks import environment

    proto = "tcp" if args.tcp or args.connections else "udp" if args.udp else None
    trap = Trap(
        proto=proto,
        ip=args.ip,
        port=args.port,
        connections=args.connections,
        per_minute=args.per_minute,
    )
    if args.count is not None and args.count < 1:
        raise UsageError("must be at least 1", option="--count", value=args.count)
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("must be more than 0", option="--timeout", value=args.timeout)
    command: list[str] = []
    if args.exec_cmd:
        try:
            command = shlex.split(args.exec_cmd)
        except ValueError as exc:
            raise UsageError(str(exc), option="-e", value=args.exec_cmd) from None
        if not command:
            raise UsageError("empty command", option="-e", value=args.exec_cmd)
    template = None if args.json else (args.format or LOG_FORMAT)
    if template is not None:
        check_template(template)
    printer = Printer(sys.stdout, json_lines=args.json, template=template, ts_format=args.format_ts)

    hold = None
    if args.backend in ("auto", "conntrack"):
        from netwarden.capture.nfqueue import Hold
        from netwarden.wire.netlink import FiveTuple

        net, port = trap.net, trap.port

        def wanted(t: FiveTuple) -> bool:
            if port is not None and t.dport != port:
                return False
            return net is None or ipaddress.ip_address(t.dst) in net

        hold = Hold(
            tcp=proto in (None, "tcp"),
            udp=proto in (None, "udp") and not args.connections,
            match=wanted,
        )
    protocols = {6} if proto == "tcp" else {17} if proto == "udp" else None
    src = _open(args.backend, hold=hold, protocols=protocols)
    _install(src.stop)
    if args.timeout is not None:
        timer = threading.Timer(args.timeout, src.stop)
        timer.daemon = True
        timer.start()
    sys.stderr.write("listening on all interfaces\n")
    sys.stderr.flush()
    matches = 0
    running: list[subprocess.Popen[bytes]] = []
    try:
        for e in src:
            if not trap.match(e, time.monotonic()):
                continue
            matches += 1
            printer(e)
            if command:
                running = [p for p in running if p.poll() is None]
                if len(running) >= 8:
                    log.warning("-e: 8 commands still running, this match is not run")
                else:
                    running.append(
                        _spawn(exec_argv(command, e.pid), environment(e), args.exec_timeout)
                    )
            if args.count is not None and matches >= args.count:
                src.stop()
                break
    finally:
        src.close()
    for p in running:
        try:
            p.wait(args.exec_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
    _finish(src)
    return 0


def _spawn(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.Popen[bytes]:
    """Start a -e command without waiting; a watchdog kills it after ``timeout``."""
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise UsageError(exc.strerror or str(exc), option="-e", value=argv[0]) from None

    def kill() -> None:
        if proc.poll() is None:
            proc.kill()

    killer = threading.Timer(timeout, kill)
    killer.daemon = True
    killer.start()
    return proc
