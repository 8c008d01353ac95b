"""Turning events into lines: the default text, ``--json`` and ``--format`` templates.

Every string that comes from outside (process names, command lines, interface names, host
names) has its control characters escaped before it reaches a terminal or a file.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from netwarden.errors import UsageError
from netwarden.events import FIELDS, SCAN_FIELDS, Event, EventType

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return _ESCAPES.get(c) or f"\\x{ord(c):02x}"


def sanitize(text: str) -> str:
    """Escape control characters (and backslashes, so the escaping is unambiguous)."""
    return _CONTROL.sub(_escape_char, text)


#: The default ``--format-ts``: local time with microseconds, as ``tcpdump -tttt``.
DEFAULT_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

#: conntrack-logger's line, kept for ``netwarden log``.
LOG_FORMAT = "{ts}: {proto} {src}/{sport} > {dst}/{dport} :: {pid} {uid}:{gid} {unit} :: {cmdline}"

#: The default line of ``sniff``, ``replay`` and ``run``.
FLOW_FORMAT = "{ts} {event:<5} {proto:<6} {direction:<7} {src}/{sport} > {dst}/{dport}"
END_SUFFIX = " {orig_pkts}p/{orig_bytes}B > {resp_pkts}p/{resp_bytes}B {duration}s"
SCAN_FORMAT = (
    "{ts} {event:<5} {kind} scan by {scanner}: {targets} targets, ports {ports} in {window}s"
)


def format_ts(ts: float, fmt: str = DEFAULT_TS_FORMAT) -> str:
    """``ts`` in local time through strftime; ``%f`` gives the microseconds."""
    if "%f" in fmt:
        fmt = fmt.replace("%f", f"{int(ts * 1e6) % 1000000:06d}")
    return time.strftime(fmt, time.localtime(ts))


class _Lenient(string.Formatter):
    """A formatter that prints a value plainly when its format spec does not fit it
    (``{sport:>5d}`` on a null port prints ``-`` rather than failing)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        try:
            return str(super().format_field(value, format_spec))
        except (ValueError, TypeError):
            return str(value)


_FORMATTER = _Lenient()
ALL_FIELDS = frozenset(FIELDS) | frozenset(SCAN_FIELDS)


def event_values(e: Event, ts_format: str = DEFAULT_TS_FORMAT) -> dict[str, Any]:
    """The event's fields for a template: null as ``-``, strings sanitized, ``ts`` formatted.

    ``epoch`` is the raw Unix time, for templates that want it.
    """
    d = e.to_dict()
    out: dict[str, Any] = {}
    for k, v in d.items():
        if v is None:
            out[k] = "-"
        elif isinstance(v, str):
            out[k] = sanitize(v)
        elif isinstance(v, list):
            out[k] = ",".join(str(x) for x in v)
        elif isinstance(v, float) and k in ("duration", "window"):
            out[k] = f"{v:.6f}".rstrip("0").rstrip(".") if v else "0"
        else:
            out[k] = v
    out["epoch"] = e.ts
    out["ts"] = format_ts(e.ts, ts_format)
    for k in SCAN_FIELDS:
        out.setdefault(k, "-")
    return out


def check_template(template: str, option: str = "--format") -> None:
    """Reject a template that does not parse or names an unknown field (exit 2)."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(str(exc), option=option, value=template) from None
    for name in names:
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if base == "" or base not in ALL_FIELDS | {"epoch"}:
            raise UsageError(
                f"unknown field {{{name}}}",
                option=option,
                value=template,
                allowed=", ".join(sorted(ALL_FIELDS | {"epoch"})),
            )


class Printer:
    """Writes one line per event to ``out``, flushed line by line (unless ``autoflush`` is
    turned off by a caller that calls :meth:`flush` itself, once per batch)."""

    def __init__(
        self,
        out: TextIO,
        *,
        json_lines: bool = False,
        template: str | None = None,
        ts_format: str = DEFAULT_TS_FORMAT,
        events: frozenset[str] | None = None,
    ) -> None:
        if template is not None:
            check_template(template)
        self.out = out
        self.json_lines = json_lines
        self.template = template
        self.ts_format = ts_format
        self.events = events
        self.count = 0
        self.autoflush = True

    def flush(self) -> None:
        self.out.flush()

    def line(self, e: Event) -> str:
        if self.json_lines:
            return e.to_json()
        values = event_values(e, self.ts_format)
        if self.template is not None:
            return _FORMATTER.vformat(self.template, (), values)
        if e.scan is not None:
            return _FORMATTER.vformat(SCAN_FORMAT, (), values)
        text = _FORMATTER.vformat(FLOW_FORMAT, (), values)
        if e.event is EventType.END:
            text += _FORMATTER.vformat(END_SUFFIX, (), values)
        if e.iface:
            text += f" [{values['iface']}]"
        return text

    def __call__(self, e: Event) -> None:
        if self.events is not None and str(e.event) not in self.events:
            return
        self.out.write(self.line(e) + "\n")
        if self.autoflush:
            self.out.flush()
        self.count += 1


def parse_events_option(value: str, allowed: Mapping[str, object] | None = None) -> frozenset[str]:
    """``--events new,end`` → a set; an unknown name is a usage error."""
    names = {v.strip() for v in value.split(",") if v.strip()}
    valid = {str(t) for t in EventType} if allowed is None else set(allowed)
    bad = sorted(names - valid)
    if bad or not names:
        raise UsageError(
            "unknown event type" if bad else "empty list",
            option="--events",
            value=value,
            allowed=",".join(sorted(valid)),
        )
    return frozenset(names)


Emit = Callable[[Event], None]
