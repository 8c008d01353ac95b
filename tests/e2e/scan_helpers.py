"""Helpers for the scan tests: a three-namespace lab, a small service, the daemon, nmap.

Used by tests/e2e/test_scans.py, tests/integration/test_xdp.py and bench/scan_bench.py.

    with Lab() as lab:                       # srv <-> scan (veth), srv <-> other (veth)
        lab.serve()                          # TCP 22, 80, 443 (v4 and v6) and UDP 5353 in srv
        d = Daemon(lab.srv, tmp_path, 9771, "--block", "--scan-window", "5s")
        lab.scan.call(tcp_try, lab.srv4, 80)  # "ok" | "refused" | "timeout" | "error: ..."
        ports = nmap(lab.scan, "-sS", "-p", "1-1000", lab.srv4)   # {port: state}
        d.wait_event(lambda e: e["event"] == "block")
        d.stop()                             # SIGTERM; returns the exit status

Everything lives in throw-away namespaces (tests/integration/netns.py); processes started
here are killed by pid in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.netns import Netns, VethPair, netns, veth_pair

__all__ = [
    "SERVER",
    "TCP_PORTS",
    "UDP_PORT",
    "Daemon",
    "Lab",
    "NmapResult",
    "daemon",
    "nft_drops",
    "nft_elements",
    "nft_table_exists",
    "nmap",
    "ping_try",
    "tcp_try",
    "udp_try",
]

#: the service: TCP ports answered with a banner, a UDP echo port
TCP_PORTS = (22, 80, 443)
UDP_PORT = 5353
BANNER = b"netwarden-test\n"

SERVER = r"""
import socket, sys, threading
tcp_ports = [int(p) for p in sys.argv[1].split(",")]
udp_port = int(sys.argv[2])
banner = b"netwarden-test\n"

def tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(512)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(banner)
        except OSError:
            pass
        threading.Thread(target=hold, args=(c,), daemon=True).start()

def hold(c):
    # echo until the client closes (lets a test keep an established connection)
    try:
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()

def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", udp_port))
    while True:
        d, peer = s.recvfrom(4096)
        s.sendto(d, peer)

for p in tcp_ports:
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


# --------------------------------------------------------------------------- clients
def _fam(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_try(dst: str, port: int, src: str | None = None, timeout: float = 1.0) -> str:
    """Connect and read the banner: ``ok``, ``refused``, ``timeout`` or ``error: ...``."""
    s = socket.socket(_fam(dst), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if src is not None:
            s.bind((src, 0))
        s.connect((dst, port))
        data = s.recv(64)
        return "ok" if data == BANNER else f"error: banner {data!r}"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {exc}"
    finally:
        s.close()


def tcp_many(dst: str, port: int, count: int, src: str | None = None) -> list[str]:
    """``count`` connections in a row (a flurry to one port)."""
    return [tcp_try(dst, port, src) for _ in range(count)]


def udp_try(dst: str, port: int, src: str | None = None, timeout: float = 1.0) -> str:
    """One datagram on a fresh socket, the echo back: ``ok`` or ``timeout``."""
    s = socket.socket(_fam(dst), socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if src is not None:
            s.bind((src, 0))
        s.connect((dst, port))
        s.send(b"hello")
        return "ok" if s.recv(64) == b"hello" else "error: bad echo"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error: {exc}"
    finally:
        s.close()


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s: int = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping_try(dst: str, src: str | None = None, timeout: float = 1.0) -> str:
    """One ICMP/ICMPv6 echo over a raw socket: ``ok`` or ``timeout``."""
    v6 = ":" in dst
    s = socket.socket(
        _fam(dst), socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    )
    ident = os.getpid() & 0xFFFF
    req, rep = (128, 129) if v6 else (8, 0)
    msg = struct.pack("!BBHHH", req, 0, 0, ident, 1) + b"netwarden"
    if not v6:
        msg = msg[:2] + struct.pack("!H", _csum(msg)) + msg[4:]
    try:
        if src is not None:
            s.bind((src, 0))
        s.sendto(msg, (dst, 0))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            s.settimeout(left)
            try:
                d = s.recv(2048)
            except TimeoutError:
                return "timeout"
            icmp = d if v6 else d[(d[0] & 0x0F) * 4 :]
            if icmp[0] == rep and struct.unpack("!H", icmp[4:6])[0] == ident:
                return "ok"
    finally:
        s.close()


# --------------------------------------------------------------------------- the lab
class Lab:
    """Three namespaces: ``srv`` (the host under watch, ``srv4``/``srv6``) joined by a veth
    to ``scan`` (the scanner, ``scan4``/``scan6``) and by another veth to ``other`` (a
    bystander, ``other4``/``other6``, which reaches srv as ``srv_o4``/``srv_o6`` on its own
    link). The scanner namespace has a second address per family (``scan4b``/``scan6b``,
    used only when bound to) for tests that need two sources on one link."""

    OTHER_NET4 = ("172.30.0.1", "172.30.0.2")
    OTHER_NET6 = ("fd00:ee::1", "fd00:ee::2")

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Lab:
        try:
            pair: VethPair = self._stack.enter_context(veth_pair())
            self.pair = pair
            self.srv, self.scan = pair.a, pair.b
            self.srv_if, self.scan_if = pair.a_if, pair.b_if
            self.srv4, self.scan4 = pair.a4, pair.b4
            self.srv6, self.scan6 = pair.a6, pair.b6
            base4 = self.scan4.rsplit(".", 1)[0]
            self.scan4b = f"{base4}.3"
            self.scan6b = self.scan6.rsplit(":", 1)[0] + ":3"
            # secondary (IPv4) and deprecated (IPv6): never picked as a source unless bound
            self.scan.ip("addr", "add", f"{self.scan4b}/24", "dev", self.scan_if)
            self.scan.ip("addr", "add", f"{self.scan6b}/64", "dev", self.scan_if, "nodad",
                         "preferred_lft", "0")  # fmt: skip
            self.other: Netns = self._stack.enter_context(netns())
            self.other_if = "nwo0"
            self.srv_other_if = "nws1"
            self._link(self.srv, self.srv_other_if, self.other, self.other_if)
            (self.srv_o4, self.other4), (self.srv_o6, self.other6) = (
                self.OTHER_NET4,
                self.OTHER_NET6,
            )
            for ns, dev, a4, a6 in (
                (self.srv, self.srv_other_if, self.srv_o4, self.srv_o6),
                (self.other, self.other_if, self.other4, self.other6),
            ):
                ns.ip("addr", "add", f"{a4}/24", "dev", dev)
                ns.ip("addr", "add", f"{a6}/64", "dev", dev, "nodad")
                ns.ip("link", "set", dev, "up")
            # the bystander reaches srv's scanner-side addresses through srv
            self.other.ip("route", "add", "default", "via", self.srv_o4)
            self.other.ip("-6", "route", "add", "default", "via", self.srv_o6)
            self._wait_up(self.other, self.other_if)
        except BaseException:
            self._stack.close()
            raise
        return self

    @staticmethod
    def _link(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        subprocess.run(
            ["ip", "link", "add", a_if, "netns", a.name, "type", "veth",
             "peer", "name", b_if, "netns", b.name],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    @staticmethod
    def _wait_up(ns: Netns, dev: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while "LOWER_UP" not in ns.ip("link", "show", dev):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dev} in {ns.name} did not come up")
            time.sleep(0.01)

    def serve(self, tcp_ports: tuple[int, ...] = TCP_PORTS, udp_port: int = UDP_PORT) -> None:
        """Start the service in ``srv`` and wait until it answers."""
        p = self.srv.popen(
            sys.executable, "-c", SERVER, ",".join(map(str, tcp_ports)), str(udp_port),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self._procs.append(p)
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 20)
        assert ready and p.stdout.readline().strip() == b"ready", "the service did not start"

    def spawn(self, ns: Netns, *cmd: str, **kw: Any) -> subprocess.Popen[Any]:
        """A process in ``ns`` that is killed when the lab closes."""
        p = ns.popen(*cmd, **kw)
        self._procs.append(p)
        return p

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self._procs):
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        self._stack.close()


# --------------------------------------------------------------------------- the daemon
class Daemon:
    """``netwarden run --backend sniff --json`` in a namespace, its events collected."""

    def __init__(
        self, ns: Netns, state_dir: Path, port: int, *args: str, ready_timeout: float = 30.0
    ) -> None:
        self.ns = ns
        self.state_dir = state_dir
        self.argv = [
            sys.executable, "-m", "netwarden.cli", "run", "--backend", "sniff",
            "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{port}", "--json", *args,
        ]  # fmt: skip
        self.proc: subprocess.Popen[str] = ns.popen(  # type: ignore[assignment]
            *self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump_out, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for t in self._threads:
            t.start()
        try:
            self.wait_stderr("listening on", ready_timeout)
        except BaseException:
            self.kill()
            raise

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except ValueError:
                e = {"event": "?", "line": line}
            with self._cond:
                self.events.append(e)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.err.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_stderr(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.err:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._alive()):
                    raise AssertionError(
                        f"netwarden: no {text!r} on stderr within {timeout} s "
                        f"(exit {self.proc.poll()}): {self.err[-20:]}"
                    )
                self._cond.wait(min(left, 0.1))

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def select(self, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if pred(e)]

    def of(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        """The events of one kind whose fields have the given values."""
        return self.select(
            lambda e: e.get("event") == kind and all(e.get(k) == v for k, v in fields.items())
        )

    def wait_event(self, kind: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """The first event of ``kind`` with these field values, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if e.get("event") == kind and all(e.get(k) == v for k, v in fields.items()):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._alive()):
                    seen = [
                        {k: e.get(k) for k in ("event", "src", "scanner", "allowed")}
                        for e in self.events
                        if e.get("event") != "new"
                    ]
                    raise AssertionError(
                        f"no {kind} event with {fields} within {timeout} s; seen {seen[-10:]}; "
                        f"stderr {self.err[-10:]}"
                    )
                self._cond.wait(min(left, 0.1))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit status once the daemon and its output are done."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"netwarden did not exit within {timeout} s of SIGTERM") from None
        for t in self._threads:
            t.join(5)
        return rc

    def kill(self) -> None:
        """SIGKILL (a crash): nothing is cleaned up."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for t in self._threads:
            t.join(5)

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A ``netwarden`` command on the daemon's state dir, in its namespace."""
        return self.ns.run(
            sys.executable, "-m", "netwarden.cli", *args, "--state-dir", str(self.state_dir),
            check=False, timeout=timeout,
        )  # fmt: skip


@contextlib.contextmanager
def daemon(ns: Netns, state_dir: Path, port: int, *args: str) -> Iterator[Daemon]:
    """A :class:`Daemon` that is killed if the block fails before stopping it."""
    d = Daemon(ns, state_dir, port, *args)
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.kill()


# --------------------------------------------------------------------------- nft
def nft_table_exists(ns: Netns) -> bool:
    out = ns.run("nft", "-j", "list", "tables", check=False).stdout
    tables = [o["table"] for o in json.loads(out or '{"nftables": []}')["nftables"] if "table" in o]
    return any(t["family"] == "inet" and t["name"] == "netwarden" for t in tables)


def nft_elements(ns: Netns) -> dict[str, dict[str, float | None]]:
    """netwarden's set elements in ``ns``: {set: {addr: seconds left (None: no timeout)}}."""
    from netwarden.act.nft import element_text, parse_elements

    r = ns.run("nft", "-j", "list", "table", "inet", "netwarden", check=False)
    if r.returncode != 0:
        return {}
    parsed = parse_elements(json.loads(r.stdout))
    return {name: {element_text(e.net): e.expires for e in elems} for name, elems in parsed.items()}


def nft_drops(ns: Netns) -> int:
    """Packets dropped so far by netwarden's rules in ``ns``."""
    r = ns.run("nft", "-j", "list", "chain", "inet", "netwarden", "blocked_source", check=False)
    if r.returncode != 0:
        return 0
    total = 0
    for item in json.loads(r.stdout)["nftables"]:
        for expr in item.get("rule", {}).get("expr", ()):
            if "counter" in expr:
                total += int(expr["counter"]["packets"])
    return total


# --------------------------------------------------------------------------- nmap
@dataclass
class NmapResult:
    """nmap's view: the ports it listed one by one, and how many ports are in each state
    (the ports it summarized as "Not shown: N closed ports" included)."""

    ports: dict[int, str]
    counts: Counter[str]
    elapsed: float

    def answered(self) -> int:
        """Ports whose probe got an answer (open or closed): probes the firewall let in."""
        return self.counts["open"] + self.counts["closed"] + self.counts["unfiltered"]


def nmap(ns: Netns, *args: str, timeout: float = 120.0) -> NmapResult:
    """Run nmap in ``ns`` (no DNS, no host discovery) and parse its XML output."""
    t0 = time.monotonic()
    r = ns.run("nmap", "-n", "-Pn", "-oX", "-", *args, check=False, timeout=timeout)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise AssertionError(f"nmap {' '.join(args)}: exit {r.returncode}: {r.stderr}")
    root = ET.fromstring(r.stdout)
    ports: dict[int, str] = {}
    counts: Counter[str] = Counter()
    for port in root.iter("port"):
        state = port.find("state")
        if state is not None:
            st = state.get("state", "?")
            ports[int(port.get("portid", "0"))] = st
            counts[st] += 1
    for extra in root.iter("extraports"):
        counts[extra.get("state", "?")] += int(extra.get("count", "0"))
    return NmapResult(ports, counts, elapsed)
