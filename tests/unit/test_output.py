"""Text lines, templates, JSON and escaping."""

from __future__ import annotations

import io
import json
from ipaddress import ip_address

import pytest

from netwarden.errors import UsageError
from netwarden.events import Event, EventType, ProcessInfo, Proto, ScanInfo, ScanKind
from netwarden.output import LOG_FORMAT, Printer, check_template, parse_events_option, sanitize


def ev(**kw: object) -> Event:
    base: dict[str, object] = dict(
        ts=1700000000.5,
        event=EventType.END,
        proto=Proto.TCP,
        ipproto=6,
        family=4,
        src=ip_address("10.0.0.1"),
        dst=ip_address("10.0.0.2"),
        sport=40000,
        dport=80,
        flow="x-1",
        orig_bytes=420,
        resp_bytes=3200,
        orig_pkts=6,
        resp_pkts=5,
        duration=0.1,
    )
    base.update(kw)
    return Event(**base)  # type: ignore[arg-type]


def test_sanitize_escapes_controls_and_backslash() -> None:
    assert sanitize("a\x1b[31mb\nc\\d\x7f") == "a\\x1b[31mb\\nc\\\\d\\x7f"
    assert sanitize("plain ünïcode") == "plain ünïcode"


def test_default_line_new_and_end() -> None:
    out = io.StringIO()
    p = Printer(out, ts_format="%H:%M:%S")
    p(ev(event=EventType.NEW, duration=None))
    p(ev())
    lines = out.getvalue().splitlines()
    assert lines[0].split()[1:] == ["new", "tcp", "transit", "10.0.0.1/40000", ">", "10.0.0.2/80"]
    assert lines[1].endswith("10.0.0.2/80 6p/420B > 5p/3200B 0.1s")


def test_template_with_nulls_and_hostile_strings() -> None:
    out = io.StringIO()
    p = Printer(out, template=LOG_FORMAT, ts_format="%s")
    proc = ProcessInfo(pid=42, uid=0, gid=0, cmdline="evil\x1b]0;pwned\x07 --x\n")
    p(ev(process=proc, sport=None, dport=None, proto=Proto.ICMP, ipproto=1))
    line = out.getvalue()
    assert line.count("\n") == 1
    assert (
        line == "1700000000: icmp 10.0.0.1/- > 10.0.0.2/- :: 42 0:0 - :: "
        "evil\\x1b]0;pwned\\x07 --x\\n\n"
    )


def test_template_numeric_spec_on_null_prints_dash() -> None:
    out = io.StringIO()
    Printer(out, template="{sport:>6d}|{dport:>6d}")(ev(sport=None))
    assert out.getvalue() == "-|    80\n"


def test_json_line_is_the_event() -> None:
    out = io.StringIO()
    Printer(out, json_lines=True)(ev())
    d = json.loads(out.getvalue())
    assert d["orig_bytes"] == 420 and d["src"] == "10.0.0.1" and d["event"] == "end"


def test_scan_event_line_and_json() -> None:
    scan = ScanInfo(
        scanner=ip_address("10.9.9.9"),
        kind=ScanKind.PORT,
        ports=(22, 80, 443),
        targets=1,
        window=60.0,
    )
    e = ev(event=EventType.SCAN, scan=scan)
    d = e.to_dict()
    assert d["scanner"] == "10.9.9.9" and d["ports"] == [22, 80, 443] and d["kind"] == "port"
    out = io.StringIO()
    Printer(out, ts_format="%s")(e)
    assert "port scan by 10.9.9.9" in out.getvalue() and "22,80,443" in out.getvalue()


def test_event_filter() -> None:
    out = io.StringIO()
    p = Printer(out, events=frozenset({"end"}))
    p(ev(event=EventType.NEW))
    p(ev())
    assert len(out.getvalue().splitlines()) == 1


@pytest.mark.parametrize("bad", ["{nope}", "{src", "{}"])
def test_bad_templates_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError) as ei:
        check_template(bad)
    assert ei.value.exit_code == 2 and "--format" in str(ei.value)


def test_events_option() -> None:
    assert parse_events_option("new, end") == {"new", "end"}
    with pytest.raises(UsageError, match="--events 'new,bogus'"):
        parse_events_option("new,bogus")


def test_to_dict_has_every_field_in_interface_order() -> None:
    from netwarden.events import FIELDS

    assert tuple(ev().to_dict()) == FIELDS


def test_event_init_matches_its_fields() -> None:
    import dataclasses
    import inspect

    params = list(inspect.signature(Event.__init__).parameters.values())[1:]
    fields = dataclasses.fields(Event)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        want = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        assert p.default == want, f.name
    e = ev()
    assert dataclasses.replace(e, sport=9).sport == 9 and e.sport == 40000
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.ts = 1.0  # type: ignore[misc]
