"""The daemon's API and triggers: tokens (401), report --from merging two hosts, --html,
the UDP dump trigger (allowed hosts only), SIGHUP (new statistics), --detach/stop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.netns import Netns, veth_pair

pytestmark = pytest.mark.root


def start(
    ns: Netns, state: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    import os

    proc = ns.popen(
        sys.executable, "-m", "netwarden.cli", "run", "--backend", "sniff",
        "--state-dir", str(state), *extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on" in line, line + proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def nw(
    ns: Netns, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "netwarden.cli", *args]
    if env:
        cmd = ["env", *(f"{k}={v}" for k, v in env.items()), *cmd]
    return ns.run(*cmd, check=False, timeout=60)


def get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def talk(addr: str, port: int, n: int) -> None:
    """n short UDP exchanges-worth of traffic: one datagram each to addr:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(n):
            s.sendto(b"x" * (100 + i), (addr, port))


def test_token_merge_html_dump_trigger_and_hup(tmp_path: Path) -> None:
    token = "s3cret-token"
    tokfile = tmp_path / "token"
    tokfile.write_text(token + "\n")
    with veth_pair() as pair:
        a_state, b_state = tmp_path / "a", tmp_path / "b"
        # host a listens on its veth address (needs the token); host b on loopback
        da = start(pair.a, a_state, "--listen", f"{pair.a4}:9760", "--token-file", str(tokfile),
                   "--config", str(_cfg(tmp_path, "dump_listen", "127.0.0.1:9761")))  # fmt: skip
        db = start(pair.b, b_state, "--listen", "127.0.0.1:9760")
        try:
            # traffic both hosts see: b sends datagrams to a, and to another address of a's
            pair.b.call(talk, pair.a4, 5353, 3)
            time.sleep(3.5)
            # reads on a non-loopback listen need the token; /metrics does not
            with pair.b.entered():
                assert get(f"http://{pair.a4}:9760/api/status")[0] == 401
                assert get(f"http://{pair.a4}:9760/api/status", "wrong")[0] == 401
                code, body = get(f"http://{pair.a4}:9760/api/status", token)
                assert code == 200 and json.loads(body)["backend"] == "sniff"
                code, body = get(f"http://{pair.a4}:9760/metrics")
                assert code == 200 and "netwarden_flows_total" in body
            # b merges a's report (token from the environment) with its own
            url = f"http://{pair.a4}:9760"
            r = nw(pair.b, "report", "--state-dir", str(b_state), "--from", url, "--local-too",
                   "--json", "--no-names")  # fmt: skip
            assert r.returncode == 2 and "token" in r.stderr  # not on loopback, no token
            r = nw(pair.b, "report", "--state-dir", str(b_state), "--from", url, "--local-too",
                   "--json", "--no-names", env={"NETWARDEN_TOKEN": token})  # fmt: skip
            assert r.returncode == 0, r.stderr
            rows = {x["key"]: x for x in map(json.loads, r.stdout.splitlines())}
            # a sees b as the remote (inbound), b sees a: both rows, each from one host
            assert rows[pair.b4]["hosts"] == 1 and rows[pair.a4]["hosts"] == 1
            assert rows[pair.a4]["conns"] >= 1 and rows[pair.b4]["bytes"] > 300
            html_file = tmp_path / "r.html"
            r = nw(pair.b, "report", "--state-dir", str(b_state), "--html", str(html_file))
            page = html_file.read_text()
            assert r.returncode == 0 and "<svg" in page and pair.a4 in page
            # the UDP dump trigger: allowed host (loopback) gets OK <ts>, stats.json rewritten
            stats = a_state / "stats.json"
            reply = pair.a.call(_trigger, "127.0.0.1", 9761)
            assert reply.startswith("OK ") and stats.exists()
            assert any(row["key"] == pair.b4 for row in json.loads(stats.read_text())["rows"])
            # from b's address it is not allowed: no answer
            assert pair.b.call(_trigger, pair.a4, 9761) == ""
            # SIGHUP: stats written, new statistics start (the old flows are not in them)
            before = json.loads(stats.read_text())["start"]
            da.send_signal(signal.SIGHUP)
            time.sleep(1.0)
            reply = pair.a.call(_trigger, "127.0.0.1", 9761)
            after = json.loads(stats.read_text())
            assert after["start"] > before and after["rows"] == []
        finally:
            stop(da)
            stop(db)
        assert "bad or missing token" in (da.stderr.read() if da.stderr else "")


def _cfg(tmp_path: Path, key: str, value: str) -> Path:
    p = tmp_path / "a.toml"
    p.write_text(f'{key} = "{value}"\n')
    return p


def _trigger(addr: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.sendto(b"dump", (addr, port))
        try:
            return s.recv(100).decode()
        except TimeoutError:
            return ""


def test_detach_status_stop(tmp_path: Path) -> None:
    from tests.integration.netns import netns

    with netns() as ns:
        r = nw(ns, "run", "--backend", "sniff", "--state-dir", str(tmp_path), "--detach",
               "--listen", "127.0.0.1:9762")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "listening on all interfaces" in r.stderr
        st = nw(ns, "status", "--state-dir", str(tmp_path))
        assert st.returncode == 0 and st.stdout.startswith("running (pid ")
        # a second daemon on the same state dir is refused
        r2 = nw(ns, "run", "--backend", "sniff", "--state-dir", str(tmp_path), "--detach")
        assert r2.returncode == 2 and "already running" in r2.stderr
        s = nw(ns, "stop", "--state-dir", str(tmp_path))
        assert s.returncode == 0 and s.stdout.startswith("stopped")
        st = nw(ns, "status", "--state-dir", str(tmp_path))
        assert st.returncode == 1 and st.stdout.strip() == "not running"
        assert "0 packets dropped by kernel" in (tmp_path / "netwarden.log").read_text()
