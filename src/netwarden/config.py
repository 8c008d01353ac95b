"""Configuration: defaults < TOML file < ``NETWARDEN_*`` environment < command-line flags.

:class:`Config` is frozen; :func:`load` builds it and validates strictly: an unknown key, a
wrong type or a bad value raises :class:`~netwarden.errors.ConfigError` naming the key, the
value and what is allowed; a file that does not parse names the file and the line.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from netwarden.errors import ConfigError, UsageError

DEFAULT_CONFIG_FILE = "/etc/netwarden/netwarden.toml"
ENV_PREFIX = "NETWARDEN_"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object, option: str = "duration") -> float:
    """``30s``, ``5m``, ``2h``, ``7d``, ``1w`` or plain seconds → seconds."""
    if isinstance(value, bool):
        raise UsageError("not a duration", option=option, value=value, allowed="30s, 5m, 2h, 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise UsageError("negative", option=option, value=value, allowed="0 or more")
        return float(value)
    m = _DURATION.match(str(value))
    if m is None:
        raise UsageError(
            "not a duration", option=option, value=value, allowed="30s, 5m, 2h, 7d or seconds"
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_time(value: str, option: str, now: float | None = None) -> float:
    """A point in time: Unix seconds, ISO 8601, or a duration meaning that long ago."""
    now = time.time() if now is None else now
    text = value.strip()
    try:
        num = float(text)
    except ValueError:
        num = None
    if num is not None and num > 1e8:  # plainly a Unix time
        return num
    try:
        return now - parse_duration(text, option)
    except UsageError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            "not a time",
            option=option,
            value=value,
            allowed="Unix seconds, ISO 8601 (2026-11-22T10:00), or a duration ago (30m, 2h)",
        ) from None
    return dt.timestamp()


def parse_cidr(value: str, option: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise UsageError(
            "not an address or CIDR", option=option, value=value, allowed="e.g. 192.0.2.0/24"
        ) from None


def parse_listen(value: str, option: str = "--listen") -> tuple[str, int]:
    """``ADDR:PORT`` or ``[V6ADDR]:PORT`` → (host, port)."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not host:
            raise ValueError
        ipaddress.ip_address(host)
        p = int(port)
        if not 0 <= p <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(
            "not ADDR:PORT", option=option, value=value, allowed="e.g. 127.0.0.1:9750, [::1]:9750"
        ) from None
    return host, p


def default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/netwarden"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "netwarden")


# --------------------------------------------------------------------------- the schema
def _int(lo: int, hi: int) -> Callable[[object, str], int]:
    def conv(v: object, key: str) -> int:
        if isinstance(v, bool):
            raise ConfigError("not an integer", option=key, value=v, allowed=f"{lo}..{hi}")
        try:
            n = int(str(v), 10) if isinstance(v, str) else int(v)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ConfigError(
                "not an integer", option=key, value=v, allowed=f"{lo}..{hi}"
            ) from None
        if isinstance(v, float) and v != n:
            raise ConfigError("not an integer", option=key, value=v, allowed=f"{lo}..{hi}")
        if not lo <= n <= hi:
            raise ConfigError("out of range", option=key, value=v, allowed=f"{lo}..{hi}")
        return n

    return conv


def _bool(v: object, key: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError("not a boolean", option=key, value=v, allowed="true or false")


def _duration(v: object, key: str) -> float:
    try:
        return parse_duration(v, key)
    except UsageError as exc:
        raise ConfigError(str(exc)) from None


def _positive_duration(v: object, key: str) -> float:
    d = _duration(v, key)
    if d <= 0:
        raise ConfigError("must be more than 0", option=key, value=v, allowed="e.g. 60s")
    return d


def _str_or_none(v: object, key: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ConfigError("not a string", option=key, value=v)
    return v or None


def _choice(*allowed: str) -> Callable[[object, str], str]:
    def conv(v: object, key: str) -> str:
        if v not in allowed:
            raise ConfigError("unknown value", option=key, value=v, allowed=", ".join(allowed))
        return str(v)

    return conv


def _cidrs(v: object, key: str) -> tuple[str, ...]:
    items: list[object]
    if isinstance(v, str):
        items = [x for x in re.split(r"[,\s]+", v) if x]
    elif isinstance(v, list | tuple):
        items = list(v)
    else:
        raise ConfigError("not a list of CIDRs", option=key, value=v, allowed='["10.0.0.0/8"]')
    out = []
    for item in items:
        try:
            out.append(str(parse_cidr(str(item), key)))
        except UsageError as exc:
            raise ConfigError(str(exc)) from None
    return tuple(out)


def _ifaces(v: object, key: str) -> tuple[str, ...]:
    items = [x for x in re.split(r"[,\s]+", v) if x] if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
        raise ConfigError("not a list of interface names", option=key, value=v, allowed='["eth0"]')
    for name in items:
        if not name or len(name) > 15 or "/" in name or any(c.isspace() for c in name):
            raise ConfigError("not an interface name", option=key, value=name)
    return tuple(items)


def _listen(v: object, key: str) -> str:
    try:
        parse_listen(str(v), key)
    except UsageError as exc:
        raise ConfigError(str(exc)) from None
    return str(v)


def _listen_or_none(v: object, key: str) -> str | None:
    if v is None or v == "":
        return None
    return _listen(v, key)


@dataclass(frozen=True)
class Config:
    """Every setting of ``netwarden run`` (config keys are these names)."""

    backend: str = "auto"
    iface: str | None = None
    scan_ports: int = 3
    scan_hosts: int = 25
    scan_window: float = 60.0
    block: bool = False
    block_for: float = 3600.0
    allow: tuple[str, ...] = ()
    no_allow_self: bool = False
    listen: str = "127.0.0.1:9750"
    token_file: str | None = None
    jsonl: str | None = None
    exec: str | None = None
    state_dir: str = ""
    all_netns: bool = False
    retention: float = 30 * 86400.0
    db_max_mb: int = 1024
    flush_interval: float = 1.0
    dump_listen: str | None = None
    dump_allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    max_flows: int = 65536
    max_unconfirmed: int = 16384
    buffer_size: int = 16384
    snaplen: int = 512
    xdp: tuple[str, ...] = ()
    xdp_mode: str = "auto"

    def effective_state_dir(self) -> str:
        return self.state_dir or default_state_dir()


SCHEMA: dict[str, Callable[[object, str], Any]] = {
    "backend": _choice("auto", "ebpf", "conntrack", "sniff"),
    "iface": _str_or_none,
    "scan_ports": _int(1, 65535),
    "scan_hosts": _int(1, 1 << 24),
    "scan_window": _positive_duration,
    "block": _bool,
    "block_for": _duration,
    "allow": _cidrs,
    "no_allow_self": _bool,
    "listen": _listen,
    "token_file": _str_or_none,
    "jsonl": _str_or_none,
    "exec": _str_or_none,
    "state_dir": lambda v, k: _str_or_none(v, k) or "",
    "all_netns": _bool,
    "retention": _positive_duration,
    "db_max_mb": _int(1, 1 << 20),
    "flush_interval": _positive_duration,
    "dump_listen": _listen_or_none,
    "dump_allow": _cidrs,
    "max_flows": _int(1024, 1 << 24),
    "max_unconfirmed": _int(256, 1 << 24),
    "buffer_size": _int(2048, 1 << 22),
    "snaplen": _int(64, 262144),
    "xdp": _ifaces,
    "xdp_mode": _choice("auto", "native", "generic"),
}
assert set(SCHEMA) == {f.name for f in fields(Config)}


def read_file(path: str) -> dict[str, Any]:
    """Parse a TOML config file; errors name the file (and the line, for syntax)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    # accept a [run] table as well as top-level keys
    if isinstance(data.get("run"), dict):
        run = data.pop("run")
        data.update(run)
    return data


def _apply(values: dict[str, Any], source: Mapping[str, object], where: str) -> None:
    for key, raw in source.items():
        conv = SCHEMA.get(key)
        if conv is None:
            raise ConfigError(f"{where}: unknown key {key!r}", allowed=", ".join(sorted(SCHEMA)))
        try:
            values[key] = conv(raw, key)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def load(
    *,
    file: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> Config:
    """Build the config. ``file=None`` reads /etc/netwarden/netwarden.toml when present."""
    values: dict[str, Any] = {}
    path = file
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        _apply(values, read_file(path), path)
    envmap = os.environ if env is None else env
    env_values = {
        k[len(ENV_PREFIX) :].lower(): v
        for k, v in envmap.items()
        if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX) :].lower() in SCHEMA
    }
    _apply(values, env_values, "environment NETWARDEN_*")
    if flags:
        for key, raw in flags.items():
            if raw is None:
                continue
            conv = SCHEMA[key]
            values[key] = conv(raw, "--" + key.replace("_", "-"))
    return replace(Config(), **values)


def dump(cfg: Config) -> str:
    """The config as TOML text (``netwarden config``)."""
    lines = []
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if v is None:
            lines.append(f"# {f.name} = (unset)")
        elif isinstance(v, bool):
            lines.append(f"{f.name} = {'true' if v else 'false'}")
        elif isinstance(v, int | float):
            lines.append(f"{f.name} = {v:g}" if isinstance(v, float) else f"{f.name} = {v}")
        elif isinstance(v, tuple):
            inner = ", ".join(f'"{x}"' for x in v)
            lines.append(f"{f.name} = [{inner}]")
        else:
            escaped = str(v).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{f.name} = "{escaped}"')
    return "\n".join(lines) + "\n"
