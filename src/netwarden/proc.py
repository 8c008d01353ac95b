"""pid → :class:`~netwarden.events.ProcessInfo`, from a /proc tree (the root is a parameter).

What the kernel captured at the hook (pid, comm, uid, gid) is authoritative and kept when the
process has gone before /proc could be read; /proc adds exe, cmdline, ppid, the user name,
and the systemd unit and container id from the cgroup path. Results are cached by
(pid, start time), so a recycled pid never inherits an old process's data.

Every string is sanitized (control characters escaped) and capped in length here, so no
hostile process name or command line reaches an output unescaped.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from netwarden.events import ProcessInfo
from netwarden.output import sanitize

log = logging.getLogger(__name__)

MAX_CMDLINE = 4096
MAX_NAME = 256

_CONTAINER_RE = re.compile(
    r"(?:docker|libpod|cri-containerd|crio|containerd)[-/:]([0-9a-f]{64})"
    r"|/(?:docker|kubepods[^/]*|lxc\.payload)/(?:[^/]+/)*?([0-9a-f]{64})"
    r"|^/lxc(?:\.payload)?[./]([^/]+)"
)
_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap", ".timer")


def _cap(text: str, limit: int) -> str:
    text = sanitize(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unit_and_container(cgroup_path: str) -> tuple[str | None, str | None]:
    """The systemd unit and container id named by a cgroup path.

    The unit is the innermost ``*.service``/``*.scope``/... component (``sshd.service``,
    ``session-3.scope``, an app's unit under ``user@1000.service``); the container id is a
    64-hex id of docker, podman, containerd or CRI-O, or an LXC container's name.
    """
    unit = None
    for part in reversed(cgroup_path.split("/")):
        if part.endswith(_UNIT_SUFFIXES):
            unit = part
            break
    container = None
    m = _CONTAINER_RE.search(cgroup_path)
    if m is not None:
        container = next(g for g in m.groups() if g)
        if unit is not None and container in unit:
            # docker-<id>.scope is the container's own scope, not a service unit
            unit = None
    return (
        None if unit is None else _cap(unit, MAX_NAME),
        None if container is None else _cap(container, MAX_NAME),
    )


def _cgroup_path(text: str) -> str:
    """The v2 path (``0::/...``) of /proc/PID/cgroup, else the v1 systemd one."""
    v1 = ""
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            return path
        if controllers == "name=systemd":
            v1 = path
    return v1


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


class ProcReader:
    """Reads process details under ``root`` (default ``/proc``), cached by (pid, start time)."""

    def __init__(
        self,
        root: str = "/proc",
        *,
        cache_size: int = 8192,
        user_name: Callable[[int], str | None] = _user_name,
    ) -> None:
        self.root = root
        self.cache_size = cache_size
        self._user_name = user_name
        self._users: dict[int, str | None] = {}
        self._cache: OrderedDict[tuple[int, int], ProcessInfo] = OrderedDict()
        self.vanished = 0  # lookups of processes already gone

    # ---------------------------------------------------------------- raw readers
    def _read(self, pid: int, name: str) -> bytes | None:
        try:
            with open(os.path.join(self.root, str(pid), name), "rb") as f:
                return f.read(1 << 20)
        except OSError:
            return None

    def stat(self, pid: int) -> tuple[str, int, int] | None:
        """(comm, ppid, start time in clock ticks) from /proc/PID/stat, or None."""
        data = self._read(pid, "stat")
        if not data:
            return None
        # comm is in parentheses and may itself contain ')' and spaces: split at the last ')'
        lp = data.find(b"(")
        rp = data.rfind(b")")
        if lp < 0 or rp < lp:
            return None
        fields = data[rp + 2 :].split()
        try:
            ppid = int(fields[1])
            start = int(fields[19])
        except (IndexError, ValueError):
            return None
        return data[lp + 1 : rp].decode("utf-8", "replace"), ppid, start

    def start_time(self, pid: int) -> int | None:
        st = self.stat(pid)
        return None if st is None else st[2]

    def _ids(self, pid: int) -> tuple[int | None, int | None, int | None]:
        """(tgid, uid, gid) from /proc/PID/status."""
        data = self._read(pid, "status")
        tgid = uid = gid = None
        if data:
            for line in data.split(b"\n"):
                try:
                    if line.startswith(b"Tgid:"):
                        tgid = int(line.split()[1])
                    elif line.startswith(b"Uid:"):
                        uid = int(line.split()[1])
                    elif line.startswith(b"Gid:"):
                        gid = int(line.split()[1])
                except (IndexError, ValueError):
                    continue
        return tgid, uid, gid

    def user(self, uid: int | None) -> str | None:
        if uid is None:
            return None
        if uid not in self._users:
            if len(self._users) > 4096:
                self._users.clear()
            name = self._user_name(uid)
            self._users[uid] = None if name is None else _cap(name, MAX_NAME)
        return self._users[uid]

    # ---------------------------------------------------------------- the lookup
    def info(
        self,
        pid: int,
        *,
        start_time: int | None = None,
        comm: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> ProcessInfo:
        """Everything known of ``pid``; kernel-captured ``comm``/``uid``/``gid`` win.

        ``start_time`` (clock ticks since boot, as /proc/PID/stat) identifies the process
        when the caller captured it; a live process with another start time is a recycled
        pid, and then only the captured fields are returned.
        """
        st = self.stat(pid)
        if st is None or (start_time is not None and st[2] != start_time):
            self.vanished += 1
            return ProcessInfo(
                pid=pid,
                uid=uid,
                gid=gid,
                user=self.user(uid),
                comm=None if comm is None else _cap(comm, MAX_NAME),
            )
        key = (pid, st[2])
        cached = self._cache.get(key)
        if cached is None:
            cached = self._load(pid, st)
            self._cache[key] = cached
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        changes: dict[str, object] = {}
        if comm is not None:
            changes["comm"] = _cap(comm, MAX_NAME)
        if uid is not None and uid != cached.uid:
            changes["uid"] = uid
            changes["user"] = self.user(uid)
        if gid is not None and gid != cached.gid:
            changes["gid"] = gid
        return replace(cached, **changes) if changes else cached  # type: ignore[arg-type]

    def _load(self, pid: int, st: tuple[str, int, int]) -> ProcessInfo:
        comm, ppid, _start = st
        tgid, uid, gid = self._ids(pid)
        if tgid is not None and tgid > 0 and tgid != pid:
            # (a process being reaped shows Tgid 0: keep the pid we were given)
            # a thread id: describe the process (the interface's pid is the tgid)
            main = self.stat(tgid)
            if main is not None:
                comm, ppid = main[0], main[1]
            pid = tgid
        raw = self._read(pid, "cmdline")
        cmdline = None
        if raw:
            cmdline = _cap(
                raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace"), MAX_CMDLINE
            )
        try:
            exe: str | None = _cap(
                os.readlink(os.path.join(self.root, str(pid), "exe")), MAX_CMDLINE
            )
        except OSError:
            exe = None
        cg = self._read(pid, "cgroup")
        unit, container = (
            unit_and_container(_cgroup_path(cg.decode("utf-8", "replace"))) if cg else (None, None)
        )
        return ProcessInfo(
            pid=pid,
            ppid=ppid,
            uid=uid,
            gid=gid,
            user=self.user(uid),
            comm=_cap(comm, MAX_NAME),
            exe=exe,
            cmdline=cmdline,
            unit=unit,
            container=container,
        )

    def ancestors(self, pid: int, depth: int = 3) -> list[tuple[int, str]]:
        """The parent chain [(ppid, comm), (its ppid, comm), ...], up to ``depth`` entries."""
        out: list[tuple[int, str]] = []
        st = self.stat(pid)
        while st is not None and len(out) < depth and st[1] > 0:
            parent = st[1]
            st = self.stat(parent)
            if st is None:
                break
            out.append((parent, _cap(st[0], MAX_NAME)))
        return out
