#!/usr/bin/env python3
"""netwarden's capture benchmark (``make bench``).

Two parts, both written to ``bench/out/results.json`` and printed as tables:

live
    Two network namespaces joined by a veth pair. In the receiving namespace ``tcpdump -i
    VETH -w /dev/null -B 65536`` and ``netwarden sniff -i VETH --events end`` capture the
    same packets at the same time, while ``bench/gen/udpblast.c`` (built here with gcc into
    ``bench/out/``) offers UDP from the other namespace at a stepped series of rates. Each
    step gets a fresh pair of capturers, stopped with SIGINT, which makes both print their
    kernel counters. Per capturer and step: packets captured, packets dropped by the
    kernel, CPU time (``/proc/PID/task/*/schedstat``, nanoseconds; user/sys split from
    ``/proc/PID/stat``) over the sending window plus the drain → CPU µs per packet.

micro
    In-process: a synthetic pcap (written with ``netwarden.wire.pcapwriter``, read back with
    ``netwarden.wire.pcapfile``) is fed in ring-sized batches of memoryviews, and
    ``time.process_time`` gives µs per packet for the loop alone, decode alone, and decode +
    flow update (``PacketCounter.feed``, the path ``sniff`` runs).

Options worth knowing: ``--profile`` (cProfile of the micro path, plus one extra live step
with py-spy sampling netwarden), ``--breakdown`` (extra live steps with ``ringprobe.py``:
ring only, + decode, + flow update, gc off, SniffSource), ``--retries``/``--others-max``
(repeat a step the generator fell short in or other people's processes disturbed: this
machine is shared), ``--no-pin``.

Run as root. Nothing here asserts a timing; the figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
GEN_SRC = BENCH / "gen" / "udpblast.c"
GEN_BIN = OUT / "udpblast"
VENV_BIN = ROOT / ".venv" / "bin"

# Frames go to a MAC nobody has: the receiving stack drops them (PACKET_OTHERHOST) right
# after the packet taps, so the receiving side's cost is the capture alone, not a UDP stack
# answering with ICMP port unreachables.
TX_MAC = "02:6e:77:00:00:01"
RX_MAC = "02:6e:77:00:00:02"
DST_MAC = "02:6e:77:00:00:99"
TX_IP = "10.213.0.1"
RX_IP = "10.213.0.2"

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


# ------------------------------------------------------------------------------ machine


def machine_info() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])

    def version(argv: Sequence[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError:
            return "missing"
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr) else ""

    commit = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD", check=False).strip()
    dirty = sh("git", "-C", str(ROOT), "status", "--porcelain", "--", "src", check=False)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": model,
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tcpdump": version(["tcpdump", "--version"]),
        "libpcap": _libpcap_version(),
        "gcc": version(["gcc", "--version"]),
        "git_commit": commit or "(no commit yet)",
        "src_uncommitted": dirty.splitlines(),
        "src_digest": src_digest(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


# The modules `netwarden sniff` runs per packet or per batch.
MEASURED = (
    "cli.py",
    "events.py",
    "output.py",
    "capture/afpacket.py",
    "capture/packets.py",
    "stats/flows.py",
    "stats/packets.py",
    "wire/packet.py",
)


def src_digest() -> str:
    """A digest of the measured modules: the same at the start and the end of a run, or the
    code changed under the benchmark (other people work in this tree)."""
    h = hashlib.sha256()
    for name in MEASURED:
        path = ROOT / "src" / "netwarden" / name
        h.update(name.encode())
        h.update(path.read_bytes() if path.exists() else b"-")
    return h.hexdigest()[:16]


def _libpcap_version() -> str:
    r = subprocess.run(["tcpdump", "--version"], capture_output=True, text=True, check=False)
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("libpcap"):
            return line.strip()
    return ""


def cpu_times() -> list[tuple[int, int]]:
    """Per CPU: (busy, total) jiffies from /proc/stat."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d", line):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]  # idle + iowait
                total = sum(v[:8])  # steal included, guest already in user
                out.append((total - idle, total))
    return out


def busy_fractions(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[float]:
    return [
        round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else 0.0
        for (b0, t0), (b1, t1) in zip(a, b, strict=True)
    ]


def wait_quiet(limit: float, busy_max: float) -> list[float]:
    """Wait (at most ``limit`` s) until every CPU was at most ``busy_max`` busy over 1 s.

    Other people's work on a 2-vCPU machine skews a capture benchmark; the busy fractions of
    the last sample are returned and recorded either way.
    """
    deadline = time.monotonic() + limit
    while True:
        a = cpu_times()
        time.sleep(1.0)
        busy = busy_fractions(a, cpu_times())
        if max(busy) <= busy_max or time.monotonic() >= deadline:
            return busy
        log(f"  waiting for a quieter machine (CPUs busy {busy})")


# ------------------------------------------------------------------------------ process CPU


def all_proc_ticks() -> dict[int, tuple[int, int]]:
    """Every process's user+sys clock ticks and parent pid."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(name)] = (int(fields[11]) + int(fields[12]), int(fields[1]))
    return out


def others_cpu(before: dict[int, tuple[int, int]], ours: set[int]) -> dict[str, float]:
    """CPU seconds used since ``before`` by processes that are not ours: other people's work
    (kernel threads apart: ksoftirqd may be carrying our own packets). A lower bound: a
    process that ended in between is missed."""
    other = kthreads = 0
    for pid, (ticks, ppid) in all_proc_ticks().items():
        if pid in ours:
            continue
        d = ticks - before.get(pid, (0, 0))[0]
        if pid == 2 or ppid == 2:
            kthreads += d
        else:
            other += d
    return {"others_s": other / CLK_TCK, "kernel_threads_s": kthreads / CLK_TCK}


@dataclass
class ProcCPU:
    """A process's CPU time: all its threads' run time (ns) and its user/sys ticks."""

    run_ns: int
    utime: int
    stime: int

    @classmethod
    def read(cls, pid: int) -> ProcCPU:
        run = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    run += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a thread that just ended; its time is in the process's stat
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return cls(run, int(fields[11]), int(fields[12]))

    def minus(self, other: ProcCPU) -> dict[str, float]:
        return {
            "cpu_s": (self.run_ns - other.run_ns) / 1e9,
            "user_s": (self.utime - other.utime) / CLK_TCK,
            "sys_s": (self.stime - other.stime) / CLK_TCK,
        }


# ------------------------------------------------------------------------------ test bed


class Testbed:
    """Two fresh namespaces joined by a veth pair; everything goes in ``close()``."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns_tx = f"nwbench-tx-{tag}"
        self.ns_rx = f"nwbench-rx-{tag}"
        self.veth_tx = f"nwbt{tag}"  # IFNAMSIZ: at most 15 characters
        self.veth_rx = f"nwbr{tag}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._made: list[str] = []

    def __enter__(self) -> Testbed:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        for ns in (self.ns_tx, self.ns_rx):
            sh("ip", "netns", "add", ns)
            self._made.append(ns)
            # No IPv6 (router solicitations, DAD): the only traffic is the generator's.
            for key in ("all", "default"):
                sh("ip", "netns", "exec", ns, "sysctl", "-qw",
                   f"net.ipv6.conf.{key}.disable_ipv6=1")  # fmt: skip
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", self.veth_tx, "netns", self.ns_tx, "address", TX_MAC,
           "type", "veth", "peer", "name", self.veth_rx, "netns", self.ns_rx,
           "address", RX_MAC)  # fmt: skip
        sh("ip", "-n", self.ns_tx, "addr", "add", f"{TX_IP}/24", "dev", self.veth_tx)
        sh("ip", "-n", self.ns_rx, "addr", "add", f"{RX_IP}/24", "dev", self.veth_rx)
        sh("ip", "-n", self.ns_tx, "link", "set", self.veth_tx, "up")
        sh("ip", "-n", self.ns_rx, "link", "set", self.veth_rx, "up")

    def spawn(
        self, ns: str, argv: Sequence[str], stdout: Any, stderr: Any
    ) -> subprocess.Popen[bytes]:
        # ip netns exec and taskset both exec: the Popen's pid is the measured process.
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=stdout, stderr=stderr)
        self.procs.append(p)
        return p

    def rx_stats(self) -> dict[str, int]:
        """The receiving veth's counters: what it handed to the packet taps."""
        raw = sh("ip", "-n", self.ns_rx, "-s", "-j", "link", "show", "dev", self.veth_rx)
        rx: dict[str, int] = json.loads(raw)[0]["stats64"]["rx"]
        return rx

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        self.procs.clear()
        for ns in reversed(self._made):  # deleting a namespace deletes its veth end
            sh("ip", "netns", "del", ns, check=False)
        self._made.clear()


# ------------------------------------------------------------------------------ live


def build_generator() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if GEN_BIN.exists() and GEN_BIN.stat().st_mtime >= GEN_SRC.stat().st_mtime:
        return
    log(f"building {GEN_BIN.relative_to(ROOT)}")
    sh("gcc", "-O2", "-Wall", "-Wextra", "-o", str(GEN_BIN), str(GEN_SRC))


_COUNTER = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel)", re.M)


def parse_counters(text: str) -> dict[str, int]:
    return {m.group(2): int(m.group(1)) for m in _COUNTER.finditer(text)}


def wait_for(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{path.name}: no {needle!r}: {path.read_text(errors='replace')[-500:]}")


def wait_idle(pids: Sequence[int], min_wait: float, limit: float) -> float:
    """Wait until the capturers stop using CPU (they have caught up with the ring)."""
    t0 = time.monotonic()
    time.sleep(min_wait)
    last = [ProcCPU.read(p).run_ns for p in pids]
    while time.monotonic() - t0 < limit:
        time.sleep(0.3)
        now = [ProcCPU.read(p).run_ns for p in pids]
        if all(b - a < 3_000_000 for a, b in zip(last, now, strict=True)):
            break
        last = now
    return time.monotonic() - t0


@dataclass
class LiveConfig:
    rates: list[int]
    duration: float
    flows: int
    churn: int
    size: int
    batch: int
    pin: bool
    quiet_wait: float
    quiet_busy: float
    netwarden: list[str] = field(default_factory=list)
    py_spy: str | None = None
    profile_rate: int | None = None
    breakdown_rate: int | None = None
    retries: int = 2
    others_max: float = 0.1


def offer(tb: Testbed, cfg: LiveConfig, rate: int) -> dict[str, Any]:
    """Run the generator for one step; its JSON report."""
    gen_cpu = ["taskset", "-c", "0"] if cfg.pin else []
    gen = tb.spawn(
        tb.ns_tx,
        [*gen_cpu, str(GEN_BIN), "-i", tb.veth_tx, "-r", str(rate), "-d", str(cfg.duration),
         "-s", str(cfg.size), "-f", str(cfg.flows), "-c", str(cfg.churn), "-b", str(cfg.batch),
         "--src-mac", TX_MAC, "--dst-mac", DST_MAC, "--src-ip", TX_IP, "--dst-ip", RX_IP],
        subprocess.PIPE,
        subprocess.PIPE,
    )  # fmt: skip
    gout, gerr = gen.communicate(timeout=cfg.duration * 4 + 30)
    if gen.returncode != 0:
        raise RuntimeError(f"udpblast: exit {gen.returncode}: {gerr.decode().strip()}")
    report: dict[str, Any] = json.loads(gout)
    return report


def run_probe(tb: Testbed, cfg: LiveConfig, rate: int, mode: str) -> dict[str, Any]:
    """One breakdown step: bench/ringprobe.py alone on the same offered traffic."""
    cap_cpu = ["taskset", "-c", "1"] if cfg.pin else []
    err_path = OUT / "logs" / f"probe-{rate}-{mode}.stderr"
    err_path.parent.mkdir(parents=True, exist_ok=True)
    busy_before = wait_quiet(cfg.quiet_wait, cfg.quiet_busy)
    with open(err_path, "wb") as err:
        p = tb.spawn(
            tb.ns_rx,
            [*cap_cpu, sys.executable, str(BENCH / "ringprobe.py"), tb.veth_rx, mode],
            subprocess.PIPE,
            err,
        )
    wait_for(err_path, "ready", p, 30.0)
    time.sleep(1.0)
    ticks0 = all_proc_ticks()
    t0 = time.monotonic()
    generator = offer(tb, cfg, rate)
    wait_idle([p.pid], 1.0, 15.0)
    others = others_cpu(ticks0, {os.getpid(), *(q.pid for q in tb.procs)})
    window = time.monotonic() - t0
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    result: dict[str, Any] = json.loads(out)
    result.update(
        offered_pps=rate,
        sent_pps=round(generator["pps"]),
        generator_max_late_us=generator["max_late_us"],
        cpu_busy_before=busy_before,
        others_share=round(others["others_s"] / window, 3),
    )
    return result


def run_step(tb: Testbed, cfg: LiveConfig, rate: int, spy: bool = False) -> dict[str, Any]:
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cap_cpu = ["taskset", "-c", "1"] if cfg.pin else []
    gen_cpu = ["taskset", "-c", "0"] if cfg.pin else []
    capturers = {
        "tcpdump": [*cap_cpu, "tcpdump", "-i", tb.veth_rx, "-w", "/dev/null", "-B", "65536"],
        "netwarden": [
            *cap_cpu,
            *cfg.netwarden,
            "sniff",
            "-i",
            tb.veth_rx,
            "--events",
            "end",
            "--stats",
        ],
    }
    ready = {"tcpdump": "listening on", "netwarden": "listening on"}
    busy_before = wait_quiet(cfg.quiet_wait, cfg.quiet_busy)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    errs: dict[str, Path] = {}
    for name, argv in capturers.items():
        errs[name] = logs / f"{rate}-{name}.stderr"
        with open(errs[name], "wb") as err:
            procs[name] = tb.spawn(tb.ns_rx, argv, subprocess.DEVNULL, err)
    for name, p in procs.items():
        wait_for(errs[name], ready[name], p, 30.0)
    time.sleep(1.0)  # let start-up (imports, ring set-up) finish outside the window

    rx0 = tb.rx_stats()
    cpu0 = {n: ProcCPU.read(p.pid) for n, p in procs.items()}
    sys0 = cpu_times()
    ticks0 = all_proc_ticks()
    spy_raw = OUT / f"py-spy-{rate}.raw"
    if spy:
        assert cfg.py_spy is not None
        # sampling without stopping the process (--nonblocking), itself on the generator's CPU
        spy_proc = subprocess.Popen(
            [*gen_cpu, cfg.py_spy, "record", "--pid", str(procs["netwarden"].pid),
             "--nonblocking", "-r", "500", "-f", "raw", "-o", str(spy_raw),
             "-d", str(max(1, int(cfg.duration)))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        tb.procs.append(spy_proc)
    t0 = time.monotonic()
    generator = offer(tb, cfg, rate)
    send_s = time.monotonic() - t0
    drain_s = wait_idle([p.pid for p in procs.values()], 1.5, 15.0)
    cpu1 = {n: ProcCPU.read(p.pid) for n, p in procs.items()}
    sys1 = cpu_times()
    others = others_cpu(ticks0, {os.getpid(), *(p.pid for p in tb.procs)})
    rx1 = tb.rx_stats()

    for p in procs.values():
        p.send_signal(signal.SIGINT)
    for name, p in procs.items():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise RuntimeError(f"{name} did not stop on SIGINT") from None

    delivered = rx1["packets"] - rx0["packets"]
    step: dict[str, Any] = {
        "offered_pps": rate,
        "generator": generator,
        "sent": generator["sent"],
        "sent_pps": round(generator["pps"]),
        "delivered": delivered,
        "veth_rx_dropped": rx1["dropped"] - rx0["dropped"],
        "window_s": round(send_s + drain_s, 3),
        "cpu_busy_before": busy_before,
        "cpu_busy_during": busy_fractions(sys0, sys1),
        **others,
        "others_share": round(others["others_s"] / (send_s + drain_s), 3),
    }
    for name, p in procs.items():
        text = errs[name].read_text(errors="replace")
        counters = parse_counters(text)
        if "captured" not in counters or "dropped by kernel" not in counters:
            raise RuntimeError(f"{name}: no counters in its output: {text[-500:]}")
        cpu = cpu1[name].minus(cpu0[name])
        captured = counters["captured"]
        step[name] = {
            "exit": p.returncode,
            "captured": captured,
            "dropped": counters["dropped by kernel"],
            "received_by_filter": counters.get("received by filter"),
            **{k: round(v, 4) for k, v in cpu.items()},
            "us_per_packet": round(cpu["cpu_s"] * 1e6 / captured, 4) if captured else None,
            # of one CPU while the generator was sending (the drain adds little CPU)
            "cpu_share": round(cpu["cpu_s"] / generator["elapsed"], 3),
        }
        if name == "netwarden":
            step[name]["stats"] = text.strip().splitlines()[1:]
    if spy:
        spy_proc.wait(30)
        step["py_spy"] = profile_breakdown(spy_raw, step["netwarden"]["us_per_packet"] or 0.0)
    nw, td = step["netwarden"], step["tcpdump"]
    step["cpu_ratio"] = (
        round(nw["us_per_packet"] / td["us_per_packet"], 1)
        if nw["us_per_packet"] and td["us_per_packet"]
        else None
    )
    return step


def profile_breakdown(raw: Path, us_per_packet: float, top: int = 25) -> dict[str, Any]:
    """py-spy's raw stacks → shares of the sampled (non-idle) time, by function (inclusive)
    and by source line (where the sample was), scaled to µs per packet."""
    by_func: dict[str, int] = {}
    by_line: dict[str, int] = {}
    total = 0
    if not raw.exists():
        return {"error": f"no {raw.name}"}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf = re.sub(r"\((?:.*/)?(netwarden/.*|[^/]*)\)$", r"(\1)", frames[-1])
        by_line[leaf] = by_line.get(leaf, 0) + n
        seen = set()
        for fr in frames:
            fn = re.sub(r"\((?:.*/)?(netwarden/.*|[^/]*?)(?::\d+)?\)$", r"(\1)", fr)
            if fn not in seen:
                seen.add(fn)
                by_func[fn] = by_func.get(fn, 0) + n

    def rows(d: dict[str, int]) -> list[dict[str, Any]]:
        out = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [
            {"where": k, "share": round(v / total, 3), "us_per_packet": round(
                v / total * us_per_packet, 3)}
            for k, v in out
        ]  # fmt: skip

    return {"samples": total, "by_function": rows(by_func), "by_line": rows(by_line)}


def clean(step: dict[str, Any], cfg: LiveConfig) -> bool:
    """A step counts if the generator held its rate and others used little CPU meanwhile."""
    return bool(
        step["sent_pps"] >= 0.97 * step["offered_pps"] and step["others_share"] <= cfg.others_max
    )


def attempts(run: Callable[[], dict[str, Any]], cfg: LiveConfig) -> dict[str, Any]:
    """Run a step until it is clean (at most 1 + ``cfg.retries`` times); the last attempt,
    with the earlier ones inside it."""
    earlier: list[dict[str, Any]] = []
    while True:
        step = run()
        step["clean"] = clean(step, cfg)
        if step["clean"] or len(earlier) >= cfg.retries:
            step["attempt"] = len(earlier) + 1
            step["earlier_attempts"] = earlier
            return step
        log(
            f"  not clean (sent {step['sent_pps']} pps, others used "
            f"{step['others_share']:.0%} of a CPU): again"
        )
        earlier.append(step)


def run_live(cfg: LiveConfig) -> dict[str, Any]:
    build_generator()
    steps = []
    with Testbed() as tb:
        log(f"test bed: {tb.ns_tx}/{tb.veth_tx} -> {tb.ns_rx}/{tb.veth_rx}")
        for rate in cfg.rates:
            log(f"step: {rate} pps offered for {cfg.duration} s")
            step = attempts(lambda r=rate: run_step(tb, cfg, r), cfg)  # type: ignore[misc]
            steps.append(step)
            log(
                f"  sent {step['sent_pps']} pps; tcpdump {step['tcpdump']['captured']} "
                f"captured, {step['tcpdump']['dropped']} dropped, "
                f"{step['tcpdump']['us_per_packet']} µs/pkt; netwarden "
                f"{step['netwarden']['captured']} captured, {step['netwarden']['dropped']} "
                f"dropped, {step['netwarden']['us_per_packet']} µs/pkt"
            )

        profiled = None
        if cfg.profile_rate and cfg.py_spy:
            log(f"profiling step: {cfg.profile_rate} pps, py-spy on netwarden (not in the table)")
            profiled = run_step(tb, cfg, cfg.profile_rate, spy=True)
        breakdown = []
        if cfg.breakdown_rate:
            for mode in ("count", "decode", "feed", "feed-nogc", "sniff"):
                log(f"breakdown step: {cfg.breakdown_rate} pps, ringprobe {mode} alone")
                breakdown.append(
                    attempts(
                        lambda m=mode, r=cfg.breakdown_rate: run_probe(tb, cfg, r, m),  # type: ignore[misc]
                        cfg,
                    )
                )
                log(f"  {breakdown[-1]}")

    def held(name: str) -> int:
        # the rate the generator really achieved, not the one asked for
        ok = [
            s["sent_pps"]
            for s in steps
            if s[name]["dropped"] == 0 and s[name]["captured"] >= s["delivered"]
        ]
        return max(ok, default=0)

    return {
        "config": {
            "rates": cfg.rates,
            "duration_s": cfg.duration,
            "flows": cfg.flows,
            "churn_per_s": cfg.churn,
            "frame_bytes": cfg.size,
            "batch": cfg.batch,
            "pinned": "generator on CPU 0, both capturers on CPU 1" if cfg.pin else "no",
            "tcpdump": "tcpdump -i VETH -w /dev/null -B 65536",
            "netwarden": "netwarden sniff -i VETH --events end --stats (stdout /dev/null)",
        },
        "steps": steps,
        "held_without_drops_pps": {"tcpdump": held("tcpdump"), "netwarden": held("netwarden")},
        "profiled_step": profiled,
        "breakdown": breakdown,
    }


# ------------------------------------------------------------------------------ micro


def _udp_corpus(n: int, flows: int, churn: int, rate: int) -> list[tuple[float, bytes]]:
    """What udpblast sends: 60-byte Ethernet/IPv4/UDP frames, a sliding window of flows."""
    import struct

    t0 = 1_700_000_000.0
    out = []
    payload = bytes((ord("a") + i % 26) for i in range(60 - 42))
    src_base = int.from_bytes(bytes(map(int, TX_IP.split("."))), "big")
    dst = bytes(map(int, RX_IP.split(".")))
    eth = bytes.fromhex(DST_MAC.replace(":", "") + TX_MAC.replace(":", "")) + b"\x08\x00"
    for i in range(n):
        t = i / rate
        k = int(t * churn) + i % flows
        src = (src_base + k // 64000).to_bytes(4, "big")
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, i & 0xFFFF, 0x4000, 64, 17, 0, src, dst)
        udp = struct.pack("!HHHH", 1024 + k % 64000, 9, 26, 0)
        out.append((t0 + t, eth + ip + udp + payload))
    return out


def _tcp_corpus(n: int, conns_open: int, rate: int) -> list[tuple[float, bytes]]:
    """TCP connections (v4 and one in four v6): SYN, SYN+ACK, ACK, 6 data, FIN, FIN, ACK;
    ``conns_open`` interleaved at a time, so flows are created and closed all along."""
    import struct

    t0 = 1_700_000_000.0
    per_conn = [
        (0, 0x02, 0),
        (1, 0x12, 0),
        (0, 0x10, 0),
        (0, 0x18, 200),
        (1, 0x10, 0),
        (1, 0x18, 1200),
        (0, 0x10, 0),
        (1, 0x18, 1200),
        (0, 0x10, 0),
        (0, 0x11, 0),
        (1, 0x11, 0),
        (0, 0x10, 0),
    ]
    out: list[tuple[float, bytes]] = []
    conn = 0
    slots = [0] * conns_open  # next packet index of the connection in each slot
    ids = list(range(conns_open))
    i = 0
    while len(out) < n:
        s = i % conns_open
        step = slots[s]
        if step == len(per_conn):
            conn += 1
            ids[s] = conns_open + conn
            slots[s] = step = 0
        cid = ids[s]
        reply, flags, plen = per_conn[step]
        slots[s] += 1
        v6 = cid % 4 == 3
        cport = 20000 + cid % 40000
        a = (b"\x20\x01\x0d\xb8" + bytes(10) + cid.to_bytes(2, "big")) if v6 else (
            bytes([10, 1, (cid >> 8) & 255, cid & 255])
        )  # fmt: skip
        b = (b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01") if v6 else bytes([10, 2, 0, 1])
        src, dst, sport, dport = (b, a, 443, cport) if reply else (a, b, cport, 443)
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, flags, 65535, 0, 0)
        payload = bytes(plen)
        if v6:
            l3 = struct.pack("!IHBB16s16s", 0x60000000, 20 + plen, 6, 64, src, dst)
            ethertype = b"\x86\xdd"
        else:
            l3 = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 40 + plen, i & 0xFFFF, 0x4000, 64, 6, 0, src, dst
            )
            ethertype = b"\x08\x00"
        eth = bytes.fromhex(RX_MAC.replace(":", "") + TX_MAC.replace(":", "")) + ethertype
        out.append((t0 + i / rate, eth + l3 + tcp + payload))
        i += 1
    return out


def _batches(path: Path, size: int) -> list[list[tuple[Any, ...]]]:
    """The pcap read back as the ring hands packets over: lists of
    (ts, memoryview, wirelen, linktype, ifindex, segs)."""
    from netwarden.wire.pcapfile import open_capture

    reader = open_capture(str(path))
    out: list[list[tuple[Any, ...]]] = [[]]
    for ts, linktype, data, wirelen, ifindex in reader:
        if len(out[-1]) >= size:
            out.append([])
        out[-1].append((ts, data, wirelen, linktype, ifindex, 1))
    return out


def _time(fn: Callable[[], None], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return out


def micro_case(
    name: str, packets: list[tuple[float, bytes]], repeat: int, batch: int, profile: bool
) -> dict[str, Any]:
    from netwarden.stats.flows import FlowTable
    from netwarden.stats.packets import PacketCounter
    from netwarden.wire.packet import decoder_for
    from netwarden.wire.pcapwriter import write_pcap

    path = OUT / f"micro-{name}.pcap"
    write_pcap(path, 1, packets)
    batches = _batches(path, batch)
    n = sum(len(b) for b in batches)
    decode = decoder_for(1)

    def loop_only() -> None:
        for b in batches:
            for _ts, _data, _wirelen, _lt, _ifi, _segs in b:
                pass

    def decode_only() -> None:
        for b in batches:
            for _ts, data, wirelen, _lt, _ifi, _segs in b:
                decode(data, wirelen)

    decoded = [[(ts, decode(data, wirelen), ifi) for ts, data, wirelen, _lt, ifi, _s in b]
               for b in batches]  # fmt: skip

    def flow_only() -> None:
        # FlowTable.packet on tuples decoded beforehand: the flow update's share
        pending: list[object] = []
        table = FlowTable(pending.append, local_addrs=[bytes(map(int, RX_IP.split(".")))])
        packet = table.packet
        for b in decoded:
            for ts, r, ifi in b:
                packet(ts, r, ifi)
            table.expire(b[-1][0])
            pending.clear()

    tables: list[tuple[FlowTable, PacketCounter]] = []

    def decode_flow() -> None:
        # what SniffSource does per ring block: feed the block, expire, hand on the events
        pending: list[object] = []
        table = FlowTable(pending.append, local_addrs=[bytes(map(int, RX_IP.split(".")))])
        counter = PacketCounter(table)
        for b in batches:
            counter.feed(b)
            table.expire(b[-1][0])
            pending.clear()
        tables.append((table, counter))

    def no_gc(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            gc.disable()
            try:
                fn()
            finally:
                gc.enable()

        return run

    results: dict[str, Any] = {"packets": n, "batch": batch}
    for label, fn in (
        ("loop", loop_only),
        ("decode", decode_only),
        ("flow", flow_only),
        ("decode_flow", decode_flow),
        ("decode_flow_nogc", no_gc(decode_flow)),
    ):
        fn()  # warm-up
        gc.collect()
        times = _time(fn, repeat)
        results[label] = {
            "us_per_packet_median": round(statistics.median(times) * 1e6 / n, 3),
            "us_per_packet_min": round(min(times) * 1e6 / n, 3),
            "runs_s": [round(t, 4) for t in times],
        }
    table, counter = tables[-1]
    results["check"] = {
        "ip_packets": table.packets,
        "flows_total": table.flows_total,
        "flows_open_at_end": len(table.flows),
        "other": counter.other,
        "malformed": counter.malformed,
    }
    if profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.runcall(decode_flow)
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
        (OUT / f"profile-{name}.txt").write_text(s.getvalue())
        results["profile"] = _profile_rows(prof, n)
    return results


def _profile_rows(prof: Any, n: int) -> list[dict[str, Any]]:
    """cProfile's own time per function, per packet (cProfile inflates calls: read the
    shares, not the absolute µs)."""
    import pstats

    st = pstats.Stats(prof)
    rows = []
    total = 0.0
    for (fname, line, func), (_cc, nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        total += tt
        rows.append((tt, nc, f"{Path(fname).name}:{line}({func})"))
    rows.sort(reverse=True)
    return [
        {
            "function": where,
            "calls": nc,
            "share": round(tt / total, 3),
            "us_per_packet_profiled": round(tt * 1e6 / n, 3),
        }
        for tt, nc, where in rows[:10]
    ]


def run_micro(packets: int, repeat: int, batch: int, profile: bool) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    OUT.mkdir(parents=True, exist_ok=True)
    cases = {
        "udp-1000-flows": _udp_corpus(packets, 1000, 200, 300_000),
        "tcp-conns": _tcp_corpus(packets, 2000, 300_000),
    }
    return {name: micro_case(name, pk, repeat, batch, profile) for name, pk in cases.items()}


# ------------------------------------------------------------------------------ report


def print_tables(results: dict[str, Any]) -> None:
    live = results.get("live")
    if live:
        print()
        print(
            "| offered pps | sent pps | delivered | tcpdump captured / dropped | netwarden "
            "captured / dropped | tcpdump µs/pkt | netwarden µs/pkt | ratio | others' CPU "
            "| attempt |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for s in live["steps"]:
            td, nw = s["tcpdump"], s["netwarden"]
            mark = f"{s['attempt']}" + ("" if s["clean"] else " (not clean)")
            print(
                f"| {s['offered_pps']:,} | {s['sent_pps']:,} | {s['delivered']:,} "
                f"| {td['captured']:,} / {td['dropped']:,} | {nw['captured']:,} / "
                f"{nw['dropped']:,} | {td['us_per_packet']} | {nw['us_per_packet']} | "
                f"{s['cpu_ratio']}× | {s['others_share']:.0%} | {mark} |"
            )
        h = live["held_without_drops_pps"]
        print(
            f"\nheld without drops (highest sent rate): tcpdump {h['tcpdump']:,} pps, "
            f"netwarden {h['netwarden']:,} pps"
        )
        prof = live.get("profiled_step")
        if prof and "py_spy" in prof:
            ps = prof["py_spy"]
            nw = prof["netwarden"]
            print(
                f"\nprofiled step ({prof['offered_pps']:,} pps offered, py-spy attached): "
                f"netwarden {nw['captured']:,} captured, {nw['dropped']:,} dropped, "
                f"{nw['us_per_packet']} µs/pkt; {ps.get('samples', 0)} samples"
            )
            for title, key in (("function (inclusive)", "by_function"), ("line", "by_line")):
                print(f"  by {title}:")
                for r in ps.get(key, [])[:15]:
                    print(f"    {r['share']:6.1%}  {r['us_per_packet']:6.3f} µs  {r['where']}")
        if live.get("breakdown"):
            print("\nbreakdown (ringprobe alone, same offered traffic):")
            print("| mode | sent pps | packets | drops | µs/pkt | others' CPU | attempt |")
            print("|---|---:|---:|---:|---:|---:|---|")
            for b in live["breakdown"]:
                mark = f"{b['attempt']}" + ("" if b["clean"] else " (not clean)")
                print(
                    f"| {b['mode']} | {b['sent_pps']:,} | {b['packets']:,} | {b['drops']:,} "
                    f"| {b['us_per_packet']} | {b['others_share']:.0%} | {mark} |"
                )
    micro = results.get("micro")
    if micro:
        print()
        print(
            "| corpus | packets | loop µs/pkt | decode µs/pkt | flow update µs/pkt "
            "| decode + flow (feed) µs/pkt | the same, gc off |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, m in micro.items():
            print(
                f"| {name} | {m['packets']:,} | {m['loop']['us_per_packet_median']} | "
                f"{m['decode']['us_per_packet_median']} | "
                f"{m['flow']['us_per_packet_median']} | "
                f"{m['decode_flow']['us_per_packet_median']} | "
                f"{m['decode_flow_nogc']['us_per_packet_median']} |"
            )
        for name, m in micro.items():
            if "profile" in m:
                print(f"\nprofile of decode + flow, {name} (cProfile; shares of own time):")
                for r in m["profile"]:
                    print(f"  {r['share']:6.1%}  {r['calls']:>9}  {r['function']}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--rates",
        default="100000,200000,300000,400000,500000",
        help="offered packets per second, one step each (default %(default)s)",
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds per step")
    p.add_argument("--flows", type=int, default=1000, help="flows active at a time")
    p.add_argument("--churn", type=int, default=200, help="flows replaced per second")
    p.add_argument("--size", type=int, default=60, help="frame bytes (without FCS)")
    p.add_argument("--batch", type=int, default=32, help="frames per sendmmsg")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each step wait up to this long for a quiet machine",
    )
    p.add_argument("--quiet-busy", type=float, default=0.15, help="'quiet': CPUs busy at most")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="run a step again (at most this often) when the generator fell short of its "
        "rate or other processes used more than --others-max of a CPU during it",
    )
    p.add_argument("--others-max", type=float, default=0.1, help="see --retries")
    p.add_argument("--micro-packets", type=int, default=300_000)
    p.add_argument("--micro-repeat", type=int, default=5)
    p.add_argument("--micro-batch", type=int, default=4096, help="packets per fed batch")
    p.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the micro decode + flow path, and one extra live step with py-spy "
        "sampling netwarden (py-spy from the venv; pip install py-spy)",
    )
    p.add_argument("--profile-rate", type=int, default=300_000, help="that step's pps")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="extra live steps with bench/ringprobe.py alone: ring only, + decode, + flow "
        "update, the same without gc, SniffSource",
    )
    p.add_argument("--skip-live", action="store_true")
    p.add_argument("--skip-micro", action="store_true")
    p.add_argument("--out", type=Path, default=OUT / "results.json")
    return p.parse_args(argv)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the test bed's clean-up runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {"machine": machine_info()}
    if not args.skip_micro:
        log("micro: decode and flow update in-process")
        busy_before = wait_quiet(args.quiet_wait, args.quiet_busy)
        a = cpu_times()
        results["micro"] = run_micro(
            args.micro_packets, args.micro_repeat, args.micro_batch, args.profile
        )
        results["micro_cpu_busy"] = {
            "before": busy_before,
            "during": busy_fractions(a, cpu_times()),
        }
    if not args.skip_live:
        if os.geteuid() != 0:
            log("bench: the live part needs root (namespaces, AF_PACKET); --skip-live")
            return 1
        missing = [t for t in ("ip", "tcpdump", "gcc", "taskset") if not shutil.which(t)]
        if missing:
            log(f"bench: missing {', '.join(missing)} (scripts/install-system.sh installs them)")
            return 1
        netwarden = VENV_BIN / "netwarden"
        if not netwarden.exists():
            log(f"bench: no {netwarden} (make venv)")
            return 1
        if args.pin and (os.cpu_count() or 1) < 2:
            args.pin = False
        cfg = LiveConfig(
            rates=[int(r) for r in args.rates.split(",")],
            duration=args.duration,
            flows=args.flows,
            churn=args.churn,
            size=args.size,
            batch=args.batch,
            pin=args.pin,
            quiet_wait=args.quiet_wait,
            quiet_busy=args.quiet_busy,
            netwarden=[str(netwarden)],
            py_spy=str(VENV_BIN / "py-spy") if (VENV_BIN / "py-spy").exists() else None,
            profile_rate=args.profile_rate if args.profile else None,
            breakdown_rate=args.profile_rate if args.breakdown else None,
            retries=args.retries,
            others_max=args.others_max,
        )
        if args.profile and cfg.py_spy is None:
            log("bench: --profile: no py-spy in the venv (pip install py-spy); live unprofiled")
        with _terminate_as_interrupt():
            results["live"] = run_live(cfg)
    results["src_digest_at_end"] = src_digest()
    if results["src_digest_at_end"] != results["machine"]["src_digest"]:
        log("bench: netwarden's sources changed during the run: the figures mix versions")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)
    log(f"\nraw results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
