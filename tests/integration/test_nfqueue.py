"""Hold (NFQUEUE) against the real kernel, in throw-away namespaces: the ``trap`` use on
its own, one-shot UDP senders (measured), fail-open after a crash and cleanup()."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netns import Child, Netns, VethPair
from tests.integration.test_conntrack import curl, web  # noqa: F401 (fixture)

pytestmark = pytest.mark.root


def run_hold(ready: str, max_seconds: float, options: dict[str, Any]) -> dict[str, Any]:
    """In the child (inside namespace b): iterate a Hold until SIGTERM."""
    from netwarden.capture.nfqueue import Hold

    port = options.pop("only_dport", None)
    match = None if port is None else (lambda t: t.dport == port)
    hold = Hold(match=match, **options)
    signal.signal(signal.SIGTERM, lambda *_: hold.stop())
    timer = threading.Timer(max_seconds, hold.stop)
    events = []
    try:
        hold.start()
        Path(ready).write_text("ready")
        timer.start()
        for ev in hold:
            events.append(ev.to_dict())
        summary = hold.summary()
    finally:
        timer.cancel()
        hold.close()
    return {"events": events, "summary": summary}


class HoldChild:
    def __init__(self, ns: Netns, tmp: Path, **options: Any) -> None:
        self.ready = tmp / f"hold-ready-{time.monotonic_ns()}"
        self.child: Child[dict[str, Any]] = ns.spawn(run_hold, str(self.ready), 120, options)
        deadline = time.monotonic() + 20
        while not self.ready.exists():
            if time.monotonic() > deadline:
                self.child.kill()
                raise TimeoutError("the hold did not start")
            time.sleep(0.02)

    def finish(self) -> dict[str, Any]:
        time.sleep(0.3)
        os.kill(self.child.pid, signal.SIGTERM)
        return self.child.wait(60)


def queue_num() -> int:
    return 5000 + os.getpid() % 1000


def test_trap_gets_the_pid_of_every_matching_connection(
    web: tuple[VethPair, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    pair, port = web
    b = pair.b
    hold = HoldChild(b, tmp_path, queue=queue_num(), only_dport=port)
    chain = b.run("iptables", "-S", f"NETWARDEN_HOLD_{queue_num()}").stdout
    assert "--queue-bypass" in chain and "NFQUEUE" in chain
    runs = [curl(b, f"http://{pair.a4}:{port}/small") for _ in range(20)]
    # a connection that does not match passes without a lookup
    b.run("curl", "-s", "--noproxy", "*", "-o", "/dev/null", "--max-time", "2",
          f"http://{pair.a4}:{port + 1}/", check=False)  # fmt: skip
    result = hold.finish()
    by_port = {e["sport"]: e for e in result["events"]}
    for pid, lport in runs:
        e = by_port[lport]
        assert (e["pid"], e["comm"], e["attribution"]) == (pid, "curl", "hold")
        assert (e["dst"], e["dport"], e["proto"], e["direction"]) == (pair.a4, port, "tcp", "out")
        assert e["uid"] == 0
    assert result["summary"]["unmatched"] >= 1
    assert len(result["events"]) == len(runs)
    assert "NETWARDEN_HOLD" not in b.run("iptables", "-S").stdout


def _one_shot_udp(ns: Netns, dst: str, port: int) -> int:
    """A shell that sends one datagram through bash's /dev/udp and exits at once."""
    p = ns.popen("bash", "-c", f"echo hi >/dev/udp/{dst}/{port}")
    p.wait(10)
    return p.pid


def test_one_shot_udp_senders_measured(veth: VethPair, tmp_path: Path) -> None:
    """sendto() does not wait for the verdict, so holding UDP helps little: measured and
    reported. The uid comes with every packet; a wrong pid is never reported."""
    b = veth.b
    hold = HoldChild(b, tmp_path, queue=queue_num(), tcp=False, udp=True)
    pids = [_one_shot_udp(b, veth.a4, 30000 + i) for i in range(40)]
    result = hold.finish()
    by_port = {e["dport"]: e for e in result["events"] if e["proto"] == "udp"}
    assert len(by_port) == len(pids)
    hits = sum(1 for i, pid in enumerate(pids) if by_port[30000 + i]["pid"] == pid)
    print(f"\nhold, one-shot UDP: {hits}/{len(pids)} attributed to their pid")
    for i, pid in enumerate(pids):
        e = by_port[30000 + i]
        assert e["uid"] == 0
        assert e["pid"] in (pid, None)


def test_fail_open_after_a_crash_then_cleanup(web: tuple[VethPair, int], tmp_path: Path) -> None:  # noqa: F811
    pair, port = web
    b = pair.b
    hold = HoldChild(b, tmp_path, queue=queue_num())
    hold.child.kill()
    with pytest.raises(RuntimeError):
        hold.child.wait(10)
    assert "NETWARDEN_HOLD" in b.run("iptables", "-S").stdout
    # nothing listens on the queue: --queue-bypass lets connections through
    start = time.monotonic()
    curl(b, f"http://{pair.a4}:{port}/small")
    assert time.monotonic() - start < 5
    assert b.call(_cleanup) == 2  # the IPv4 and IPv6 chains
    assert "NETWARDEN_HOLD" not in b.run("iptables", "-S").stdout
    assert "NETWARDEN_HOLD" not in b.run("ip6tables", "-S").stdout
    assert b.call(_cleanup) == 0


def test_queue_in_use_is_a_clear_error(veth: VethPair, tmp_path: Path) -> None:
    hold = HoldChild(veth.b, tmp_path, queue=queue_num())
    try:
        msg = veth.b.call(_second_hold, queue_num())
        assert "bound by another program" in msg
    finally:
        hold.finish()
    # the failed second hold removed nothing of the first's and left nothing itself
    assert "NETWARDEN_HOLD" not in veth.b.run("iptables", "-S").stdout


def _second_hold(queue: int) -> str:
    from netwarden.capture.nfqueue import Hold
    from netwarden.errors import RuntimeFailure

    try:
        Hold(queue).start()
    except RuntimeFailure as exc:
        return str(exc)
    return "started"


def _cleanup() -> int:
    from netwarden.capture.nfqueue import cleanup

    return cleanup()


def test_cleanup_without_iptables_chain_is_quiet(ns: Netns) -> None:
    assert ns.call(_cleanup) == 0
    out = subprocess.run(
        ["ip", "netns", "exec", ns.name, "nft", "list", "ruleset"], capture_output=True, text=True
    ).stdout
    assert "NETWARDEN" not in out
