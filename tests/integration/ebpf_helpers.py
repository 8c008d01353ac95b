"""Shared pieces of the eBPF backend's integration tests (test_ebpf_*.py).

- :func:`build_object`: the built ``netwarden.bpf.o`` (built when missing or stale);
- :class:`Collector`: an :class:`~netwarden.capture.ebpf.EbpfSource` read in a thread,
  its events kept for the test to search (:func:`collecting` makes and stops them);
- :class:`Started`: a process started in a namespace, its output lines collected
  (:func:`starting` kills what is left);
- :class:`Nft`: an nftables table of named counters inside a test namespace, to compare a
  flow's bytes with what the kernel's firewall counted;
- :func:`compile_c`: a small C program compiled for a test (skips without a compiler).

Every namespace involved is a test's own (``nwt-...``); nothing here touches the root
namespace's firewall.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netwarden.events import Event
from tests.integration.netns import Netns

REPO = Path(__file__).resolve().parents[2]
OBJ = REPO / "build" / "bpf" / "netwarden.bpf.o"
BUILD = REPO / "scripts" / "build-bpf.sh"
IS_ROOT = os.geteuid() == 0
#: no proxy may reroute the tests' clients
ENV = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def build_object() -> Path:
    """The built object; built here when missing or older than its sources."""
    if not IS_ROOT:
        pytest.skip("needs root (eBPF)")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("kernel without BTF")
    bpf = REPO / "src" / "netwarden" / "bpf"
    newest = max(p.stat().st_mtime for p in (bpf / "netwarden.bpf.c", bpf / "netwarden.h"))
    if not OBJ.exists() or OBJ.stat().st_mtime < newest:
        cp = subprocess.run(["bash", str(BUILD), "netwarden"], capture_output=True, text=True)
        if cp.returncode == 3:
            pytest.skip(f"cannot build the eBPF object: {cp.stderr.strip()}")
        assert cp.returncode == 0, cp.stderr
    return OBJ


def netns_inode(ns: Netns) -> int:
    return os.stat(f"/run/netns/{ns.name}").st_ino


class Collector:
    """An EbpfSource iterated in a thread; events are kept for the test to search."""

    def __init__(self, **kwargs: Any) -> None:
        from netwarden.capture.ebpf import EbpfSource

        kwargs.setdefault("poll_interval", 0.05)
        self.src = EbpfSource(**kwargs)
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self.summary: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for ev in self.src:
                with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()
        except BaseException as exc:  # reported by wait_for / stop
            self.error = exc
            with self._cond:
                self._cond.notify_all()

    def matching(self, pred: Callable[[Event], bool]) -> list[Event]:
        with self._cond:
            return [e for e in self.events if pred(e)]

    def wait_for(
        self, pred: Callable[[Event], bool], count: int = 1, timeout: float = 10.0
    ) -> list[Event]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if pred(e)]
                if len(found) >= count:
                    return found
                if self.error is not None:
                    raise AssertionError(f"source failed: {self.error!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(found)} of {count} expected events within {timeout}s; "
                        f"last events: {[e.to_dict() for e in self.events[-5:]]}"
                    )
                self._cond.wait(min(left, 0.1))

    def stop(self) -> dict[str, Any]:
        """Stop (open flows end), wait for the thread, close; the source's summary."""
        if self._thread.is_alive():
            self.src.stop()
            self._thread.join(15)
        self.summary = self.src.summary()
        self.src.close()
        if self.error is not None:
            raise AssertionError(f"source failed: {self.error!r}")
        return self.summary


@contextlib.contextmanager
def collecting(bpf_object: Path) -> Iterator[Callable[..., Collector]]:
    """A factory of collectors (EbpfSource keyword arguments); all are stopped at exit."""
    made: list[Collector] = []

    def make(**kwargs: Any) -> Collector:
        c = Collector(obj_path=bpf_object, **kwargs)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            try:
                c.stop()
            except AssertionError:
                pass


class Started:
    """A process started in a namespace; its stdout lines are collected."""

    def __init__(self, ns: Netns, cmd: tuple[str, ...]) -> None:
        self.argv = cmd
        self.popen = ns.popen(
            *cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        for stream, sink in ((self.popen.stdout, self.out), (self.popen.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_line(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while text not in self.out:
                left = deadline - time.monotonic()
                if left <= 0 or self.popen.poll() is not None:
                    raise AssertionError(f"{self.argv}: no {text!r}; stderr {self.err[-5:]}")
                self._cond.wait(min(left, 0.1))

    def wait(self, timeout: float = 20.0) -> None:
        rc = self.popen.wait(timeout)
        time.sleep(0.05)  # let the pumps read the last lines
        assert rc == 0, f"{self.argv} exited {rc}: {self.err[-5:]}"

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(5)


@contextlib.contextmanager
def starting() -> Iterator[Callable[..., Started]]:
    """A starter of processes in namespaces; those still running are killed at exit."""
    started: list[Started] = []

    def start(ns: Netns, *cmd: str) -> Started:
        p = Started(ns, cmd)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in reversed(started):
            p.kill()


def wait_listening(ns: Netns, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ns.run("ss", "-Hltn", f"sport = :{port}").stdout.strip():
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on tcp/{port} in {ns.name}")
        time.sleep(0.05)


def py(ns: Netns, code: str, *args: str, timeout: float = 30) -> str:
    return ns.run(sys.executable, "-c", code, *args, timeout=timeout).stdout


def comm_of(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def flow_events(c: Collector, flow: str | None) -> list[Event]:
    return c.matching(lambda e: e.flow == flow)


# --------------------------------------------------------------------------- nftables
class Nft:
    """Named counters in a table of a test namespace's own nftables.

    ``Nft(ns, "inet", {"orig": ("output", "tcp dport 80"), "resp": ("input", "tcp sport
    80")})`` makes table ``inet nwt`` with a base chain per hook and, for each counter, a
    rule ``MATCH counter name NAME``. For the ``netdev`` family the hooks are ``egress`` and
    ``ingress`` and ``device`` names the interface. ``read()`` gives name → (packets, bytes).
    """

    def __init__(
        self,
        ns: Netns,
        family: str,
        counters: dict[str, tuple[str, str]],
        device: str | None = None,
    ) -> None:
        if shutil.which("nft") is None:
            pytest.skip("needs nft (nftables)")
        self.ns = ns
        self.family = family
        hooks = sorted({hook for hook, _ in counters.values()})
        lines = [f"table {family} nwt {{"]
        lines += [f"  counter {name} {{ }}" for name in counters]
        for hook in hooks:
            dev = f" device {device}" if device else ""
            lines.append(f"  chain {hook} {{ type filter hook {hook}{dev} priority 0; }}")
        lines.append("}")
        for name, (hook, match) in counters.items():
            lines.append(f"add rule {family} nwt {hook} {match} counter name {name}")
        ns.run("nft", "-f", "-", input="\n".join(lines) + "\n")

    def read(self) -> dict[str, tuple[int, int]]:
        out = self.ns.run("nft", "-j", "list", "counters", "table", self.family, "nwt").stdout
        got: dict[str, tuple[int, int]] = {}
        for item in json.loads(out)["nftables"]:
            c = item.get("counter")
            if c is not None:
                got[c["name"]] = (int(c["packets"]), int(c["bytes"]))
        return got


def within(ours: int, theirs: int, rel: float = 0.10) -> bool:
    """``ours`` within ``rel`` of ``theirs`` (both zero counts as equal)."""
    return abs(ours - theirs) <= rel * max(theirs, 1)


# --------------------------------------------------------------------------- C helpers
def compile_c(tmp: Path, name: str, source: str, *libs: str) -> Path:
    """``source`` compiled to ``tmp/name``; skips the test without a C compiler (or a
    library's headers)."""
    src = tmp / f"{name}.c"
    src.write_text(source)
    exe = tmp / name
    errors = []
    for cc in ("cc", "gcc", "clang"):
        if shutil.which(cc) is None:
            continue
        cp = subprocess.run(
            [cc, "-O2", "-Wall", "-o", str(exe), str(src), *libs], capture_output=True, text=True
        )
        if cp.returncode == 0:
            return exe
        errors.append(cp.stderr.strip()[-300:])
    pytest.skip(f"cannot compile {name}.c: {errors[-1] if errors else 'no C compiler'}")
