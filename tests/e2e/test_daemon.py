"""The daemon end to end: `netwarden run` in one namespace, real TCP servers on several
addresses in two /24s in another; report bytes against nftables counters, query filters,
SIGUSR1, kill -9 and the store's integrity, signals and exit statuses."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netns import Netns, VethPair, veth_pair

pytestmark = pytest.mark.root

REMOTES = {"10.250.1.2": (2, 50000), "10.250.1.3": (3, 20000), "10.250.2.2": (1, 100000)}
PORT = 7070

SERVER = r"""
import socket, sys, threading
PORT = int(sys.argv[1])
def serve(addr):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, PORT)); s.listen(16)
    while True:
        c, _ = s.accept()
        n = int(c.makefile().readline())
        c.sendall(b"x" * n); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
for a in sys.argv[2:]:
    threading.Thread(target=serve, args=(a,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def fetch(addr: str, n: int) -> int:
    got = 0
    with socket.create_connection((addr, PORT), timeout=10) as s:
        s.sendall(f"{n}\n".encode())
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += len(b)
    return got


def traffic() -> list[int]:
    return [fetch(a, size) for a, (count, size) in REMOTES.items() for _ in range(count)]


def nft_counters(ns: Netns) -> dict[str, int]:
    out = json.loads(ns.run("nft", "-j", "list", "table", "inet", "nwtest").stdout)
    totals: dict[str, int] = {}
    for item in out["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        addr = counter = None
        for expr in rule["expr"]:
            if "match" in expr:
                addr = expr["match"]["right"]
            if "counter" in expr:
                counter = expr["counter"]["bytes"]
        if addr is not None and counter is not None:
            totals[addr] = totals.get(addr, 0) + counter
    return totals


def offloads_off(pair: VethPair) -> None:
    for ns, ifname in ((pair.a, pair.a_if), (pair.b, pair.b_if)):
        ns.run("ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off", check=False)


def nw(ns: Netns, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return ns.run(
        sys.executable,
        "-m",
        "netwarden.cli",
        *args,
        "--state-dir",
        str(state),
        check=False,
        timeout=60,
    )


class Daemon:
    def __init__(self, ns: Netns, state: Path, *extra: str) -> None:
        self.ns = ns
        self.state = state
        self.proc = ns.popen(
            sys.executable,
            "-m",
            "netwarden.cli",
            "run",
            "--backend",
            "sniff",
            "--state-dir",
            str(state),
            "--listen",
            "127.0.0.1:9751",
            *extra,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        assert self.proc.stderr is not None
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if "listening on" in line or not line:
                break
        assert "listening on all interfaces" in line, line

    def stop(self) -> tuple[str, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return out, err


@pytest.fixture
def hosts() -> Iterator[VethPair]:
    with veth_pair() as pair:
        for addr in REMOTES:
            pair.b.ip("addr", "add", f"{addr}/24", "dev", pair.b_if)
        pair.a.ip("route", "add", "10.250.0.0/16", "dev", pair.a_if)
        offloads_off(pair)
        rules = ["table inet nwtest {", " chain in { type filter hook input priority 0;"]
        rules += [f"  ip saddr {a} counter" for a in REMOTES]
        rules += [" }", " chain out { type filter hook output priority 0;"]
        rules += [f"  ip daddr {a} counter" for a in REMOTES]
        rules += [" }", "}"]
        pair.a.run("nft", "-f", "-", input="\n".join(rules) + "\n")
        server = pair.b.popen(
            sys.executable, "-c", SERVER, str(PORT), *REMOTES, stdout=subprocess.PIPE
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
            yield pair
        finally:
            server.kill()
            server.wait()


def wait_for(pred: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize(
    "extra", [(), ("--block",)], ids=["ring-blocks", "immediate-frames-with-block"]
)
def test_report_query_stats_against_nft_counters(
    hosts: VethPair, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """The counts against the kernel's: with TPACKET_V3 blocks, and with ``--block``, which
    reads the ring's TPACKET_V2 frames one packet at a time."""
    a = hosts.a
    d = Daemon(a, tmp_path, *extra)
    try:
        sizes = a.call(traffic)
        assert sizes == [n for _, (c, n) in REMOTES.items() for _ in range(c)]

        def ended() -> bool:
            r = nw(a, tmp_path, "query", "--json", "--dst", "10.250.0.0/16", "--port", str(PORT))
            rows = [json.loads(x) for x in r.stdout.splitlines()]
            return len(rows) == 6 and all(x["event"] == "end" for x in rows)

        wait_for(ended)
        counters = nft_counters(a)
        r = nw(a, tmp_path, "report", "--json", "--no-names")
        assert r.returncode == 0, r.stderr
        rows = {x["key"]: x for x in map(json.loads, r.stdout.splitlines())}
        for addr, (count, size) in REMOTES.items():
            row = rows[addr]
            assert row["conns"] == count
            assert row["bytes"] == pytest.approx(counters[addr], rel=0.02)
            assert row["bytes_in"] > count * size  # payload plus headers
        by_net = {
            x["key"]: x
            for x in map(
                json.loads, nw(a, tmp_path, "report", "--by", "net", "--json").stdout.splitlines()
            )
        }
        assert by_net["10.250.1.0/24"]["conns"] == 5 and by_net["10.250.2.0/24"]["conns"] == 1
        # query by address, by port, as text
        q = nw(a, tmp_path, "query", "--dst", "10.250.1.3", "--format", "{dst} {dport} {event}")
        assert q.stdout.splitlines() == [f"10.250.1.3 {PORT} end"] * 3
        q = nw(a, tmp_path, "query", "--dst", "10.250.2.0/24", "--json")
        assert [json.loads(x)["direction"] for x in q.stdout.splitlines()] == ["out"]
        # SIGUSR1 rewrites stats.json with the rows and Sniffer's header
        stats = tmp_path / "stats.json"
        before = stats.stat().st_mtime_ns if stats.exists() else 0
        d.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: stats.exists() and stats.stat().st_mtime_ns != before)
        dump = json.loads(stats.read_text())
        assert {
            "start",
            "current",
            "hits_per_minute",
            "bytes_per_second",
            "users",
            "device",
            "filter",
            "rows",
        } <= set(dump)
        assert {r["key"] for r in dump["rows"]} >= set(REMOTES)
        # the CLI side of the same: status, dump
        assert nw(a, tmp_path, "status").stdout.startswith("running (pid")
        assert json.loads(nw(a, tmp_path, "dump").stdout)["users"] >= 3
    finally:
        _out, err = d.stop()
    assert "packets captured" in err and "dropped by kernel" in err
    assert not (tmp_path / "netwarden.pid").exists()
    assert nw(a, tmp_path, "status").returncode == 1


def test_kill_9_loses_at_most_one_flush_and_db_is_sound(hosts: VethPair, tmp_path: Path) -> None:
    a = hosts.a
    d = Daemon(a, tmp_path)
    try:
        a.call(traffic)
        time.sleep(3.5)  # linger (2 s) + one flush interval (1 s)
    finally:
        d.proc.kill()
        d.proc.wait()
    conn = sqlite3.connect(tmp_path / "netwarden.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n = conn.execute(
        "SELECT count(*) FROM flows WHERE dport = ? AND event = 'end'", (PORT,)
    ).fetchone()[0]
    assert n == 6
    conn.close()
    # a stale pidfile does not stop the next start
    d2 = Daemon(a, tmp_path)
    d2.stop()


def test_bad_input_exits_2(hosts: VethPair, tmp_path: Path) -> None:
    a = hosts.a
    cfg = tmp_path / "bad.toml"
    cfg.write_text("scan_ports = 3\nblock = = yes\n")
    r = nw(a, tmp_path, "run", "--config", str(cfg))
    assert r.returncode == 2 and "bad.toml" in r.stderr and "line 2" in r.stderr
    assert "Traceback" not in r.stderr
    r = nw(a, tmp_path, "run", "--scan-ports", "0")
    assert r.returncode == 2 and "--scan-ports" in r.stderr
    r = nw(a, tmp_path, "run", "--listen", "10.0.0.1:80")
    assert r.returncode == 2 and "token" in r.stderr
    # a port already in use
    blocker = a.popen(
        sys.executable,
        "-c",
        "import socket,time; s=socket.socket(); s.bind(('127.0.0.1', 9752)); "
        "s.listen(); print('ok', flush=True); time.sleep(60)",
        stdout=subprocess.PIPE,
    )
    try:
        assert blocker.stdout is not None and blocker.stdout.readline().strip() == b"ok"
        r = nw(a, tmp_path, "run", "--listen", "127.0.0.1:9752")
        assert r.returncode == 2 and "127.0.0.1:9752" in r.stderr and "--listen" in r.stderr
    finally:
        blocker.kill()
        blocker.wait()
    # an unwritable state dir (root ignores mode bits: a path under /proc)
    r = a.run(
        sys.executable, "-m", "netwarden.cli", "run", "--state-dir", "/proc/nope", check=False
    )
    assert r.returncode == 2 and "--state-dir" in r.stderr and "Traceback" not in r.stderr


def test_query_and_report_by_process_with_ebpf(hosts: VethPair, tmp_path: Path) -> None:
    from netwarden.doctor import check_ebpf

    if not check_ebpf().ok:
        pytest.skip("the eBPF backend is not available here")
    a = hosts.a
    proc = a.popen(
        sys.executable,
        "-m",
        "netwarden.cli",
        "run",
        "--backend",
        "ebpf",
        "--state-dir",
        str(tmp_path),
        "--listen",
        "127.0.0.1:9754",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "listening on" in line, line + proc.stderr.read()
        pids = []
        for addr in ("10.250.1.2", "10.250.2.2"):
            c = a.popen(
                "socat", "-", f"TCP:{addr}:{PORT}", stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            out, _ = c.communicate(b"5000\n", timeout=20)
            assert len(out) == 5000
            pids.append(c.pid)

        def stored() -> bool:
            r = nw(a, tmp_path, "query", "--comm", "socat", "--json")
            return len(r.stdout.splitlines()) == 2

        wait_for(stored)
        rows = [
            json.loads(x)
            for x in nw(a, tmp_path, "query", "--comm", "socat", "--json").stdout.splitlines()
        ]
        assert sorted(r["pid"] for r in rows) == sorted(pids)
        assert all(r["attribution"] == "kernel" and r["source"] == "ebpf" for r in rows)
        assert {r["dst"] for r in rows} == {"10.250.1.2", "10.250.2.2"}
        one = nw(a, tmp_path, "query", "--pid", str(pids[0]), "--format", "{comm} {dst}")
        assert one.stdout.splitlines() == ["socat 10.250.1.2"]
        by_proc = {
            x["key"]: x
            for x in map(
                json.loads,
                nw(a, tmp_path, "report", "--by", "process", "--json").stdout.splitlines(),
            )
        }
        assert by_proc["socat"]["conns"] == 2 and by_proc["socat"]["bytes_in"] > 10000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
