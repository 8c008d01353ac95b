"""``--exec CMD``: run a command for ``scan``, ``block`` and ``unblock`` events.

The command line is split as a shell would (``shlex``) but no shell runs it, and nothing of
the event is interpolated into it: every event field is in ``NETWARDEN_<FIELD>`` (upper case;
lists joined by commas; null as an empty string; booleans 1/0), and the whole event as its
JSON line in ``NETWARDEN_JSON``. Commands run on a small pool (``concurrency``) with a
``timeout``; when the queue is full the event is dropped and counted, never blocking the
capture loop.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import subprocess
import threading
from collections.abc import Mapping
from typing import Any

from netwarden.errors import UsageError
from netwarden.events import Event

log = logging.getLogger(__name__)

HOOK_EVENTS = frozenset({"scan", "block", "unblock"})


def environment(e: Event, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The event's fields as ``NETWARDEN_*`` variables (added to ``base``)."""
    env = dict(os.environ if base is None else base)
    d = e.to_dict()
    for key, value in d.items():
        if value is None:
            text = ""
        elif isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, list | tuple):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        env["NETWARDEN_" + key.upper()] = text.replace("\0", "")
    env["NETWARDEN_JSON"] = e.to_json()
    return env


class ExecHook:
    """Runs ``command`` for each hook event, asynchronously, bounded."""

    def __init__(
        self,
        command: str,
        *,
        timeout: float = 30.0,
        concurrency: int = 4,
        queue_size: int = 256,
        events: frozenset[str] = HOOK_EVENTS,
    ) -> None:
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(str(exc), option="--exec", value=command) from None
        if not self.argv:
            raise UsageError("empty command", option="--exec", value=command)
        self.timeout = timeout
        self.events = events
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.failed = 0
        self.ran = 0
        self._lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._work, name=f"nw-exec-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for t in self._workers:
            t.start()

    def __call__(self, e: Event) -> None:
        if str(e.event) not in self.events:
            return
        try:
            self._queue.put_nowait(e)
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def _work(self) -> None:
        while True:
            e = self._queue.get()
            if e is None:
                return
            try:
                proc = subprocess.run(
                    self.argv,
                    env=environment(e),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    timeout=self.timeout,
                    check=False,
                )
                with self._lock:
                    self.ran += 1
                    if proc.returncode != 0:
                        self.failed += 1
                if proc.returncode != 0:
                    err = proc.stderr.decode(errors="replace").strip().splitlines()
                    log.warning(
                        "--exec %s exited %d: %s",
                        self.argv[0],
                        proc.returncode,
                        err[-1][:200] if err else "",
                    )
            except subprocess.TimeoutExpired:
                with self._lock:
                    self.failed += 1
                log.warning("--exec %s killed after %g s", self.argv[0], self.timeout)
            except OSError as exc:
                with self._lock:
                    self.failed += 1
                log.warning("--exec %s: %s", self.argv[0], exc.strerror)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"ran": self.ran, "failed": self.failed, "dropped": self.dropped}

    def close(self, wait: float = 5.0) -> None:
        """Let queued commands finish (up to ``wait`` seconds each worker), then stop."""
        for _ in self._workers:
            try:
                self._queue.put(None, timeout=wait)
            except queue.Full:
                break
        for t in self._workers:
            t.join(wait)
