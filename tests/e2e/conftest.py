"""Helpers for the end-to-end tests: network namespaces joined by a veth pair.

Everything a test creates lives in its own namespaces (named ``nwt-...``, unique per run)
and is removed in ``finally``, also when the test fails (processes first, by pid). Nothing here
touches the root namespace's interfaces, routes or firewall.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

import pytest

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

#: The environment for the tools run inside the namespaces: no proxy may reroute curl.
_PROXY_VARS = re.compile(r"^(all|http|https|ftp|no)_proxy$", re.IGNORECASE)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not _PROXY_VARS.match(k)}


def need_root() -> None:
    if not IS_ROOT:
        pytest.skip("needs root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("needs the ip command (iproute2)")


# --------------------------------------------------------------------------- processes
class Proc:
    """A process started in a namespace, with its stdout/stderr collected line by line."""

    def __init__(self, argv: Sequence[str], popen: subprocess.Popen[str]) -> None:
        self.argv = list(argv)
        self.popen = popen
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._threads = []
        for stream, sink in ((popen.stdout, self.out), (popen.stderr, self.err)):
            if stream is not None:
                t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, stream: IO[str], sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for_line(self, pattern: str, *, stream: str = "err", timeout: float = 10.0) -> str:
        """Wait until a line of ``stream`` matches ``pattern`` (a regex); return it."""
        rx = re.compile(pattern)
        sink = self.err if stream == "err" else self.out
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in sink:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._alive_pumps()):
                    raise AssertionError(
                        f"{self.argv[0]}: no line matching {pattern!r} on std{stream} "
                        f"within {timeout}s (exit status {self.popen.poll()}); "
                        f"stdout={self.out[-20:]!r} stderr={self.err[-20:]!r}"
                    )
                self._cond.wait(min(left, 0.1))

    def _alive_pumps(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def interrupt(self, timeout: float = 15.0) -> int | None:
        """SIGINT, then wait for the exit and for the output to be read; the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        for t in self._threads:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(3)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(3)
        for t in self._threads:
            t.join(2)

    def json_lines(self) -> list[dict[str, Any]]:
        rows = []
        for line in self.out:
            if line.strip():
                rows.append(json.loads(line))
        return rows


# --------------------------------------------------------------------------- namespaces
class Netns:
    """A network namespace of our own; ``run``/``start`` execute commands inside it."""

    def __init__(self, role: str) -> None:
        self.name = f"nwt-{role}-{os.getpid()}-{secrets.token_hex(3)}"
        self.procs: list[Proc] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.run("ip", "link", "set", "lo", "up")

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self, *cmd: str, timeout: float = 30.0, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(
            self.argv(*cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            input=input,
        )
        if check and cp.returncode != 0:
            raise AssertionError(
                f"in {self.name}: {' '.join(cmd)} exited {cp.returncode}\n"
                f"stdout: {cp.stdout}\nstderr: {cp.stderr}"
            )
        return cp

    def start(self, *cmd: str, stdout: bool = True) -> Proc:
        # `ip netns exec` execs the command: the pid we get is the command's own.
        popen = subprocess.Popen(
            self.argv(*cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        p = Proc(cmd, popen)
        self.procs.append(p)
        return p

    def python(self, code: str, *args: str, timeout: float = 30.0) -> str:
        return self.run(sys.executable, "-c", code, *args, timeout=timeout).stdout

    def wait_listening(self, proto: str, port: int, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` sockets listen on ``port`` (by the socket table: no traffic)."""
        flag = "-Hltn" if proto == "tcp" else "-Hlun"
        deadline = time.monotonic() + timeout
        while True:
            out = self.run("ss", flag, f"sport = :{port}").stdout
            if len([ln for ln in out.splitlines() if ln.strip()]) >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"in {self.name}: nothing listens on {proto}/{port}: {out!r}")
            time.sleep(0.05)

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                p.kill()
            except Exception:  # keep cleaning up
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


# --------------------------------------------------------------------------- offloads
# The legacy ethtool ioctls (struct ethtool_value {u32 cmd; u32 data;}), enough to switch
# segmentation and receive offloads off without the ethtool program.
_ETHTOOL_CODE = r"""
import ctypes, fcntl, socket, struct, sys
SIOCETHTOOL = 0x8946
CMDS = {"tso": (0x1E, 0x1F), "gso": (0x23, 0x24), "gro": (0x2B, 0x2C)}
dev = sys.argv[1].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def call(cmd, data=0):
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, data), 8)
    ifr = struct.pack("16sP", dev, ctypes.addressof(buf))
    fcntl.ioctl(s, SIOCETHTOOL, ifr)
    return struct.unpack("II", buf.raw)[1]
out = {}
for name, (get, set_) in CMDS.items():
    call(set_, 0)
    out[name] = call(get)
print(" ".join(f"{k}={v}" for k, v in out.items()))
"""


def offloads_off(ns: Netns, dev: str) -> str:
    """Switch TSO, GSO and GRO off on ``dev``; returns what the kernel reports after."""
    return ns.python(_ETHTOOL_CODE, dev).strip()


# --------------------------------------------------------------------------- the pair
class VethPair:
    """Namespaces ``srv`` and ``cli`` joined by a veth pair with IPv4 and IPv6 addresses.

    IPv6 is kept silent so that the link carries only the test's traffic: no link-local
    address (no router solicitations, no MLD from it), no DAD, and static neighbour entries
    both ways (no ARP, no neighbour discovery).
    """

    SRV4, CLI4 = "192.0.2.1", "192.0.2.2"
    SRV6, CLI6 = "2001:db8:ff::1", "2001:db8:ff::2"
    SRV_DEV, CLI_DEV = "nwt-s", "nwt-c"

    def __init__(self, *, offloads: bool = False) -> None:
        self.srv = Netns("srv")
        try:
            self.cli = Netns("cli")
        except BaseException:
            self.srv.close()
            raise
        try:
            self._setup(offloads)
        except BaseException:
            self.close()
            raise

    def _setup(self, offloads: bool) -> None:
        srv, cli = self.srv, self.cli
        srv.run(
            "ip", "link", "add", self.SRV_DEV, "type", "veth",
            "peer", "name", self.CLI_DEV, "netns", cli.name,
        )  # fmt: skip
        self.offload_state: dict[str, str] = {}
        for ns, dev, mine, mine6 in (
            (srv, self.SRV_DEV, self.SRV4, self.SRV6),
            (cli, self.CLI_DEV, self.CLI4, self.CLI6),
        ):
            ns.run("sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_ra=0")
            ns.run("sysctl", "-qw", f"net.ipv6.conf.{dev}.router_solicitations=0")
            ns.run("ip", "link", "set", dev, "addrgenmode", "none")
            if not offloads:
                self.offload_state[dev] = offloads_off(ns, dev)
            ns.run("ip", "addr", "add", f"{mine}/24", "dev", dev)
            ns.run("ip", "-6", "addr", "add", f"{mine6}/64", "dev", dev, "nodad")
        mac = {
            dev: json.loads(ns.run("ip", "-j", "link", "show", dev).stdout)[0]["address"]
            for ns, dev in ((srv, self.SRV_DEV), (cli, self.CLI_DEV))
        }
        for ns, dev, other, peer4, peer6 in (
            (srv, self.SRV_DEV, self.CLI_DEV, self.CLI4, self.CLI6),
            (cli, self.CLI_DEV, self.SRV_DEV, self.SRV4, self.SRV6),
        ):
            for addr in (peer4, peer6):
                ns.run(
                    "ip", "neigh", "replace", addr, "lladdr", mac[other],
                    "dev", dev, "nud", "permanent",
                )  # fmt: skip
            ns.run("ip", "link", "set", dev, "up")
        self.up_at = time.monotonic()

    #: How long after the link comes up the kernel may still send its MLD reports (it
    #: repeats them after a random delay of up to 1 s).
    SETTLE = 2.5

    def settle(self) -> None:
        """Wait until the kernel's own start-up packets are over: the link is silent."""
        left = self.up_at + self.SETTLE - time.monotonic()
        if left > 0:
            time.sleep(left)

    def close(self) -> None:
        self.cli.close()
        self.srv.close()
