"""Config precedence and strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from netwarden.config import dump, load, parse_duration, parse_listen, parse_time
from netwarden.errors import ConfigError, UsageError


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "nw.toml"
    p.write_text(text)
    return str(p)


def test_defaults_match_the_interface() -> None:
    c = load(file=None, env={}, flags={})
    assert (c.scan_ports, c.scan_hosts, c.scan_window) == (3, 25, 60.0)
    assert c.block is False and c.block_for == 3600.0
    assert c.listen == "127.0.0.1:9750" and c.allow == () and c.no_allow_self is False


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = write(
        tmp_path, 'scan_ports = 5\nscan_hosts = 10\nblock_for = "10m"\nallow = ["10.0.0.0/8"]\n'
    )
    c = load(file=f, env={}, flags={})
    assert (c.scan_ports, c.scan_hosts, c.block_for, c.allow) == (5, 10, 600.0, ("10.0.0.0/8",))
    c = load(file=f, env={"NETWARDEN_SCAN_PORTS": "7", "NETWARDEN_TOKEN": "x"}, flags={})
    assert c.scan_ports == 7 and c.scan_hosts == 10
    c = load(file=f, env={"NETWARDEN_SCAN_PORTS": "7"}, flags={"scan_ports": 9, "block": None})
    assert c.scan_ports == 9


def test_run_table_is_accepted(tmp_path: Path) -> None:
    assert load(file=write(tmp_path, "[run]\nblock = true\n"), env={}).block is True


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("scan_portz = 3\n", ["unknown key 'scan_portz'", "scan_ports"]),
        ('scan_ports = "many"\n', ["scan_ports", "'many'", "not an integer"]),
        ("scan_ports = 0\n", ["scan_ports", "out of range", "1..65535"]),
        ('block = "perhaps"\n', ["block", "true or false"]),
        ('allow = ["10.0.0.0/33"]\n', ["allow", "10.0.0.0/33"]),
        ('listen = "localhost"\n', ["listen", "ADDR:PORT"]),
        ('block_for = "1 fortnight"\n', ["block_for", "not a duration"]),
    ],
)
def test_bad_values_name_key_value_allowed(tmp_path: Path, text: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as ei:
        load(file=write(tmp_path, text), env={})
    msg = str(ei.value)
    assert ei.value.exit_code == 2 and "nw.toml" in msg
    for n in needles:
        assert n in msg


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load(file=write(tmp_path, "scan_ports = 3\nblock = = true\n"), env={})
    assert "nw.toml" in str(ei.value) and "line 2" in str(ei.value)


def test_missing_file_and_bad_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(file=str(tmp_path / "none.toml"), env={})
    with pytest.raises(ConfigError, match=r"environment NETWARDEN_.*scan_window"):
        load(file=None, env={"NETWARDEN_SCAN_WINDOW": "soon"})


def test_durations_and_times() -> None:
    assert [parse_duration(x) for x in ("30s", "5m", "2h", "7d", "90", "0")] == [
        30,
        300,
        7200,
        604800,
        90,
        0,
    ]
    with pytest.raises(UsageError):
        parse_duration("-5")
    assert parse_time("1700000000", "--since") == 1700000000
    assert parse_time("5m", "--since", now=1000.0) == 700.0
    assert parse_time("2026-11-22T10:00:00+00:00", "--since") == 1795341600.0
    with pytest.raises(UsageError, match="--until 'yesterday'"):
        parse_time("yesterday", "--until")


def test_listen_parse_and_dump_roundtrip(tmp_path: Path) -> None:
    assert parse_listen("[::1]:9750") == ("::1", 9750)
    c = load(file=None, env={}, flags={"allow": ["192.0.2.0/24"], "exec": 'echo "hi"'})
    c2 = load(file=write(tmp_path, dump(c)), env={})
    assert c2 == c


def test_every_config_key_of_run_comes_from_its_flag() -> None:
    from netwarden.cli import _RUN_KEYS, build_parser

    args = build_parser().parse_args(
        [
            "run",
            "--snaplen",
            "1500",
            "-B",
            "4096",
            "--xdp",
            "eth0",
            "--xdp",
            "eth1",
            "--xdp-mode",
            "generic",
            "--scan-ports",
            "7",
            "--block",
        ]
    )
    from netwarden.cli import _config

    args.config = None
    c = _config(args)
    assert (c.snaplen, c.buffer_size, c.xdp, c.xdp_mode) == (
        1500,
        4096,
        ("eth0", "eth1"),
        "generic",
    )
    assert c.scan_ports == 7 and c.block is True
    assert {"snaplen", "buffer_size", "xdp", "xdp_mode"} <= set(_RUN_KEYS)
