"""`netwarden log` and `netwarden trap` on the conntrack backend (with the NFQUEUE hold), real
curl against a real server in a peer namespace."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netwarden.capture.nfqueue import HOLD_TABLES as TABLES
from tests.integration.netns import VethPair, veth_pair

pytestmark = pytest.mark.root


def serve(pair: VethPair, port: int) -> subprocess.Popen[bytes]:
    srv = pair.b.popen(
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "::",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if (
            pair.a.run(
                "curl", "-s", "-o", "/dev/null", f"http://{pair.b4}:{port}/", check=False
            ).returncode
            == 0
        ):
            return srv
        time.sleep(0.05)
    raise AssertionError("server did not come up")


def start(pair: VethPair, *args: str) -> subprocess.Popen[str]:
    p = pair.a.popen(
        sys.executable,
        "-m",
        "netwarden.cli",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    line = p.stderr.readline()
    assert "listening on" in line, line + p.stderr.read()
    time.sleep(0.3)
    return p


def test_log_conntrack_line_and_json() -> None:
    with veth_pair() as pair:
        srv = serve(pair, 8090)
        try:
            lg = start(
                pair, "log", "--backend", "conntrack", "--hold", "-p", "tcp", "--format-ts", "%s"
            )
            curl = pair.a.popen("curl", "-s", "-o", "/dev/null", f"http://{pair.b4}:8090/")
            curl.wait(10)
            time.sleep(1.0)
            lg.send_signal(signal.SIGINT)
            out, err = lg.communicate(timeout=30)
        finally:
            srv.kill()
            srv.wait()
    lines = [x for x in out.splitlines() if f"> {pair.b4}/8090" in x]
    assert lines, out
    # conntrack-logger's line: {ts}: {proto} {src}/{sport} > {dst}/{dport} :: {pid} u:g unit ::
    head, pid_part, cmd = lines[0].split(" :: ")
    assert head.split(": ", 1)[1].startswith(f"tcp {pair.a4}/")
    assert pid_part.split()[0] == str(curl.pid)
    assert pid_part.split()[1] == "0:0"
    assert cmd.startswith("curl -s -o /dev/null")
    assert "events lost" in err


def test_trap_runs_command_with_pid_and_counts(tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    with veth_pair() as pair:
        srv = serve(pair, 8091)
        try:
            tr = start(
                pair,
                "trap",
                "-t",
                "-i",
                pair.b4,
                "-p",
                "8091",
                "--count",
                "2",
                "--timeout",
                "60",
                "--json",
                "--backend",
                "conntrack",
                "-e",
                f"sh -c 'echo {{pid}} $NETWARDEN_COMM >> {marker}'",
            )
            pids = []
            # another port is not a match
            pair.a.run("curl", "-s", "-o", "/dev/null", f"http://{pair.b4}:8090/", check=False)
            for _ in range(2):
                c = pair.a.popen("curl", "-s", "-o", "/dev/null", f"http://{pair.b4}:8091/")
                c.wait(10)
                pids.append(c.pid)
            out, _err = tr.communicate(timeout=60)
        finally:
            srv.kill()
            srv.wait()
    events = [json.loads(x) for x in out.splitlines()]
    assert [e["pid"] for e in events] == pids
    assert all(e["dport"] == 8091 and e["dst"] == pair.b4 for e in events)
    assert all(e["attribution"] in ("hold", "kernel") for e in events)
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
        and len(marker.read_text().splitlines() if marker.exists() else []) < 2
    ):
        time.sleep(0.1)
    assert marker.read_text().splitlines() == [f"{p} curl" for p in pids]
    assert tr.returncode == 0


def test_trap_bad_input() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "netwarden.cli", "trap", "-i", "nonsense"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "-i 'nonsense'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "netwarden.cli", "trap", "-e", "'unclosed"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "-e" in r.stderr


def test_trap_matching_rules() -> None:
    from ipaddress import ip_address

    from netwarden.events import Direction, Event, EventType, Proto
    from netwarden.livecmds import Trap, exec_argv

    def ev(dport: int, proto: Proto = Proto.TCP, direction: Direction = Direction.OUT) -> Event:
        return Event(
            ts=0,
            event=EventType.NEW,
            proto=proto,
            ipproto=6,
            family=4,
            src=ip_address("10.0.0.1"),
            dst=ip_address("10.9.0.5"),
            sport=4000,
            dport=dport,
            direction=direction,
        )

    t = Trap(proto="tcp", ip="10.9.0.0/16", port=443, connections=False, per_minute=2)
    assert t.match(ev(443), 0.0) and t.match(ev(443), 1.0)
    assert not t.match(ev(443), 2.0) and t.limited == 1  # 3rd within a minute: limited
    assert t.match(ev(443), 61.0)
    assert not t.match(ev(80), 0.0)
    assert not t.match(ev(443, Proto.UDP), 0.0)
    assert not t.match(ev(443, direction=Direction.IN), 0.0)
    assert exec_argv(["kill", "-STOP"], 42) == ["kill", "-STOP", "42"]
    assert exec_argv(["sh", "-c", "echo {pid}"], 42) == ["sh", "-c", "echo 42"]


def test_two_traps_at_once_and_nothing_left_behind() -> None:
    with veth_pair() as pair:
        srv = serve(pair, 8092)
        try:
            one = start(
                pair,
                "trap",
                "-t",
                "-p",
                "8092",
                "--count",
                "1",
                "--json",
                "--backend",
                "conntrack",
                "--timeout",
                "60",
            )
            two = start(
                pair,
                "trap",
                "-t",
                "-p",
                "8092",
                "--count",
                "1",
                "--json",
                "--backend",
                "conntrack",
                "--timeout",
                "60",
            )
            # each its own queue and chain, in its own table: a queue's verdict ends the
            # packet's way through its table, so both hold only from different tables
            chains = {t: pair.a.run("iptables", "-t", t, "-S").stdout for t in TABLES}
            assert [c.count("-N NETWARDEN_HOLD_") for c in chains.values()] == [1, 1, 0]
            c = pair.a.popen("curl", "-s", "-o", "/dev/null", f"http://{pair.b4}:8092/")
            c.wait(10)
            outs = [p.communicate(timeout=60)[0] for p in (one, two)]
        finally:
            srv.kill()
            srv.wait()
        for out in outs:
            (event,) = [json.loads(x) for x in out.splitlines()]
            assert event["pid"] == c.pid and event["dport"] == 8092
        for t in TABLES:
            assert "NETWARDEN" not in pair.a.run("iptables", "-t", t, "-S").stdout
        assert "NETWARDEN" not in pair.a.run("ip6tables", "-S").stdout
        assert "netwarden" not in pair.a.run("nft", "list", "tables").stdout
