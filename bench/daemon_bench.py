"""Benchmarks of the daemon side (issue: the daemon, store, reports, dashboard).

1. Flows written per second with 0 loss: synthetic flow events (new + end) through the
   pipeline into the SQLite store, flushed once per second as the daemon does; the rows in
   the database are counted afterwards.
2. The daemon idle: `netwarden run --backend sniff` in a fresh namespace, CPU (utime+stime
   from /proc/PID/stat) over 30 s and PSS (smaps_rollup).
3. The dashboard: page weight (the static files and the first API answers) and time to first
   render (Paint Timing's first-contentful-paint) in headless Chromium.

Run: .venv/bin/python bench/daemon_bench.py  (root; prints a table, writes bench/out/daemon.json)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.integration.netns import netns  # noqa: E402

from netwarden.config import Config  # noqa: E402
from netwarden.events import Direction, Event, EventType, ProcessInfo, Proto  # noqa: E402
from netwarden.pipeline import Pipeline  # noqa: E402
from netwarden.store.sqlite import open_store  # noqa: E402

OUT = ROOT / "bench" / "out"


class _NoSource:
    name = "bench"


def store_rate(flows: int = 200_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        cfg = Config(state_dir=d)
        store = open_store(d)
        p = Pipeline(cfg, _NoSource(), store=store)
        src = ip_address("192.0.2.1")
        proc = ProcessInfo(pid=4242, comm="curl", uid=1000, gid=1000, cmdline="curl -s x")
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        now = 1.8e9
        next_tick = 0.0
        for i in range(flows):
            dst = ip_address(0xC6336400 + (i % 65536))
            for kind in (EventType.NEW, EventType.END):
                p.handle(Event(ts=now + i * 1e-4, event=kind, proto=Proto.TCP, ipproto=6,
                               family=4, src=src, dst=dst, sport=10000 + i % 50000, dport=443,
                               flow=f"b-{i}", direction=Direction.OUT, orig_bytes=500,
                               resp_bytes=5000, orig_pkts=6, resp_pkts=6, process=proc,
                               duration=0.05 if kind is EventType.END else None))  # fmt: skip
            wall = time.perf_counter()
            if wall >= next_tick:  # flush once per second of wall time, as the daemon does
                store.flush()
                next_tick = wall + 1.0
        store.flush()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        rows = store.conn.execute("SELECT count(*) FROM flows WHERE event='end'").fetchone()[0]
        size = os.path.getsize(os.path.join(d, "netwarden.db"))
        p.close()
    return {
        "flows": flows,
        "rows_written": rows,
        "lost": flows - rows,
        "seconds": round(elapsed, 3),
        "flows_per_second": round(flows / elapsed),
        "cpu_us_per_flow": round(cpu / flows * 1e6, 2),
        "db_bytes_per_flow": round(size / flows, 1),
    }


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def daemon_idle(seconds: float = 30.0) -> dict[str, Any]:
    hz = os.sysconf("SC_CLK_TCK")
    with netns("nwb-") as ns, tempfile.TemporaryDirectory() as d:
        proc = ns.popen(sys.executable, "-m", "netwarden.cli", "run", "--backend", "sniff",
                        "--state-dir", d, "--listen", "127.0.0.1:9770",
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stderr is not None and "listening" in proc.stderr.readline()
            # the pid of python inside `ip netns exec` (it execs, so it is the same pid)
            pid = proc.pid
            time.sleep(3.0)
            c0, t0 = _cpu_ticks(pid), time.monotonic()
            time.sleep(seconds)
            c1, t1 = _cpu_ticks(pid), time.monotonic()
            pss = _pss_kb(pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return {
        "seconds": seconds,
        "cpu_percent_of_core": round(100.0 * (c1 - c0) / hz / (t1 - t0), 3),
        "pss_mb": round(pss / 1024, 1),
    }


def _browse(url: str) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-quic"):  # fmt: skip
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        drv.get(url)
        WebDriverWait(drv, 20).until(
            lambda d: d.find_element(By.ID, "status").text.startswith("backend")
        )
        timing = drv.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "const p = performance.getEntriesByName('first-contentful-paint')[0];"
            "const r = performance.getEntriesByType('resource');"
            "return {fcp: p ? p.startTime : null, dcl: n.domContentLoadedEventEnd,"
            " load: n.loadEventEnd, doc: n.transferSize,"
            " resources: r.map(x => [x.name, x.transferSize, x.encodedBodySize])};"
        )
    finally:
        drv.quit()
    return dict(timing)


def dashboard() -> dict[str, Any]:
    with netns("nwb-") as ns, tempfile.TemporaryDirectory() as d:
        proc = ns.popen(sys.executable, "-m", "netwarden.cli", "run", "--backend", "sniff",
                        "--state-dir", d, "--listen", "127.0.0.1:9771",
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stderr is not None and "listening" in proc.stderr.readline()
            timing = ns.call(_browse, "http://127.0.0.1:9771/", timeout=120)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    static = ROOT / "src" / "netwarden" / "web" / "static"
    weight = sum(p.stat().st_size for p in static.iterdir())
    return {
        "static_bytes": weight,
        "transferred_bytes": int(timing["doc"] or 0)
        + sum(int(r[1] or 0) for r in timing["resources"]),
        "requests": 1 + len(timing["resources"]),
        "first_contentful_paint_ms": round(timing["fcp"], 1) if timing["fcp"] else None,
        "dom_content_loaded_ms": round(timing["dcl"], 1),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "store": store_rate(),
        "idle": daemon_idle(),
        "dashboard": dashboard(),
    }
    (OUT / "daemon.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
