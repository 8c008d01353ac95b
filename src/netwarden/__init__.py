"""netwarden: a host network auditor for Linux.

The stable Python API (see README): :func:`events`, :func:`replay` and :class:`Event`.
Nothing happens at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from netwarden.events import Event

if TYPE_CHECKING:
    from netwarden.capture.packets import ReplaySource

__version__ = "0.1.0"
__all__ = ["Event", "__version__", "events", "replay"]


def events(
    backend: str = "auto",
    *,
    filter: str | None = None,
    iface: str | None = None,
    all_netns: bool = False,
) -> Any:
    """An iterator of :class:`Event` from a live backend (``auto``: ebpf, conntrack, sniff).

    It has ``fileno()`` (readable when events are ready), ``stop()``, ``close()``, and works
    as a context manager. A filter expression or an interface means the packet backend.
    """
    from netwarden.errors import UsageError
    from netwarden.pipeline import open_backend

    if backend not in ("auto", "sniff", "ebpf", "conntrack"):
        raise UsageError(
            "unknown backend",
            option="backend",
            value=backend,
            allowed="auto, ebpf, conntrack, sniff",
        )
    return open_backend(backend, iface=iface, filter_expr=filter, all_netns=all_netns)


def replay(path: str, filter: str | None = None, **options: Any) -> ReplaySource:
    """An iterator of :class:`Event` over a pcap or pcapng file (the ``replay`` pipeline)."""
    from netwarden.capture.packets import ReplaySource

    return ReplaySource(path, filter, **options)
