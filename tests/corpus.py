"""Where tcpdump's test captures are: ``<repo>/../shared/pcaps/tcpdump-tests``."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "pcaps" / "tcpdump-tests"


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.iterdir() if p.is_file())
