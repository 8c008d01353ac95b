#!/usr/bin/env python3
"""Attribution benchmark: TCP connections per second attributed to their process.

Parts (each optional, all by default), results in ``bench/out/attribution.json``:

ebpf
    A fresh namespace (loopback only). :class:`~netwarden.capture.ebpf.EbpfSource` scoped
    to it is read in a thread of this process (as the daemon does), while
    ``bench/gen/connstorm.c`` (built here into ``bench/out/``) makes TCP connections to a
    local listener at a stepped series of rates (2 client processes, paced; RST close so no
    TIME_WAIT piles up). Per step: connections made, ``new`` events attributed to the right
    process (pid of a connstorm client and its comm), ``end`` events, records lost in the
    kernel (ring buffer full), the reader thread's CPU, the generator's achieved rate, and
    other people's CPU in the step (this machine is shared). Also one unpaced step.
baseline
    connstorm alone, no hooks attached: what the kernel and the generator manage.
kernel
    The eBPF programs' own run time per connection (``kernel.bpf_stats_enabled`` on for the
    step, restored after): run count and ns per program.
profile
    cProfile of the reader thread in one extra step (``--profile-rate``, 0: none): where a
    record's user-space time goes (the profiler's own cost doubles it).
conntrack
    The same connections read by the conntrack backend (``ConntrackSource`` in a child in
    the namespace, sock_diag + /proc attribution): events and attributed ones per rate.
daemon
    ``netwarden run --backend ebpf --state-dir TMP --listen 127.0.0.1:PORT`` in a fresh
    namespace: CPU (utime+stime of /proc/PID/stat) and PSS (/proc/PID/smaps_rollup) idle
    over 30 s, then under connstorm at 1000 connections/s for 30 s (and the flows stored).

Run as root:  .venv/bin/python bench/attribution_bench.py [--parts ebpf,daemon] [--quick]
Nothing here asserts a timing; the figures go to BENCHMARKS.md ("Attribution").
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
GEN_SRC = BENCH / "gen" / "connstorm.c"
GEN_BIN = OUT / "connstorm"
OBJ = ROOT / "build" / "bpf" / "netwarden.bpf.o"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.run import (  # noqa: E402
    all_proc_ticks,
    busy_fractions,
    cpu_times,
    others_cpu,
    wait_quiet,
)
from tests.integration.netns import Netns, netns  # noqa: E402

from netwarden.events import Attribution, EventType  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT = 7777
#: before each step, wait up to QUIET[0] s until no CPU was more than QUIET[1] busy
QUIET = [120.0, 0.15]
#: the ring buffer's size in MiB in the ebpf steps (the backend's default: 4)
RING = [4]
COMM = "connstorm"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_generator() -> None:
    if GEN_BIN.exists() and GEN_BIN.stat().st_mtime >= GEN_SRC.stat().st_mtime:
        return
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(GEN_BIN), str(GEN_SRC)], check=True)


def build_object() -> None:
    src = ROOT / "src" / "netwarden" / "bpf"
    newest = max(p.stat().st_mtime for p in (src / "netwarden.bpf.c", src / "netwarden.h"))
    if not OBJ.exists() or OBJ.stat().st_mtime < newest:
        subprocess.run(["bash", str(ROOT / "scripts" / "build-bpf.sh"), "netwarden"], check=True)


@contextmanager
def bench_ns() -> Iterator[Netns]:
    """A fresh namespace with lo up and the whole port range for clients."""
    with netns("nwb-") as ns:
        ns.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
        yield ns


def thread_cpu_ns(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def proc_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def storm(ns: Netns, conns: int, rate: int, workers: int = 2) -> dict[str, Any]:
    """connstorm in ``ns``; its result line, client pids and CPU (its processes' own)."""
    c0 = children_cpu_s()
    cp = ns.run(
        str(GEN_BIN), "127.0.0.1", str(PORT), str(conns), str(rate), str(workers), timeout=600
    )
    made, seconds, failed = cp.stdout.split()
    return {
        "conns": int(made),
        "seconds": float(seconds),
        "failed": int(failed),
        "achieved_per_s": round(int(made) / float(seconds)),
        "pids": [int(x) for x in cp.stderr.split()],
        "generator_cpu_s": round(children_cpu_s() - c0, 3),
    }


# ------------------------------------------------------------------------------ eBPF reader
class Reader(threading.Thread):
    """Iterates an EbpfSource; counts what the benchmark checks."""

    def __init__(self, src: Any, profile: bool = False) -> None:
        super().__init__(daemon=True)
        self.src = src
        self.new_by_pid: Counter[int] = Counter()
        self.new_other = 0
        self.ends = 0
        self.events = 0
        self.last_event = time.monotonic()
        self.profiler: cProfile.Profile | None = cProfile.Profile() if profile else None
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        self.ready.set()
        try:
            if self.profiler is not None:
                self.profiler.enable()
            for ev in self.src:
                self.events += 1
                self.last_event = time.monotonic()
                if ev.event is EventType.NEW:
                    if ev.comm == COMM and ev.attribution is Attribution.KERNEL:
                        self.new_by_pid[ev.pid or 0] += 1
                    else:
                        self.new_other += 1
                elif ev.event is EventType.END:
                    self.ends += 1
        except BaseException as exc:
            self.error = exc
        finally:
            if self.profiler is not None:
                self.profiler.disable()

    def cpu_ns(self) -> int:
        assert self.native_id is not None
        return thread_cpu_ns(self.native_id)

    def wait_settled(self, want: int, timeout: float = 60.0, quiet: float = 2.0) -> None:
        """Until ``want`` events came, or none for ``quiet`` s, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events >= want or time.monotonic() - self.last_event > quiet:
                return
            time.sleep(0.05)


def ebpf_steps(
    rates: Sequence[int], duration: float, profile_rate: int | None
) -> list[dict[str, Any]]:
    from netwarden.capture.ebpf import EbpfSource

    steps = []
    with bench_ns() as ns:
        inode = os.stat(ns.path).st_ino
        # the profiled step comes after the ladder (cProfile doubles the reader's cost)
        plan = [(r, False) for r in rates] + ([(profile_rate, True)] if profile_rate else [])
        for rate, profile in plan:
            src = EbpfSource(netns=inode, obj_path=OBJ, poll_interval=0.05, ring_size=RING[0] << 20)
            reader = Reader(src, profile=profile)
            reader.start()
            reader.ready.wait()
            time.sleep(0.2)
            conns = int(rate * duration) if rate else 300_000
            quiet = wait_quiet(*QUIET)
            busy0, others0 = cpu_times(), all_proc_ticks()
            cpu0, ev0 = reader.cpu_ns(), reader.events
            gen = storm(ns, conns, rate)
            reader.wait_settled(ev0 + 2 * conns)
            cpu1 = reader.cpu_ns()
            busy = busy_fractions(busy0, cpu_times())
            others = others_cpu(others0, {os.getpid(), *gen["pids"]})
            lost = src.lost()
            src.stop()
            reader.join(30)
            summary = src.summary()
            src.close()
            attributed = sum(n for pid, n in reader.new_by_pid.items() if pid in gen["pids"])
            records = summary["records"]
            step = {
                "rate": rate,
                "profiled": profile,
                "ring_mb": RING[0],
                **{k: v for k, v in gen.items() if k != "pids"},
                "new_attributed": attributed,
                "new_other": reader.new_other,
                "ends": reader.ends,
                "records": records,
                "lost": lost,
                "all_attributed_0_lost": attributed == gen["conns"] - gen["failed"] and lost == 0,
                "reader_cpu_s": round((cpu1 - cpu0) / 1e9, 3),
                "reader_us_per_record": round((cpu1 - cpu0) / 1e3 / max(records, 1), 2),
                "cpus_busy": busy,
                "cpus_busy_before": quiet,
                **others,
            }
            if reader.profiler is not None:
                step["profile"] = profile_rows(reader.profiler)
            log(
                f"  ebpf {rate or 'max'}/s{' (profiled)' if profile else ''}: "
                f"{gen['achieved_per_s']}/s made, "
                f"{attributed}/{gen['conns']} attributed, lost {lost}, "
                f"reader {step['reader_us_per_record']} us/record"
            )
            steps.append(step)
    return steps


def profile_rows(prof: cProfile.Profile, n: int = 20) -> list[dict[str, Any]]:
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    stats: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    rows = []
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in stats.items():
        rows.append(
            {
                "function": f"{Path(fname).name}:{line}:{func}",
                "calls": nc,
                "tottime_s": round(tt, 4),
                "cumtime_s": round(ct, 4),
            }
        )
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:n]


# ------------------------------------------------------------------------------ baseline, kernel
def baseline(conns: int) -> dict[str, Any]:
    with bench_ns() as ns:
        wait_quiet(*QUIET)
        others0 = all_proc_ticks()
        gen = storm(ns, conns, 0)
        gen.update(others_cpu(others0, {os.getpid(), *gen["pids"]}))
    gen.pop("pids")
    log(f"  baseline: {gen['achieved_per_s']}/s")
    return gen


@contextmanager
def bpf_stats() -> Iterator[None]:
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = path.read_text().strip()
    path.write_text("1\n")
    try:
        yield
    finally:
        path.write_text(old + "\n")


def prog_stats(prefix: str = "nw_") -> dict[str, tuple[int, int]]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    got: dict[str, tuple[int, int]] = {}
    for p in json.loads(out.stdout or "[]"):
        name = p.get("name", "")
        if name.startswith(prefix):
            cnt, ns_ = int(p.get("run_cnt", 0)), int(p.get("run_time_ns", 0))
            old = got.get(name, (0, 0))
            got[name] = (old[0] + cnt, old[1] + ns_)
    return got


def kernel_cost(rate: int, duration: float) -> dict[str, Any]:
    from netwarden.capture.ebpf import EbpfSource

    with bench_ns() as ns, bpf_stats():
        src = EbpfSource(netns=os.stat(ns.path).st_ino, obj_path=OBJ, poll_interval=0.05)
        reader = Reader(src)
        reader.start()
        time.sleep(0.2)
        wait_quiet(*QUIET)
        before = prog_stats()
        gen = storm(ns, int(rate * duration), rate)
        after = prog_stats()
        reader.wait_settled(2 * gen["conns"])
        src.stop()
        reader.join(30)
        src.close()
    conns = gen["conns"]
    progs = {}
    total = 0
    for name, (cnt, tns) in after.items():
        c0, t0 = before.get(name, (0, 0))
        if cnt - c0:
            progs[name] = {
                "runs_per_conn": round((cnt - c0) / conns, 2),
                "ns_per_run": round((tns - t0) / (cnt - c0)),
                "ns_per_conn": round((tns - t0) / conns),
            }
            total += tns - t0
    log(f"  kernel: {round(total / conns)} ns of BPF per connection")
    return {
        "rate": rate,
        "conns": conns,
        "bpf_ns_per_conn": round(total / conns),
        "programs": progs,
    }


# ------------------------------------------------------------------------------ conntrack
def _conntrack_reader(ready: str, done: str) -> dict[str, Any]:
    """In the namespace: a ConntrackSource iterated until ``done`` exists and no event came
    for 2 s (a watcher thread stops it)."""
    from netwarden.capture.conntrack import ConntrackSource

    src = ConntrackSource(poll_interval=0.05)
    src.start()
    new = attributed = ends = 0
    pids: Counter[int] = Counter()
    last = [time.monotonic()]

    def watch() -> None:
        while not (os.path.exists(done) and time.monotonic() - last[0] > 2.0):
            time.sleep(0.1)
        src.stop()

    threading.Thread(target=watch, daemon=True).start()
    cpu0 = time.thread_time()
    Path(ready).touch()
    for ev in src:
        last[0] = time.monotonic()
        if ev.dport != PORT:
            continue
        if ev.event is EventType.NEW:
            new += 1
            if ev.pid is not None and ev.comm == COMM:
                attributed += 1
                pids[ev.pid] += 1
        elif ev.event is EventType.END:
            ends += 1
    cpu = time.thread_time() - cpu0
    summary = src.summary()
    src.close()
    return {
        "new": new,
        "attributed": attributed,
        "ends": ends,
        "pids": dict(pids),
        "reader_cpu_s": round(cpu, 3),
        "events_lost": summary.get("events_lost", 0),
        "enobufs": summary.get("enobufs", 0),
        "by_attribution": summary.get("attribution", {}),
    }


def conntrack_steps(rates: Sequence[int], duration: float) -> list[dict[str, Any]]:
    steps = []
    for rate in rates:
        with bench_ns() as ns, tempfile.TemporaryDirectory() as d:
            ready, done = f"{d}/ready", f"{d}/done"
            child = ns.spawn(_conntrack_reader, ready, done)
            deadline = time.monotonic() + 30
            while not os.path.exists(ready) and time.monotonic() < deadline:
                time.sleep(0.05)
            wait_quiet(*QUIET)
            gen = storm(ns, int(rate * duration), rate)
            Path(done).touch()
            res = child.wait(300)
        ok_pids = set(gen["pids"])
        attributed = sum(n for p, n in res.pop("pids").items() if p in ok_pids)
        step = {
            "rate": rate,
            **{k: v for k, v in gen.items() if k != "pids"},
            **res,
            "attributed": attributed,
            "attributed_fraction": round(attributed / max(gen["conns"], 1), 4),
        }
        log(
            f"  conntrack {rate}/s: {res['new']} new, {attributed} attributed "
            f"({step['attributed_fraction']:.1%}), lost {res['events_lost']}"
        )
        steps.append(step)
    return steps


# ------------------------------------------------------------------------------ daemon
def daemon(seconds: float, rate: int) -> dict[str, Any]:
    port = 9790
    with bench_ns() as ns, tempfile.TemporaryDirectory() as d:
        proc = ns.popen(
            sys.executable, "-m", "netwarden.cli", "run", "--backend", "ebpf",
            "--state-dir", d, "--listen", f"127.0.0.1:{port}",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "listening" in line, line
            pid = proc.pid  # ip netns exec execs: the daemon's pid
            time.sleep(5.0)
            wait_quiet(*QUIET)
            c0, t0 = proc_ticks(pid), time.monotonic()
            time.sleep(seconds)
            c1, t1 = proc_ticks(pid), time.monotonic()
            idle = {
                "cpu_percent_of_core": round(100.0 * (c1 - c0) / CLK_TCK / (t1 - t0), 3),
                "pss_mb": round(pss_kb(pid) / 1024, 1),
            }
            log(f"  daemon idle: {idle}")
            c0, t0 = proc_ticks(pid), time.monotonic()
            gen = storm(ns, int(rate * seconds), rate, workers=1)
            c1, t1 = proc_ticks(pid), time.monotonic()
            busy = {
                "rate": rate,
                "achieved_per_s": gen["achieved_per_s"],
                "conns": gen["conns"],
                "cpu_percent_of_core": round(100.0 * (c1 - c0) / CLK_TCK / (t1 - t0), 2),
                "pss_mb": round(pss_kb(pid) / 1024, 1),
            }
            time.sleep(6.0)  # the store's flush
            pss_after = round(pss_kb(pid) / 1024, 1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        db = sqlite3.connect(f"{d}/netwarden.db")
        try:
            cols = {r[1] for r in db.execute("PRAGMA table_info(flows)")}
            q = "SELECT count(*) FROM flows WHERE comm = ? AND dport = ?"
            if "event" in cols:
                q += " AND event = 'end'"
            stored = db.execute(q, (COMM, PORT)).fetchone()[0]
        finally:
            db.close()
        busy["flows_stored"] = stored
        busy["pss_mb_after"] = pss_after
        log(f"  daemon at {rate}/s: {busy}")
    return {"idle": idle, "busy": busy}


# ------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--parts", default="baseline,ebpf,kernel,conntrack,daemon")
    p.add_argument("--rates", default="5000,10000,20000,30000,40000,50000,60000,0")
    p.add_argument("--conntrack-rates", default="1000,5000,10000,20000")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per step")
    p.add_argument("--profile-rate", type=int, default=20000, help="0: no profiled step")
    p.add_argument("--kernel-rate", type=int, default=20000)
    p.add_argument("--daemon-seconds", type=float, default=30.0)
    p.add_argument("--daemon-rate", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="short steps, fewer rates")
    p.add_argument("--ring-mb", type=int, default=4, help="ring buffer MiB (ebpf steps)")
    p.add_argument("--quiet-wait", type=float, default=120.0)
    p.add_argument("--quiet-busy", type=float, default=0.15)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        log("run as root")
        return 3
    if args.quick:
        args.rates, args.conntrack_rates = "10000,0", "5000"
        args.duration, args.daemon_seconds = 2.0, 5.0
    QUIET[:] = [args.quiet_wait, args.quiet_busy]
    RING[:] = [args.ring_mb]
    parts = set(args.parts.split(","))
    rates = [int(x) for x in args.rates.split(",")]
    build_generator()
    build_object()
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args)}
    if "baseline" in parts:
        res["baseline"] = baseline(300_000)
    if "ebpf" in parts:
        res["ebpf"] = ebpf_steps(rates, args.duration, args.profile_rate)
    if "kernel" in parts:
        res["kernel"] = kernel_cost(args.kernel_rate, args.duration)
    if "conntrack" in parts:
        crates = [int(x) for x in args.conntrack_rates.split(",")]
        res["conntrack"] = conntrack_steps(crates, args.duration)
    if "daemon" in parts:
        res["daemon"] = daemon(args.daemon_seconds, args.daemon_rate)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "attribution.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "args"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
