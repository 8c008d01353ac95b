#!/usr/bin/env python3
"""Scan detection and blocking: how fast a scanner is stopped, and what a flood costs.

Everything runs in throw-away namespaces (tests/e2e/scan_helpers.Lab): the server side
(``srv``) runs ``netwarden run --backend sniff --block`` or the XDP program; the scanner
side (``scan``) sends; tcpdump on the scanner's interface records every probe and every
answer with nanosecond timestamps (its outgoing copy of a probe is stamped microseconds
before the server sees it), so "answered" means the server's kernel let the probe in.

latency
    A raw-socket sender offers SYNs to successive closed ports (answered by RST) at a fixed
    interval. The threshold probe is the one whose ``new`` event made the detector fire (the
    highest port of the ``scan`` event; the 4th port with ``--scan-ports 3``). The block is
    in effect somewhere between the last answered probe and the next one: reported as
    ``effect_ms`` = time of the first unanswered probe after the threshold minus the time of
    the threshold probe (an upper bound; the interval is the resolution). ``detect_ms`` is
    the ``scan`` event's timestamp (the daemon's clock when it decided) minus the probe's.
    Paths: the daemon as shipped (``run --block``: immediate TPACKET_V2 frames, each
    packet handed over as it arrives, each batch's events judged before they are written
    out, addresses blocked through raw nf_tables netlink), the same daemon on TPACKET_V3
    blocks retired after 1 ms (what shipped before), and XDP's in-kernel threshold.
nmap
    ``nmap -sS -p 1-1000 -T5`` from a fresh address: ports answered after the threshold
    probe (by first-SYN time), on the nft path and on XDP.
flood
    ``hping3 --rand-source -S --flood`` at port 80 for ``--flood-seconds``: the daemon's RSS
    (peak VmHWM, VmRSS over time, by mapping), flows, CPU, packets captured and dropped by
    the kernel; then its clean stop (time, RSS while it ends every flow and writes stats);
    then the XDP program under the same flood with its threshold counting every spoofed
    source: nanoseconds per packet (kernel.bpf_stats_enabled, switched back off after).

Run as root: ``.venv/bin/python bench/scan_bench.py`` (about 2-3 minutes); prints tables and
writes ``bench/out/scan.json``. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.e2e.scan_helpers import Lab  # noqa: E402
from tests.integration.netns import Netns  # noqa: E402

from netwarden.act.xdp import XdpBlocker  # noqa: E402
from netwarden.wire.pcapfile import open_capture  # noqa: E402

OUT = ROOT / "bench" / "out"
SCAN_PORTS = 3  # the default --scan-ports: the 4th distinct port is the threshold probe

# The daemon, traced: the stages between a packet and its block are timed (time.time(),
# the clock of the capture stamps) into the file NW_TRACE names, and, with a first argument
# other than "-", TPACKET_V3 blocks with that block timeout instead of the immediate frames
# `run --block` uses (the only behaviour change).
DAEMON = r"""
import functools, json, os, sys, time
import netwarden.act.blocker as blocker
import netwarden.act.libnftables as libnftables
import netwarden.act.nftnl as nftnl
import netwarden.capture.afpacket as afpacket
import netwarden.defense as defense
import netwarden.detect.policy as policy
import netwarden.pipeline as pipeline
import netwarden.stats.packets as packets

import threading
trace = open(os.environ["NW_TRACE"], "a", buffering=1)
records = []  # written out by a thread every 0.2 s: a traced call only appends a tuple

def writer():
    while True:
        time.sleep(0.2)
        while records:
            tag, t0, t1, more = records.pop(0)
            rec = {"fn": tag, "t0": t0, "t1": t1, **more}
            trace.write(json.dumps(rec) + "\n")

threading.Thread(target=writer, daemon=True).start()

def traced(cls, name, tag, extra=None):
    fn = getattr(cls, name)

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        t0 = time.time()
        r = fn(*args, **kw)
        records.append((tag, t0, time.time(), extra(r) if extra is not None else {}))
        return r

    setattr(cls, name, wrapper)

def batch(pkts):
    return {"n": len(pkts), "first": pkts[0][0] if pkts else None,
            "last": pkts[-1][0] if pkts else None}

traced(afpacket.RingCapture, "_read_block", "batch", batch)
traced(afpacket.RingCapture, "_read_frames", "batch", batch)
traced(packets.PacketCounter, "feed", "feed")
traced(pipeline.Pipeline, "handle_batch", "handle")
traced(defense.Defense, "_scan", "scan")
traced(policy.Policy, "decide", "decide")
traced(blocker.Blocker, "block", "block")
traced(blocker.Blocker, "_write", "state_file")
traced(libnftables.Nft, "run", "nft")
traced(nftnl.NftSets, "replace", "nft")
import netwarden.capture.netlink_socket as nls
traced(nls.NetlinkSocket, "send", "nlsend")
traced(pipeline.Pipeline, "tick", "tick")
if sys.argv[1] != "-":
    tov = int(sys.argv[1])
    _init = afpacket.RingCapture.__init__

    def init(self, *args, **kw):
        kw["block_timeout_ms"] = tov
        kw["frame_size"] = None  # TPACKET_V3 blocks, not the immediate frames
        _init(self, *args, **kw)

    afpacket.RingCapture.__init__ = init
from netwarden.cli import main
sys.exit(main(sys.argv[2:]))
"""


class BenchLab(Lab):
    """The test lab plus as many scanner addresses as the runs need (one per run, so that
    each starts unknown to the detector)."""

    def source(self, k: int) -> str:
        base = self.scan4.rsplit(".", 1)[0]
        addr = f"{base}.{20 + k}"
        if addr not in self._added:
            self.scan.ip("addr", "add", f"{addr}/24", "dev", self.scan_if)
            self._added.add(addr)
        return addr

    def __enter__(self) -> BenchLab:
        super().__enter__()
        self._added: set[str] = set()
        return self


# --------------------------------------------------------------------------- CPUs
# The scanner stands for another machine: its sender and tcpdump run on the last CPU, the
# daemon on the others (on 2 vCPUs: one each), so the busy-waiting sender does not take the
# daemon's CPU away in the middle of a measurement.
SCANNER_CPU = (os.cpu_count() or 1) - 1


def pin(pid: int, cpu: int | None) -> None:
    """Pin ``pid`` to ``cpu`` (None: every CPU but the scanner's); best effort."""
    cpus = {cpu} if cpu is not None else set(range(os.cpu_count() or 1)) - {SCANNER_CPU}
    try:
        os.sched_setaffinity(pid, cpus or {0})
    except OSError:
        pass


# --------------------------------------------------------------------------- the sender
def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def syn_packet(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return ip + tcp


def send_syns(src: str, dst: str, ports: list[int], interval_us: float) -> float:
    """SYNs from ``src`` (an address of this namespace) to ``ports`` in order, one every
    ``interval_us`` (busy-waiting); returns the mean interval achieved, in µs."""
    pin(os.getpid(), SCANNER_CPU)
    pkts = [syn_packet(src, dst, 40000 + i % 20000, p, 1000 + i) for i, p in enumerate(ports)]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    step = int(interval_us * 1000)
    t0 = time.perf_counter_ns()
    nxt = t0
    for pkt in pkts:
        while time.perf_counter_ns() < nxt:
            pass
        s.sendto(pkt, (dst, 0))
        nxt += step
    took = time.perf_counter_ns() - t0
    s.close()
    return took / 1000 / max(1, len(pkts) - 1)


# --------------------------------------------------------------------------- capture
@contextmanager
def capture(ns: Netns, iface: str, path: Path) -> Iterator[None]:
    """tcpdump on ``iface`` in ``ns`` (TCP headers, nanosecond stamps) into ``path``."""
    p = ns.popen(
        "tcpdump", "-i", iface, "-n", "-s", "96", "-B", "65536", "-U", "--immediate-mode",
        "--time-stamp-precision=nano", "-w", str(path), "tcp",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert p.stderr is not None
    pin(p.pid, SCANNER_CPU)
    line = p.stderr.readline().decode(errors="replace")
    assert "listening on" in line, line
    try:
        yield
    finally:
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        p.wait(10)


@dataclass
class Probe:
    port: int
    sent: float  # first SYN seen, Unix seconds
    answered: float | None = None  # first RST or SYN+ACK back


def probes(path: Path, src: str, dst: str) -> list[Probe]:
    """The SYNs from ``src`` to ``dst`` in the capture, in order, with their answers."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    by_port: dict[int, Probe] = {}
    order: list[Probe] = []
    reader = open_capture(path)
    try:
        for ts, _lt, data, _wl, _ifi in reader:
            b = bytes(data)
            if len(b) < 14 + 20 + 14 or b[12:14] != b"\x08\x00":
                continue
            ip = b[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 6:
                continue
            tcp = ip[ihl:]
            sport, dport = struct.unpack("!HH", tcp[:4])
            flags = tcp[13]
            if ip[12:16] == s and ip[16:20] == d and flags & 0x12 == 0x02:
                if dport not in by_port:
                    by_port[dport] = Probe(dport, ts)
                    order.append(by_port[dport])
            elif ip[12:16] == d and ip[16:20] == s and flags & 0x14:
                pr = by_port.get(sport)
                if pr is not None and pr.answered is None:
                    pr.answered = ts
    finally:
        reader.close()
    return order


# --------------------------------------------------------------------------- the daemon
class Daemon:
    """``netwarden run --backend sniff --block --json`` in ``ns``; events to a file."""

    def __init__(self, ns: Netns, state: Path, port: int, tov: int | None = None) -> None:
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        self.out_path = state / "events.jsonl"
        self.err_path = state / "stderr.txt"
        argv = ["run", "--backend", "sniff", "--block", "--state-dir", str(state),
                "--listen", f"127.0.0.1:{port}", "--json"]  # fmt: skip
        self.trace_path = state / "trace.jsonl"
        cmd = [sys.executable, "-c", DAEMON, "-" if tov is None else str(tov), *argv]
        self._out = open(self.out_path, "w")  # noqa: SIM115
        self._err = open(self.err_path, "w")  # noqa: SIM115
        env = {**os.environ, "NW_TRACE": str(self.trace_path)}
        self.proc = ns.popen(
            *cmd, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, env=env
        )
        pin(self.proc.pid, None)  # its threads, started later, inherit it
        deadline = time.monotonic() + 30
        while "listening on" not in self.err_path.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"daemon did not start: {self.err_path.read_text()}")
            time.sleep(0.05)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.out_path.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a line being written
            if kind is None or e.get("event") == kind:
                out.append(e)
        return out

    def wait(self, kind: str, scanner: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events(kind):
                if e.get("scanner") == scanner and not e.get("summary"):
                    return e
            time.sleep(0.05)
        raise RuntimeError(f"no {kind} event for {scanner}")

    def trace(self) -> list[dict[str, Any]]:
        time.sleep(0.5)  # the daemon writes its trace every 0.2 s
        out = []
        for line in self.trace_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, timeout: float = 60.0) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        self._out.close()
        self._err.close()
        return self.err_path.read_text()


# --------------------------------------------------------------------------- latency
@dataclass
class Trial:
    path: str
    interval_us: float
    threshold_port: int
    answered_after: int
    effect_ms: float  # first unanswered probe after the threshold − the threshold probe
    last_answered_ms: float | None  # last answered probe after it − the threshold probe
    detect_ms: float | None  # the scan event's time − the threshold probe's
    #: the daemon's stages, ms (from its trace): see stages()
    stages: dict[str, float] = field(default_factory=dict)


def _trial(
    path: str, caps: list[Probe], threshold_port: int, interval_us: float, detect: float | None
) -> Trial:
    idx = next(i for i, p in enumerate(caps) if p.port == threshold_port)
    t0 = caps[idx].sent
    after = caps[idx + 1 :]
    answered = [p for p in after if p.answered is not None]
    first_dropped = next((p for p in caps[idx:] if p.answered is None), None)
    effect = (first_dropped.sent - t0) * 1000 if first_dropped is not None else float("nan")
    return Trial(
        path=path,
        interval_us=round(interval_us, 1),
        threshold_port=threshold_port,
        answered_after=len(answered),
        effect_ms=round(effect, 3),
        last_answered_ms=round((answered[-1].sent - t0) * 1000, 3) if answered else None,
        detect_ms=round((detect - t0) * 1000, 3) if detect is not None else None,
    )


def stages(trace: list[dict[str, Any]], t_probe: float) -> dict[str, float]:
    """Where the time between the threshold probe and its block went, in ms:

    - ``batch_wait``: until the ring block holding the probe was handed to Python
      (TPACKET_V3 retires a block when full or ``block_timeout_ms`` after its first packet);
    - ``to_detection``: from there to the detector's verdict on the probe's ``new`` event,
      of which ``to_flow_table`` (the ring hands the packets over) and
      ``flow_table_to_verdict`` (the packets ahead of the probe through the flow table,
      each event through the detector as it is made; outputs come after the batch);
    - ``policy``: ``Policy.decide`` (allowlists; established peers read from /proc/net/tcp);
    - ``scan_event_out``: emitting the ``scan`` event (JSON line, store, exec hook queue);
    - ``block_to_nft``: ``Blocker.block`` up to the nft call (lock, reading blocks.json);
    - ``nft``: the libnftables transaction (the block is in effect when it returns);
    - ``state_file``: writing blocks.json after (fsync; not on the way to the effect);
    - ``total_to_nft``: the probe to the end of the transaction;
    - ``tick``: how much of that time the periodic work (``Pipeline.tick`` on the ticker
      thread: store flush, flow snapshots, expiry; it holds the pipeline's lock) overlapped.
    """
    ms = 1000.0
    batch = next(
        (r for r in trace if r["fn"] == "batch" and r["first"] is not None
         and r["first"] - 1e-3 <= t_probe <= r["last"] + 1e-3),
        None,
    )  # fmt: skip
    if batch is None:
        return {}
    scan = next((r for r in trace if r["fn"] == "scan" and r["t0"] >= batch["t1"]), None)
    if scan is None:
        return {}

    def inside(fn: str, outer: dict[str, Any]) -> dict[str, Any] | None:
        return next(
            (r for r in trace if r["fn"] == fn and outer["t0"] <= r["t0"] <= outer["t1"]), None
        )

    out = {
        "batch_wait": (batch["t1"] - t_probe) * ms,
        "batch_packets": float(batch["n"]),
        "to_detection": (scan["t0"] - batch["t1"]) * ms,
    }
    feed = next((r for r in trace if r["fn"] == "feed" and r["t0"] >= batch["t1"]), None)
    if feed is not None and feed["t0"] <= scan["t0"]:
        out["to_flow_table"] = (feed["t0"] - batch["t1"]) * ms  # the ring to the flow table
        # the flow table over the packets ahead of the probe, the detector on its events
        # as they are made (the daemon judges inline), up to the verdict on the probe
        out["flow_table_to_verdict"] = (scan["t0"] - feed["t0"]) * ms
    decide = inside("decide", scan)
    block = inside("block", scan)
    if decide is not None:
        out["policy"] = (decide["t1"] - decide["t0"]) * ms
    if decide is not None and block is not None:
        out["scan_event_out"] = (block["t0"] - decide["t1"]) * ms
    if block is not None:
        nft = inside("nft", block)
        state = inside("state_file", block)
        if nft is not None:
            out["block_to_nft"] = (nft["t0"] - block["t0"]) * ms
            out["nft"] = (nft["t1"] - nft["t0"]) * ms
            out["total_to_nft"] = (nft["t1"] - t_probe) * ms
            out["tick"] = (
                sum(
                    max(0.0, min(r["t1"], nft["t1"]) - max(r["t0"], t_probe))
                    for r in trace
                    if r["fn"] == "tick"
                )
                * ms
            )
        if state is not None:
            out["state_file"] = (state["t1"] - state["t0"]) * ms
    return {k: round(v, 3) for k, v in out.items()}


def latency_daemon(
    lab: BenchLab, work: Path, trials: int, interval_us: float, count: int, tov: int | None
) -> list[Trial]:
    name = "nft, " + ("immediate frames (as shipped)" if tov is None else f"V3 blocks, {tov} ms")
    d = Daemon(lab.srv, work / f"daemon-tov{tov}", 9791 if tov is None else 9792, tov)
    out: list[Trial] = []
    try:
        time.sleep(0.5)
        for k in range(trials):
            src = lab.source(k + (0 if tov is None else 50))
            base = 2000 + 10 * k
            ports = list(range(base, base + count))
            pcap = work / f"lat-tov{tov}-{k}.pcap"
            with capture(lab.scan, lab.scan_if, pcap):
                achieved = lab.scan.call(send_syns, src, lab.srv4, ports, interval_us, timeout=120)
                scan = d.wait("scan", src)
            caps = probes(pcap, src, lab.srv4)
            t = _trial(name, caps, max(scan["ports"]), achieved, scan["ts"])
            t_probe = next(p.sent for p in caps if p.port == t.threshold_port)
            t.stages = stages(d.trace(), t_probe)
            out.append(t)
            print(f"  {name} trial {k}: {t}", flush=True)
    finally:
        d.stop()
    return out


def latency_xdp(
    lab: BenchLab, work: Path, trials: int, interval_us: float, count: int
) -> list[Trial]:
    out: list[Trial] = []
    with lab.srv.entered():
        xdp = XdpBlocker(lab.srv_if).attach()
    try:
        xdp.configure(scan_ports=SCAN_PORTS, window=60.0, block_for=3600.0)
        for k in range(trials):
            src = lab.source(100 + k)
            ports = list(range(2000, 2000 + count))
            pcap = work / f"lat-xdp-{k}.pcap"
            with capture(lab.scan, lab.scan_if, pcap):
                achieved = lab.scan.call(send_syns, src, lab.srv4, ports, interval_us, timeout=120)
            det = [x for x in xdp.poll(timeout_ms=1000) if str(x.src) == src]
            caps = probes(pcap, src, lab.srv4)
            t = _trial(f"XDP threshold ({xdp.attached_mode})", caps, max(det[0].ports),
                       achieved, det[0].at)  # fmt: skip
            out.append(t)
            print(f"  xdp trial {k}: {t}", flush=True)
    finally:
        xdp.detach()
    return out


# --------------------------------------------------------------------------- nmap
@dataclass
class NmapRun:
    path: str
    seconds: float
    ports_probed: int
    answered_total: int
    threshold_port: int
    answered_after_threshold: int


def _nmap(lab: BenchLab, src: str, pcap: Path) -> float:
    t0 = time.monotonic()
    with capture(lab.scan, lab.scan_if, pcap):
        lab.scan.run("taskset", "-c", str(SCANNER_CPU), "nmap", "-n", "-Pn", "-sS", "-T5",
                     "-p", "1-1000", "-S", src, "-e",
                     lab.scan_if, "--max-retries", "0", "--max-rtt-timeout", "20ms",
                     "--min-rate", "5000", lab.srv4, timeout=300)  # fmt: skip
    return time.monotonic() - t0


def _nmap_result(
    path: str, caps: list[Probe], threshold_ports: tuple[int, ...], secs: float
) -> NmapRun:
    by_port = {p.port: p for p in caps}
    thr = max(threshold_ports, key=lambda p: by_port[p].sent)
    t0 = by_port[thr].sent
    return NmapRun(
        path=path,
        seconds=round(secs, 2),
        ports_probed=len(caps),
        answered_total=sum(1 for p in caps if p.answered is not None),
        threshold_port=thr,
        answered_after_threshold=sum(1 for p in caps if p.sent > t0 and p.answered is not None),
    )


def nmap_runs(lab: BenchLab, work: Path) -> list[NmapRun]:
    runs: list[NmapRun] = []
    d = Daemon(lab.srv, work / "daemon-nmap", 9793)
    try:
        time.sleep(0.5)
        src = lab.source(200)
        pcap = work / "nmap-nft.pcap"
        secs = _nmap(lab, src, pcap)
        scan = d.wait("scan", src)
        r = _nmap_result("nft (daemon)", probes(pcap, src, lab.srv4), tuple(scan["ports"]), secs)
        runs.append(r)
        print(f"  {r}", flush=True)
    finally:
        d.stop()
    with lab.srv.entered():
        xdp = XdpBlocker(lab.srv_if).attach()
    try:
        xdp.configure(scan_ports=SCAN_PORTS, window=60.0, block_for=3600.0)
        src = lab.source(201)
        pcap = work / "nmap-xdp.pcap"
        secs = _nmap(lab, src, pcap)
        det = [x for x in xdp.poll(timeout_ms=1000) if str(x.src) == src]
        r = _nmap_result(f"XDP threshold ({xdp.attached_mode})", probes(pcap, src, lab.srv4),
                         det[0].ports, secs)  # fmt: skip
        runs.append(r)
        print(f"  {r}", flush=True)
    finally:
        xdp.detach()
    return runs


# --------------------------------------------------------------------------- flood
@dataclass
class Flood:
    seconds: float
    packets_sent: int | None
    rss_peak_mb: float
    rss_end_mb: float
    rss_series_mb: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    captured: int | None = None
    dropped_by_kernel: int | None = None
    scans: int = 0
    blocks: int = 0
    #: RSS by mapping at the end of the flood (smaps): the capture ring, anonymous memory
    #: (the Python heap), shared libraries
    rss_by_kind_mb: dict[str, float] = field(default_factory=dict)
    rss_idle_mb: float = 0.0
    flows: int | None = None  # flows the daemon saw (netwarden_flows_total)
    flows_evicted: int | None = None  # ended early because the flow table was full
    kb_per_flow: float | None = None  # (RSS at the end - idle RSS) / flows still open
    stop_seconds: float = 0.0  # SIGTERM to exit
    rss_stop_peak_mb: float = 0.0  # peak RSS (VmHWM) by the end of the stop (ends, stats.json)
    xdp_ns_per_packet: float | None = None
    xdp_ns_per_packet_threshold_off: float | None = None
    xdp_packets: int | None = None
    xdp_mode: str = ""


def _smaps_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    kind = "other"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] == "Rss:":
                out[kind] = out.get(kind, 0.0) + int(parts[1]) / 1024
            elif parts and not parts[0].endswith(":"):
                name = parts[5] if len(parts) > 5 else ""
                if name.startswith("socket:"):
                    kind = "capture ring"
                elif name in ("", "[heap]"):
                    kind = "heap (anonymous)"
                elif ".so" in name:
                    kind = "shared libraries"
                else:
                    kind = "other"
    return {k: round(v, 1) for k, v in out.items()}


def _metrics(lab: BenchLab, port: int) -> dict[str, float]:
    """The daemon's /metrics, summed over labels."""
    import http.client

    def get() -> str:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()

    out: dict[str, float] = {}
    for line in lab.srv.call(get).splitlines():
        if not line.startswith("netwarden_") or " " not in line:
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        if name.endswith("_created"):
            continue
        if labels:
            out[f"{name}{{{labels}"] = float(value)
        out[name] = out.get(name, 0.0) + float(value)
    return out


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hping(lab: BenchLab, seconds: float) -> int | None:
    p = lab.scan.popen("hping3", "--rand-source", "-S", "-p", "80", "--flood", "-q", lab.srv4,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    pin(p.pid, SCANNER_CPU)
    time.sleep(seconds)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=10)[0].decode(errors="replace")
    for line in out.splitlines():
        if "packets transmitted" in line:
            return int(line.split()[0])
    return None


def _prog_stats(prog_id: int) -> tuple[int, int]:
    """(run_cnt, run_time_ns) of a BPF program (needs kernel.bpf_stats_enabled)."""
    r = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                       capture_output=True, text=True, check=True)  # fmt: skip
    shown = json.loads(r.stdout)
    return int(shown.get("run_cnt", 0)), int(shown.get("run_time_ns", 0))


def flood(lab: BenchLab, work: Path, seconds: float) -> Flood:
    d = Daemon(lab.srv, work / "daemon-flood", 9794)
    series: list[float] = []
    try:
        time.sleep(1.0)
        pid = d.proc.pid
        idle = _status_kb(pid, "VmRSS") / 1024
        cpu0 = _cpu_s(pid)
        done: list[int | None] = []
        sender = threading.Thread(target=lambda: done.append(_hping(lab, seconds)))
        sender.start()
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            series.append(round(_status_kb(pid, "VmRSS") / 1024, 1))
            time.sleep(1.0)
        sender.join(30)
        sent = done[0] if done else None
        time.sleep(2.0)  # the backlog
        series.append(round(_status_kb(pid, "VmRSS") / 1024, 1))
        peak = _status_kb(pid, "VmHWM") / 1024
        cpu = _cpu_s(pid) - cpu0
        by_kind = _smaps_mb(pid)
        m = _metrics(lab, 9794)
        scans, blocks = len(d.events("scan")), len(d.events("block"))
        # the clean stop: every open flow ends, stats.json is written (by remote address)
        t_stop = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        stop_peak = 0.0
        while d.proc.poll() is None and time.monotonic() - t_stop < 600:
            try:
                stop_peak = max(stop_peak, _status_kb(pid, "VmHWM") / 1024)
            except OSError:
                break
            time.sleep(0.5)
    finally:
        err = d.stop(600)
    stop_seconds = time.monotonic() - t_stop
    captured = dropped = None
    for line in err.splitlines():
        if line.endswith("packets captured"):
            captured = int(line.split()[0])
        if line.endswith("packets dropped by kernel"):
            dropped = int(line.split()[0])
    result = Flood(
        seconds=seconds,
        packets_sent=sent,
        rss_peak_mb=round(peak, 1),
        rss_end_mb=series[-1],
        rss_series_mb=series,
        cpu_s=round(cpu, 2),
        captured=captured,
        dropped_by_kernel=dropped,
        scans=scans,
        blocks=blocks,
        rss_by_kind_mb=by_kind,
        rss_idle_mb=round(idle, 1),
        stop_seconds=round(stop_seconds, 1),
        rss_stop_peak_mb=round(stop_peak, 1),
    )
    flows = m.get("netwarden_flows_total")
    evicted = m.get('netwarden_events_dropped_total{stage="flow_table"}', 0.0)
    if flows:
        result.flows = int(flows)
        result.flows_evicted = int(evicted)
        still_open = min(flows - evicted, 262144)
        result.kb_per_flow = round((series[-1] - idle) * 1024 / max(1.0, still_open), 2)
    # the XDP program under the same flood, its threshold counting every spoofed source
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = stats_path.read_text().strip()
    with lab.srv.entered():
        xdp = XdpBlocker(lab.srv_if).attach()
    try:
        stats_path.write_text("1\n")
        for ports in (None, SCAN_PORTS):
            xdp.configure(scan_ports=ports, window=60.0, block_for=3600.0)
            cnt0, ns0 = _prog_stats(xdp.prog_id)
            _hping(lab, min(seconds, 10.0))
            cnt, ns = _prog_stats(xdp.prog_id)
            per = round((ns - ns0) / (cnt - cnt0), 1) if cnt > cnt0 else None
            if ports is None:
                result.xdp_ns_per_packet_threshold_off = per
            else:
                result.xdp_ns_per_packet = per
                result.xdp_packets = cnt - cnt0
        result.xdp_mode = xdp.attached_mode
    finally:
        stats_path.write_text(before + "\n")
        xdp.detach()
    return result


# --------------------------------------------------------------------------- main
def _stats(trials: list[Trial]) -> dict[str, Any]:
    eff = [t.effect_ms for t in trials]
    det = [t.detect_ms for t in trials if t.detect_ms is not None]
    return {
        "path": trials[0].path,
        "trials": len(trials),
        "interval_us": statistics.median(t.interval_us for t in trials),
        "effect_ms_median": round(statistics.median(eff), 3),
        "effect_ms_min": min(eff),
        "effect_ms_max": max(eff),
        "detect_ms_median": round(statistics.median(det), 3) if det else None,
        "answered_after_median": statistics.median(t.answered_after for t in trials),
        "stages_ms_median": {
            k: round(statistics.median(t.stages[k] for t in trials if k in t.stages), 3)
            for k in trials[0].stages
        },
    }


def report(results: dict[str, Any]) -> None:
    """The tables, from what ran."""
    print()
    print(f"{'path':<38} {'effect ms: median (min-max)':<30} {'detect ms':>10} {'after':>6}")
    for s in results.get("latency", []):
        eff = f"{s['effect_ms_median']} ({s['effect_ms_min']}-{s['effect_ms_max']})"
        print(f"{s['path']:<38} {eff:<30} {s['detect_ms_median']!s:>10} "
              f"{s['answered_after_median']:>6}")  # fmt: skip
        if s["stages_ms_median"]:
            stages = ", ".join(f"{k} {v}" for k, v in s["stages_ms_median"].items())
            print(f"    stages, median ms: {stages}")
    for r in results.get("nmap", []):
        print(f"nmap {r['path']:<33} answered {r['answered_total']}/{r['ports_probed']}, "
              f"{r['answered_after_threshold']} after the threshold, {r['seconds']} s")  # fmt: skip
    f = results.get("flood")
    if f is None:
        return
    print(
        f"flood: RSS idle {f['rss_idle_mb']} MB, peak {f['rss_peak_mb']} MB, end "
        f"{f['rss_end_mb']} MB {f['rss_by_kind_mb']}; {f['flows']} flows "
        f"({f['flows_evicted']} evicted), {f['kb_per_flow']} KB per open flow; CPU "
        f"{f['cpu_s']} s; sent {f['packets_sent']}, captured {f['captured']}, kernel drops "
        f"{f['dropped_by_kernel']}; stop {f['stop_seconds']} s, RSS while stopping "
        f"{f['rss_stop_peak_mb']} MB"
    )
    print(
        f"XDP ({f['xdp_mode']}) under the flood: {f['xdp_ns_per_packet_threshold_off']} "
        f"ns/packet threshold off, {f['xdp_ns_per_packet']} ns/packet counting"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--interval-us", type=float, default=100.0)
    ap.add_argument("--probes", type=int, default=3000, help="SYNs per latency trial")
    ap.add_argument("--flood-seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=OUT / "scan.json")
    ap.add_argument(
        "--only", default="latency,nmap,flood", help="parts to run (default: %(default)s)"
    )
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if os.geteuid() != 0:
        print("scan_bench: needs root (namespaces, XDP)", file=sys.stderr)
        return 3
    results: dict[str, Any] = {"started": time.time(), "kernel": os.uname().release}
    with tempfile.TemporaryDirectory(prefix="nw-scan-bench-") as tmp, BenchLab() as lab:
        work = Path(tmp)
        lab.serve()
        if "latency" in parts:
            print("latency: threshold probe -> block in effect", flush=True)
            all_trials: list[Trial] = []
            for tov in (None, 1):
                all_trials += latency_daemon(lab, work, args.trials, args.interval_us,
                                             args.probes, tov)  # fmt: skip
            all_trials += latency_xdp(lab, work, args.trials, args.interval_us, 200)
            paths: dict[str, list[Trial]] = {}
            for t in all_trials:
                paths.setdefault(t.path, []).append(t)
            results["latency"] = [_stats(ts) for ts in paths.values()]
            results["latency_trials"] = [asdict(t) for t in all_trials]
        if "nmap" in parts:
            print("nmap -sS -p 1-1000 -T5", flush=True)
            results["nmap"] = [asdict(r) for r in nmap_runs(lab, work)]
        if "flood" in parts:
            print(f"flood: hping3 --rand-source -S --flood, {args.flood_seconds:g} s", flush=True)
            results["flood"] = asdict(flood(lab, work, args.flood_seconds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    report(results)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
