"""netwarden.wire.packet against tshark on tcpdump's ~830 test captures.

tools/tshark_reference.py ran tshark over the corpus once and stored, per file, what the
counting rules of INTERFACE.md make of tshark's dissection (tests/data/tshark_reference.json);
here our reader and decoders count the same files the same way and must agree on at least 99%
of them, the rest being listed in EXCEPTIONS with the reason (docs/corpus.md has the figures and
every choice). The corpus lives beside the repository (``../shared/pcaps/tcpdump-tests``);
without it these tests skip.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from netwarden.wire.packet import (
    F_AUX,
    F_DPORT,
    F_DST,
    F_FAMILY,
    F_FLAGS,
    F_FRAG,
    F_FRAGID,
    F_LEN,
    F_PROTO,
    F_SPORT,
    F_SRC,
    MALFORMED,
    SUPPORTED_LINKTYPES,
    Decoder,
    UnsupportedLinkType,
    decoder_for,
)
from netwarden.wire.pcapfile import CaptureFileError, open_capture
from tests.corpus import CORPUS, REPO
from tests.unit.test_packet import check_shape

REFERENCE = REPO / "tests" / "data" / "tshark_reference.json"

# Files allowed to disagree with tshark, and why. Keep in step with docs/corpus.md.
EXCEPTIONS: dict[str, str] = {}

# The fields of a file's summary that the decoders determine (the others are informational).
COMPARED = (
    "frames",
    "counts",
    "other",
    "malformed",
    "flows",
    "ip_bytes",
    "tcp_syn",
    "icmp_kinds",
    "records_sha256",
)

needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"tcpdump test captures not found at {CORPUS}"
)


def _tool() -> ModuleType:
    """tools/tshark_reference.py, for its counting function (one definition of the rules)."""
    name = "netwarden_tools_tshark_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "tshark_reference.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REFERENCE.read_text())
    return data


def our_records(path: Path) -> tuple[list[object], CaptureFileError | None]:
    """Every packet of ``path`` as the reference tool's records, decoded by netwarden."""
    tool = _tool()
    decoders: dict[int, Decoder] = {}
    out: list[object] = []
    try:
        with open_capture(path) as reader:
            for _ts, linktype, data, wirelen, _ifindex in reader:
                decode = decoders.get(linktype)
                if decode is None:
                    decode = decoders[linktype] = decoder_for(linktype)
                r = decode(data, wirelen)
                if r is None:
                    out.append(tool.OTHER)
                elif r == MALFORMED:
                    out.append(tool.MALFORMED)
                else:
                    assert isinstance(r, tuple)
                    out.append(
                        (
                            r[F_FAMILY],
                            r[F_PROTO],
                            r[F_SRC].hex(),
                            r[F_DST].hex(),
                            r[F_SPORT],
                            r[F_DPORT],
                            r[F_FRAG],
                            r[F_FRAGID],
                            r[F_FLAGS],
                            r[F_AUX],
                            r[F_LEN],
                        )
                    )
    except CaptureFileError as exc:
        return out, exc
    return out, None


@needs_corpus
def test_reference_covers_the_corpus() -> None:
    """The stored reference was made for this corpus and these link types."""
    tool = _tool()
    ref = _reference()
    assert tool.SUPPORTED_LINKTYPES == SUPPORTED_LINKTYPES
    assert ref["tshark_version"].startswith("TShark (Wireshark) ")
    eligible, seen = tool.eligible(CORPUS)
    assert seen == ref["files_in_corpus"]
    assert set(eligible) == set(ref["files"])
    for name, linktype in eligible.items():
        assert ref["files"][name]["linktype"] == linktype, name


@needs_corpus
def test_every_capture_decodes_without_exception() -> None:
    """Every packet of every file, whatever its state, goes through decode; only the reader may
    stop a file, with CaptureFileError."""
    files = damaged = packets = unsupported = results = 0
    decoders: dict[int, Decoder | None] = {}
    for path in sorted(CORPUS.iterdir()):
        if not path.is_file():
            continue
        files += 1
        try:
            with open_capture(path) as reader:
                for _ts, linktype, data, wirelen, _ifindex in reader:
                    packets += 1
                    if linktype not in decoders:
                        try:
                            decoders[linktype] = decoder_for(linktype)
                        except UnsupportedLinkType as exc:
                            assert exc.linktype == linktype
                            decoders[linktype] = None
                    decode = decoders[linktype]
                    if decode is None:
                        unsupported += 1
                        continue
                    r = decode(data, wirelen)
                    check_shape(data, r)
                    results += 1
        except CaptureFileError:
            damaged += 1
    assert files >= 800
    assert results > 9000
    assert damaged < files // 4
    assert packets == results + unsupported


@needs_corpus
def test_agreement_with_tshark() -> None:
    tool = _tool()
    ref = _reference()["files"]
    disagree: dict[str, str] = {}
    for name in sorted(ref):
        records, error = our_records(CORPUS / name)
        ours = tool.summarise(records)
        theirs = ref[name]
        diff = {key: (theirs[key], ours[key]) for key in COMPARED if ours[key] != theirs[key]}
        if diff:
            why = f"{diff}" + (f" (reader: {error})" if error else "")
            disagree[name] = why
    agreeing = len(ref) - len(disagree)
    unexpected = {k: v for k, v in disagree.items() if k not in EXCEPTIONS}
    stale = sorted(set(EXCEPTIONS) - set(disagree))
    assert not unexpected, "disagree with tshark (tshark, ours):\n" + "\n".join(
        f"{k}: {v}" for k, v in unexpected.items()
    )
    assert not stale, f"listed as exceptions but agree now: {stale}"
    assert agreeing >= 0.99 * len(ref), (agreeing, len(ref))
