"""The conntrack backend against the real kernel, in throw-away namespaces.

Namespace ``a`` runs a web server; namespace ``b`` runs the backend (in a forked child moved
into ``b``) and the clients. Nothing here touches the root namespace's firewall.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netns import Child, Netns, VethPair

pytestmark = pytest.mark.root

FILE_SIZE = 200_000


# --------------------------------------------------------------------------- helpers
def run_backend(ready: str, max_seconds: float, options: dict[str, Any]) -> dict[str, Any]:
    """In the child (inside namespace b): run ConntrackSource until SIGTERM."""
    from netwarden.capture.conntrack import ConntrackSource
    from netwarden.capture.nfqueue import Hold

    hold_opts = options.pop("hold", None)
    hold = Hold(**hold_opts) if hold_opts is not None else None
    src = ConntrackSource(hold=hold, **options)
    signal.signal(signal.SIGTERM, lambda *_: src.stop())
    events: list[dict[str, Any]] = []
    timer = threading.Timer(max_seconds, src.stop)
    try:
        src.start()
        Path(ready).write_text("ready")
        timer.start()
        for ev in src:
            events.append(ev.to_dict())
        summary = src.summary()
    finally:
        timer.cancel()
        src.close()
    return {"events": events, "summary": summary}


class Backend:
    def __init__(self, ns: Netns, tmp: Path, max_seconds: float = 120, **options: Any) -> None:
        self.ready = tmp / f"ready-{time.monotonic_ns()}"
        self.child: Child[dict[str, Any]] = ns.spawn(
            run_backend, str(self.ready), max_seconds, options
        )
        deadline = time.monotonic() + 20
        while not self.ready.exists():
            if time.monotonic() > deadline:
                self.child.kill()
                raise TimeoutError("the backend did not start")
            time.sleep(0.02)

    def finish(self, settle: float = 0.5) -> dict[str, Any]:
        time.sleep(settle)
        os.kill(self.child.pid, signal.SIGTERM)
        return self.child.wait(60)


@pytest.fixture
def web(veth: VethPair, tmp_path: Path) -> Iterator[tuple[VethPair, int]]:
    """A python http.server in namespace a serving ``big`` (200 kB) and ``small``."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "big").write_bytes(os.urandom(FILE_SIZE))
    (root / "small").write_bytes(b"ok\n")
    port = 8000 + os.getpid() % 1000
    server = veth.a.popen(
        sys.executable, "-m", "http.server", "--bind", veth.a4, "--directory", str(root),
        str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        probe = (
            "curl",
            "-s",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            f"http://{veth.a4}:{port}/small",
        )
        while veth.b.run(*probe, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("http.server did not come up")
            time.sleep(0.1)
        yield veth, port
    finally:
        server.kill()
        server.wait()


def curl(ns: Netns, url: str, *extra: str) -> tuple[int, int]:
    """Run curl in ``ns``; (its pid, its local port)."""
    p = ns.popen(
        "curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{local_port}", *extra, url,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, f"curl exit {p.returncode}"
    return p.pid, int(out)


def nft_counters(ns: Netns, a4: str, port: int) -> None:
    ns.run("nft", "-f", "-", input=(
        "table inet nwt_count {\n"
        " chain out { type filter hook output priority 10; policy accept;\n"
        f"  ip daddr {a4} tcp dport {port} counter\n }}\n"
        " chain in { type filter hook input priority 10; policy accept;\n"
        f"  ip saddr {a4} tcp sport {port} counter\n }}\n"
        "}\n"
    ))  # fmt: skip


def read_counters(ns: Netns) -> dict[str, tuple[int, int]]:
    data = json.loads(ns.run("nft", "-j", "list", "table", "inet", "nwt_count").stdout)
    out = {}
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule:
            c = next(e["counter"] for e in rule["expr"] if "counter" in e)
            out[rule["chain"]] = (c["packets"], c["bytes"])
    return out


def flows(events: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for e in events:
        by.setdefault(e["flow"], {})[e["event"]] = e
    return by


def sysctl(ns: Netns, name: str) -> str:
    return ns.run("cat", f"/proc/sys/net/netfilter/{name}").stdout.strip()


# --------------------------------------------------------------------------- tests
def test_curl_flow_counters_owner_and_cleanup(web: tuple[VethPair, int], tmp_path: Path) -> None:
    pair, port = web
    b = pair.b
    before = (sysctl(b, "nf_conntrack_acct"), sysctl(b, "nf_conntrack_timestamp"))
    nft_counters(b, pair.a4, port)
    backend = Backend(b, tmp_path)
    assert "netwarden_ct" in b.run("nft", "list", "tables").stdout
    assert sysctl(b, "nf_conntrack_acct") == "1"
    # a slow download: curl is alive while its owner is looked up
    pid, lport = curl(b, f"http://{pair.a4}:{port}/big", "--limit-rate", "200k")
    result = backend.finish()
    counters = read_counters(b)

    mine = [
        f for f in flows(result["events"]).values()
        if "new" in f and f["new"]["sport"] == lport and f["new"]["dport"] == port
    ]  # fmt: skip
    assert len(mine) == 1, result["events"]
    new, end = mine[0]["new"], mine[0].get("end")
    assert end is not None, "no end event for the curl flow"
    for e in (new, end):
        assert (e["proto"], e["src"], e["dst"], e["family"]) == ("tcp", pair.b4, pair.a4, 4)
        assert (e["sport"], e["dport"]) == (lport, port)
        assert e["direction"] == "out" and e["source"] == "conntrack"
        assert e["flow"] == new["flow"]
        assert e["attribution"] == "socket" and e["pid"] == pid and e["comm"] == "curl"
    _, out_bytes = counters["out"]
    _, in_bytes = counters["in"]
    assert in_bytes > FILE_SIZE
    assert abs(end["resp_bytes"] - in_bytes) <= 0.1 * in_bytes, (end, counters)
    assert abs(end["orig_bytes"] - out_bytes) <= 0.1 * out_bytes, (end, counters)
    assert end["duration"] is not None and 0 < end["duration"] < 5
    # the flow ended at FIN, not two minutes later at conntrack's TIME_WAIT timeout
    assert end["ts"] - new["ts"] < 5

    # nothing left behind: our table gone, sysctls restored
    assert "netwarden_ct" not in b.run("nft", "list", "tables").stdout
    assert (sysctl(b, "nf_conntrack_acct"), sysctl(b, "nf_conntrack_timestamp")) == before


def test_short_lived_curl_attribution_rate(web: tuple[VethPair, int], tmp_path: Path) -> None:
    """The known limitation without a hold: a fast curl may exit before its NEW event is
    read. Measured and reported, only loosely asserted (every flow is still seen)."""
    pair, port = web
    backend = Backend(pair.b, tmp_path)
    runs = [curl(pair.b, f"http://{pair.a4}:{port}/small") for _ in range(30)]
    result = backend.finish()
    by_port = {
        f["new"]["sport"]: f["new"]
        for f in flows(result["events"]).values()
        if "new" in f and f["new"]["dport"] == port
    }
    assert all(lport in by_port for _pid, lport in runs)
    hits = sum(1 for pid, lport in runs if by_port[lport]["pid"] == pid)
    print(f"\nwithout hold: {hits}/{len(runs)} short curls attributed to their pid")
    # wrong owners are never reported
    assert all(by_port[lport]["pid"] in (pid, None) for pid, lport in runs)


def test_hold_attributes_every_curl(web: tuple[VethPair, int], tmp_path: Path) -> None:
    pair, port = web
    b = pair.b
    backend = Backend(b, tmp_path, hold={"queue": 4000 + os.getpid() % 1000})
    assert "NETWARDEN_HOLD" in b.run("iptables", "-S").stdout
    runs = [curl(b, f"http://{pair.a4}:{port}/small") for _ in range(50)]
    result = backend.finish()
    by_port = {
        f["new"]["sport"]: f["new"]
        for f in flows(result["events"]).values()
        if "new" in f and f["new"]["dport"] == port
    }
    got = [(by_port.get(lport, {}).get("pid"), by_port.get(lport, {}).get("attribution"))
           for _pid, lport in runs]  # fmt: skip
    assert got == [(pid, "hold") for pid, _lport in runs]
    hold = result["summary"]["hold"]
    assert hold["held"] >= 50 and hold["attributed"] >= 50
    print(f"\nhold: 50/50 curls attributed; mean hold {hold['mean_hold_us']} µs")
    # the rules are gone
    assert "NETWARDEN_HOLD" not in b.run("iptables", "-S").stdout
    assert "NETWARDEN_HOLD" not in b.run("ip6tables", "-S").stdout
    assert "netwarden_ct" not in b.run("nft", "list", "tables").stdout


def _udp_burst(dst: str, count: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            s.sendto(b"x", (dst, 20000 + i))
    return count


def test_enobufs_counted_and_redumped(veth: VethPair, tmp_path: Path) -> None:
    """A tiny receive buffer and a burst of new flows: the loss is counted, the table
    re-dumped, and every flow still reported."""
    count = 3000
    backend = Backend(veth.b, tmp_path, rcvbuf=4096, attribute=False, tcp_end_at_close=False)
    veth.b.call(_udp_burst, veth.a4, count)
    result = backend.finish(settle=1.0)
    s = result["summary"]
    assert s["enobufs"] >= 1 and s["redumps"] >= 1, s
    seen = {
        e["dport"] for e in result["events"]
        if e["event"] == "new" and e["proto"] == "udp" and e["dst"] == veth.a4
    }  # fmt: skip
    assert seen == set(range(20000, 20000 + count)), f"{len(seen)} of {count} flows; {s}"
    assert s["late_new"] >= 1
    print(f"\nENOBUFS {s['enobufs']} times, {s['redumps']} re-dumps, {s['late_new']} late")


def test_crashed_run_leaves_nothing_after_the_next(veth: VethPair, tmp_path: Path) -> None:
    """kill -9 leaves the ct table and the hold chain; the next start (and cleanup())
    removes them."""
    b = veth.b
    backend = Backend(b, tmp_path, hold={"queue": 3000 + os.getpid() % 1000})
    backend.child.kill()
    with pytest.raises(RuntimeError):
        backend.child.wait(10)
    assert "NETWARDEN_HOLD" in b.run("iptables", "-S").stdout
    assert "netwarden_ct" in b.run("nft", "list", "tables").stdout
    removed = b.call(_cleanup)
    assert removed >= 1
    assert "NETWARDEN_HOLD" not in b.run("iptables", "-S").stdout
    again = Backend(b, tmp_path)
    again.finish(settle=0.1)
    assert "netwarden_ct" not in b.run("nft", "list", "tables").stdout


def _cleanup() -> int:
    from netwarden.capture.nfqueue import cleanup

    return cleanup()


def test_ipv6_flow_and_one_shot_udp_measured(veth: VethPair, tmp_path: Path) -> None:
    """IPv6 works the same way; one-shot UDP senders (bash's /dev/udp) are measured: the
    sender is usually gone before its NEW event is read (the known limitation)."""
    b = veth.b
    port = 9000 + os.getpid() % 1000
    root = tmp_path / "www6"
    root.mkdir()
    (root / "big").write_bytes(os.urandom(FILE_SIZE))
    server = veth.a.popen(
        sys.executable, "-m", "http.server", "--bind", veth.a6, "--directory", str(root),
        str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://[{veth.a6}]:{port}/big"
        deadline = time.monotonic() + 10
        while b.run("curl", "-s", "-g", "--noproxy", "*", "-o", "/dev/null", url,
                    check=False).returncode != 0:  # fmt: skip
            assert time.monotonic() < deadline, "http.server (IPv6) did not come up"
            time.sleep(0.1)
        backend = Backend(b, tmp_path)
        # a slow download: curl is alive while its owner is looked up
        pid, lport = curl(b, url, "-g", "--limit-rate", "200k")
        senders = []
        for i in range(30):
            s = b.popen("bash", "-c", f"echo hi >/dev/udp/{veth.a4}/{31000 + i}")
            s.wait(10)
            senders.append(s.pid)
        result = backend.finish()
    finally:
        server.kill()
        server.wait()
    news = [e for e in result["events"] if e["event"] == "new"]
    v6 = [e for e in news if e["family"] == 6 and e["sport"] == lport]
    assert len(v6) == 1
    assert (v6[0]["src"], v6[0]["dst"], v6[0]["dport"]) == (veth.b6, veth.a6, port)
    assert (v6[0]["pid"], v6[0]["attribution"]) == (pid, "socket")
    by_port = {e["dport"]: e for e in news if e["proto"] == "udp"}
    assert all(31000 + i in by_port for i in range(30))
    hits = sum(1 for i, pid in enumerate(senders) if by_port[31000 + i]["pid"] == pid)
    print(f"\nwithout hold, one-shot UDP: {hits}/{len(senders)} attributed to their pid")
    assert all(by_port[31000 + i]["pid"] in (pid, None) for i, pid in enumerate(senders))
    assert all(by_port[31000 + i]["uid"] in (0, None) for i in range(30))
