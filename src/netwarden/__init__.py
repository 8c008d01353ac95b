"""netwarden: a host network auditor for Linux.

The stable Python API (see README): :func:`events`, :func:`replay` and :class:`Event`.
Nothing happens at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from netwarden.events import Event

if TYPE_CHECKING:
    from netwarden.capture.packets import ReplaySource, SniffSource

__version__ = "0.1.0"
__all__ = ["Event", "__version__", "events", "replay"]


def events(
    backend: str = "auto",
    *,
    filter: str | None = None,
    iface: str | None = None,
    all_netns: bool = False,
    **options: Any,
) -> SniffSource:
    """An iterator of :class:`Event` from a live backend.

    It has ``fileno()`` (readable when events are ready), ``stop()``, ``close()``, and works
    as a context manager. This version has the ``sniff`` backend (``auto`` picks it).
    """
    from netwarden.capture.packets import SniffSource
    from netwarden.errors import MissingCapability, UsageError

    if backend not in ("auto", "sniff", "ebpf", "conntrack"):
        raise UsageError(
            "unknown backend",
            option="backend",
            value=backend,
            allowed="auto, ebpf, conntrack, sniff",
        )
    if backend in ("ebpf", "conntrack") or all_netns:
        raise MissingCapability(
            f"backend {backend!r} / all_netns is not in this version", "use backend='sniff'"
        )
    return SniffSource(iface, filter, **options)


def replay(path: str, filter: str | None = None, **options: Any) -> ReplaySource:
    """An iterator of :class:`Event` over a pcap or pcapng file (the ``replay`` pipeline)."""
    from netwarden.capture.packets import ReplaySource

    return ReplaySource(path, filter, **options)
