"""`netwarden doctor`: the table's content, as root and as an unprivileged user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from netwarden.doctor import Check, render


def test_render_names_the_auto_choice() -> None:
    text = render([
        Check("ebpf", "backend", False, "no BTF", "use another kernel"),
        Check("sniff", "backend", True, "works"),
        Check("nftables", "blocker", True, "ok"),
    ])  # fmt: skip
    lines = text.splitlines()
    assert lines[0].split() == ["what", "kind", "status", "why", "fix"]
    assert "UNAVAILABLE" in lines[1] and "use another kernel" in lines[1]
    assert lines[-1] == "--backend auto picks: sniff"


def doctor(*prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "netwarden.cli", "doctor", "--json"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_as_root_sniff_and_conntrack_work() -> None:
    r = doctor()
    rows = {c["name"]: c for c in map(json.loads, r.stdout.splitlines())}
    assert r.returncode == 0
    assert rows["sniff"]["ok"] and rows["conntrack"]["ok"] and rows["nftables"]["ok"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs setpriv")
def test_unprivileged_gets_reasons_and_exit_3() -> None:
    r = doctor("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all")
    rows = {c["name"]: c for c in map(json.loads, r.stdout.splitlines())}
    assert r.returncode == 3
    assert not rows["sniff"]["ok"] and "CAP_NET_RAW" in rows["sniff"]["why"]
    assert "root" in rows["conntrack"]["fix"]
