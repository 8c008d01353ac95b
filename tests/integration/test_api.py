"""The Python API: netwarden.events() live (every backend) and netwarden.replay()."""

from __future__ import annotations

import select
import subprocess
import sys

import pytest

from tests.integration.netns import veth_pair

pytestmark = pytest.mark.root


def _collect(backend: str, server: str, port: int) -> list[dict[str, object]]:
    import netwarden

    out: list[dict[str, object]] = []
    with netwarden.events(backend) as live:
        fd = live.fileno()
        assert isinstance(fd, int) and fd >= 0
        proc = subprocess.Popen(["curl", "-s", "-o", "/dev/null", f"http://{server}:{port}/"])
        proc.wait(10)
        for ev in live:
            d = ev.to_dict()
            if ev.dport == port and str(ev.event) == "end":
                out.append(d)
                live.stop()
                break
        select.select([fd], [], [], 0)
    return out


@pytest.mark.parametrize("backend", ["ebpf", "conntrack", "sniff"])
def test_events_from_each_backend(backend: str) -> None:
    if backend == "ebpf":
        from netwarden.doctor import check_ebpf

        if not check_ebpf().ok:
            pytest.skip("no eBPF here")
    with veth_pair() as pair:
        srv = pair.b.popen(
            sys.executable,
            "-m",
            "http.server",
            "8095",
            "--bind",
            pair.b4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                if (
                    pair.a.run(
                        "curl", "-s", "-o", "/dev/null", f"http://{pair.b4}:8095/", check=False
                    ).returncode
                    == 0
                ):
                    break
            got = pair.a.call(_collect, backend, pair.b4, 8095, timeout=60)
        finally:
            srv.kill()
            srv.wait()
    (e,) = got
    assert e["dst"] == pair.b4 and e["direction"] == "out" and e["source"] == backend
    assert int(e["resp_bytes"]) > 0  # type: ignore[call-overload]
