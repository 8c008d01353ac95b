"""Throw-away network namespaces for integration tests.

Every namespace gets a unique name (``nwt-`` + random hex) and is deleted in a ``finally``,
also when the test fails; veth pairs and processes inside go with it. Test addresses
(10.x.y.0/24 and fd00::/8 ULA) exist only inside the namespaces.

    from tests.integration.netns import netns, veth_pair

    with veth_pair() as pair:                      # namespaces a and b joined by a veth
        pair.b.run("ping", "-c1", pair.a4)         # a command, via ``ip netns exec``
        n = pair.b.call(send_udp, pair.a4, 9999)   # a Python callable, in a forked child
        with pair.a.entered():                     # this thread inside namespace a
            sock = socket.socket(...)              # sockets stay in a after leaving

Without root or ``ip netns``, the helpers call ``pytest.skip``. Tests using them should carry
the ``root`` marker (``pytestmark = pytest.mark.root``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import secrets
import select
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pytest

__all__ = ["Child", "Netns", "VethPair", "netns", "require_netns", "setns", "veth_pair"]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
PREFIX = "nwt-"
NETNS_DIR = "/run/netns"


def require_netns() -> None:
    """Skip the calling test unless we are root and ``ip netns`` is there."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("needs the ip command (iproute2)")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) for the calling thread (os.setns exists from Python 3.12 on)."""
    native = getattr(os, "setns", None)
    if native is not None:
        native(fd, nstype)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        cmd = " ".join(str(a) for a in proc.args)
        raise RuntimeError(f"{cmd}: exit {proc.returncode}: {proc.stderr.strip()}")


class Child(Generic[T]):
    """A forked child running a Python callable inside a namespace; ``wait()`` gives its
    return value or re-raises its exception (with the child's traceback in the message)."""

    def __init__(self, pid: int, fd: int, what: str) -> None:
        self.pid = pid
        self._fd = fd
        self._what = what
        self._done = False
        self._result: tuple[bool, Any] | None = None

    def wait(self, timeout: float = 30.0) -> T:
        if not self._done:
            data = bytearray()
            deadline = time.monotonic() + timeout
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.kill()
                        raise TimeoutError(f"{self._what} still running after {timeout} s")
                    ready, _, _ = select.select([self._fd], [], [], left)
                    if not ready:
                        continue
                    chunk = os.read(self._fd, 1 << 16)
                    if not chunk:
                        break
                    data += chunk
            finally:
                os.close(self._fd)
                self._done = True
                _, status = os.waitpid(self.pid, 0)
            if not data:
                raise RuntimeError(f"{self._what} died without a result (wait status {status})")
            self._result = pickle.loads(bytes(data))
        assert self._result is not None
        ok, value = self._result
        if not ok:
            raise RuntimeError(f"{self._what} failed in the namespace:\n{value}")
        result: T = value
        return result

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


@dataclass
class Netns:
    """One network namespace, by name (``/run/netns/NAME``)."""

    name: str

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (``ip netns exec``); output captured as text."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check:
            _check(proc)
        return proc

    def popen(self, *cmd: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a command inside the namespace; the caller waits for or kills it."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)

    def ip(self, *args: str) -> str:
        """``ip -n NAME ARGS``; returns stdout, raises on failure."""
        proc = _ip("-n", self.name, *args)
        _check(proc)
        return proc.stdout

    def spawn(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> Child[T]:
        """Run ``func(*args, **kwargs)`` in a forked child moved into this namespace.

        The return value (and an exception's traceback) comes back pickled via ``wait()``.
        """
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into the test runner
            code = 0
            try:
                os.close(rfd)
                try:
                    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                    setns(fd)
                    os.close(fd)
                    payload = pickle.dumps((True, func(*args, **kwargs)))
                except BaseException:
                    payload = pickle.dumps((False, traceback.format_exc()))
                view = memoryview(payload)
                while view:
                    view = view[os.write(wfd, view) :]
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        return Child(pid, rfd, f"{getattr(func, '__name__', func)!s} in {self.name}")

    def call(self, func: Callable[..., T], *args: Any, timeout: float = 30.0, **kwargs: Any) -> T:
        """Run ``func(*args, **kwargs)`` in a child inside this namespace and return its
        result (see :meth:`spawn`)."""
        return self.spawn(func, *args, **kwargs).wait(timeout)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into this namespace for the ``with`` block.

        Sockets opened inside stay in this namespace after the block.
        """
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                setns(home)
        finally:
            os.close(home)


def _unique_name(prefix: str) -> str:
    for _ in range(100):
        name = prefix + secrets.token_hex(4)
        if not os.path.exists(f"{NETNS_DIR}/{name}"):
            return name
    raise RuntimeError("no free namespace name")


@contextlib.contextmanager
def netns(prefix: str = PREFIX) -> Iterator[Netns]:
    """A fresh namespace with ``lo`` up, deleted on exit whatever happens."""
    require_netns()
    name = _unique_name(prefix)
    proc = _ip("netns", "add", name)
    if proc.returncode != 0:
        pytest.skip(f"ip netns add failed: {proc.stderr.strip()}")
    try:
        ns = Netns(name)
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        _ip("netns", "delete", name)


@dataclass
class VethPair:
    """Namespaces ``a`` and ``b`` joined by a veth pair (``a_if`` in a, ``b_if`` in b)."""

    a: Netns
    b: Netns
    a_if: str
    b_if: str
    a4: str
    b4: str
    a6: str
    b6: str
    prefix4: int = 24
    prefix6: int = 64


@contextlib.contextmanager
def veth_pair(prefix: str = PREFIX) -> Iterator[VethPair]:
    """Two namespaces joined by a veth pair with IPv4 and IPv6 addresses, links up.

    Addresses: 10.X.Y.1 (a) and 10.X.Y.2 (b) /24; fd00:X:Y::1 and ::2 /64 (no DAD wait).
    """
    x, y = secrets.randbelow(250) + 1, secrets.randbelow(250) + 1
    with netns(prefix) as a, netns(prefix) as b:
        pair = VethPair(
            a=a,
            b=b,
            a_if="nwa0",
            b_if="nwb0",
            a4=f"10.{x}.{y}.1",
            b4=f"10.{x}.{y}.2",
            a6=f"fd00:{x:x}:{y:x}::1",
            b6=f"fd00:{x:x}:{y:x}::2",
        )
        link = ["link", "add", pair.a_if, "netns", a.name, "type", "veth"]
        _check(_ip(*link, "peer", "name", pair.b_if, "netns", b.name))
        ends = ((a, pair.a_if, pair.a4, pair.a6), (b, pair.b_if, pair.b4, pair.b6))
        for ns, ifname, v4, v6 in ends:
            ns.ip("addr", "add", f"{v4}/{pair.prefix4}", "dev", ifname)
            ns.ip("addr", "add", f"{v6}/{pair.prefix6}", "dev", ifname, "nodad")
            ns.ip("link", "set", ifname, "up")
        _wait_up(pair)
        yield pair


def _wait_up(pair: VethPair, timeout: float = 10.0) -> None:
    """Until both ends have carrier (veth: as soon as both are up)."""
    deadline = time.monotonic() + timeout
    for ns, ifname in ((pair.a, pair.a_if), (pair.b, pair.b_if)):
        while "LOWER_UP" not in ns.ip("link", "show", ifname):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ifname} in {ns.name} did not come up")
            time.sleep(0.01)
