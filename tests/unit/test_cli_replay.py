"""The CLI over capture files: output content, options, and clean errors (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netwarden.wire.pcapwriter import write_pcap
from tests import pktbuild as pb


def nw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netwarden.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def session_pcap(tmp_path: Path) -> Path:
    pkts = pb.tcp_session(
        "192.0.2.10",
        "198.51.100.80",
        40000,
        80,
        b"GET / HTTP/1.0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 1000,
    )
    for i in range(3):
        payload = bytes(100 + i)
        pkts.append(
            (
                2.0 + i,
                pb.ether(pb.ipv4("192.0.2.10", "198.51.100.53", 17, pb.udp(5353, 53, payload))),
            )
        )
    pkts.append(
        (
            3.0,
            pb.ether(
                pb.ipv6("2001:db8::1", "2001:db8::2", 58, pb.icmp_echo(7, 1)[:1] + b"\x00" * 7),
                pb.ETH_IP6,
            ),
        )
    )
    path = tmp_path / "s.pcap"
    write_pcap(path, 1, pkts)
    return path


def test_replay_json_flows_with_exact_counts(session_pcap: Path) -> None:
    r = nw("replay", str(session_pcap), "--json", "--local", "192.0.2.10")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    ends = {(e["proto"], e["dport"]): e for e in events if e["event"] == "end"}
    t = ends[("tcp", 80)]
    assert (t["src"], t["sport"], t["dst"], t["direction"]) == (
        "192.0.2.10",
        40000,
        "198.51.100.80",
        "out",
    )
    req, resp = 18, 19 + 1000
    assert (t["orig_pkts"], t["resp_pkts"]) == (5, 3)
    assert t["orig_bytes"] == 5 * 40 + req and t["resp_bytes"] == 3 * 40 + resp
    assert t["source"] == "replay" and t["duration"] == pytest.approx(0.07)
    u = ends[("udp", 53)]
    assert u["orig_pkts"] == 3 and u["orig_bytes"] == 3 * 28 + 100 + 101 + 102
    assert ends[("icmpv6", None)]["direction"] == "transit"
    news = [e for e in events if e["event"] == "new"]
    assert len(news) == len(ends) == 3
    assert all(n["flow"] in {e["flow"] for e in ends.values()} for n in news)


def test_replay_filter_format_count_and_tcp_only(session_pcap: Path) -> None:
    r = nw(
        "replay",
        str(session_pcap),
        "udp",
        "--format",
        "{proto} {dst}:{dport} {orig_pkts}",
        "--events",
        "end",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "udp 198.51.100.53:53 3\n"
    r = nw("replay", str(session_pcap), "-c", "--format", "{event} {dport}")
    assert r.stdout.splitlines() == ["new 80", "end 80"]
    r = nw("replay", str(session_pcap), "--count", "1", "--format", "{event}")
    assert r.stdout == "new\n"


def test_replay_stats_and_progress(session_pcap: Path) -> None:
    r = nw("replay", str(session_pcap), "--stats", "--progress", "always", "--events", "end")
    assert r.returncode == 0
    assert "12 packets, 12 IP packets" in r.stderr and "3 flows" in r.stderr
    assert "replay: 100.0%" in r.stderr


def test_corrupt_file_exits_2_naming_file_and_offset(session_pcap: Path, tmp_path: Path) -> None:
    data = session_pcap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 10])
    r = nw("replay", str(cut), "--format", "{event} {dport}")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert str(cut) in r.stderr and "byte" in r.stderr
    # the packets before the damage were still processed, their flows ended
    assert "end 53" in r.stdout


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "pcap"), (b"hello world, not a capture" * 3, "not a pcap")],
)
def test_not_a_capture(tmp_path: Path, content: bytes, needle: str) -> None:
    f = tmp_path / "x.pcap"
    f.write_bytes(content)
    r = nw("replay", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(f) in r.stderr and needle in r.stderr


def test_missing_file_and_bad_options(tmp_path: Path, session_pcap: Path) -> None:
    r = nw("replay", str(tmp_path / "nope.pcap"))
    assert r.returncode == 2 and "nope.pcap" in r.stderr and "Traceback" not in r.stderr
    r = nw("replay", str(session_pcap), "tcp port")
    assert r.returncode == 2 and "filter" in r.stderr and "Traceback" not in r.stderr
    r = nw("replay", str(session_pcap), "--format", "{bogus}")
    assert r.returncode == 2 and "--format" in r.stderr and "bogus" in r.stderr
    r = nw("replay", str(session_pcap), "--local", "300.1.1.1")
    assert r.returncode == 2 and "--local '300.1.1.1'" in r.stderr
    r = nw("replay", str(session_pcap), "--events", "new,nope")
    assert r.returncode == 2 and "--events" in r.stderr
    r = nw("sniff", "--snaplen", "10")
    assert r.returncode == 2 and "--snaplen" in r.stderr
    r = nw("sniff", "--bogus-flag")
    assert r.returncode == 2 and "--bogus-flag" in r.stderr and "Traceback" not in r.stderr


def test_unsupported_link_type(tmp_path: Path) -> None:
    f = tmp_path / "arc.pcap"
    write_pcap(f, 147, [(1.0, b"\x01\x02\x03")])
    r = nw("replay", str(f))
    assert r.returncode == 2 and "unsupported link type 147" in r.stderr
    assert "Traceback" not in r.stderr


def test_version() -> None:
    r = nw("version")
    assert r.returncode == 0 and r.stdout.startswith("netwarden 0.")


def test_payload_match_nomatch_offset(session_pcap: Path) -> None:
    fmt = ["--format", "{proto} {dport} {orig_pkts} {resp_pkts}", "--events", "end"]
    r = nw("replay", str(session_pcap), "--match", "get /", *fmt)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "tcp 80 1 0\n"  # only the request packet counts (case-insensitive)
    r = nw("replay", str(session_pcap), "--match", "^T /", "--payload-offset", "2", *fmt)
    assert r.stdout == "tcp 80 1 0\n"
    r = nw("replay", str(session_pcap), "--nomatch", "http/1.0", "--events", "end",
           "--format", "{proto} {orig_pkts} {resp_pkts}")  # fmt: skip
    assert "tcp 4 2" in r.stdout.splitlines()
    r = nw("replay", str(session_pcap), "--match", "(unclosed")
    assert r.returncode == 2 and "--match" in r.stderr
    r = nw("replay", str(session_pcap), "--payload-offset", "3")
    assert r.returncode == 2 and "--payload-offset" in r.stderr


def test_dns_answers_teach_names() -> None:
    import struct

    from netwarden.stats.names import NameCache
    from netwarden.stats.packets import PayloadInspector
    from netwarden.wire.packet import decoder_for

    q = b"\x03www\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 120, 4) + bytes([198, 51, 100, 7])
    dns = struct.pack("!HHHHHH", 9, 0x8180, 1, 1, 0, 0) + q + ans
    frame = pb.ether(pb.ipv4("192.0.2.53", "192.0.2.10", 17, pb.udp(53, 40000, dns)))
    names = NameCache(lambda a: ([], 60.0), clock=lambda: 1000.0)
    insp = PayloadInspector(on_dns=names.learn_dns)
    r = decoder_for(1)(frame, len(frame))
    assert insp.accept(r, frame)  # type: ignore[arg-type]
    assert names.lookup("198.51.100.7") == (["www.example.com"], 1120.0)
    names.close()
