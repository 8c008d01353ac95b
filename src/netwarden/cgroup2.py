"""Find the cgroup v2 hierarchy, or mount one, for attaching cgroup eBPF programs.

cgroup eBPF programs attached to the root of the v2 hierarchy see every socket of the host,
also on hosts in "hybrid" mode (v1 controllers, v2 without controllers) and on hosts where
no v2 hierarchy is mounted at all: then netwarden mounts one (at ``/run/netwarden/cgroup2``
by default). Mounting it changes nothing for the processes; the mount stays so that the next
start finds it.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass

from netwarden.errors import MissingCapability

log = logging.getLogger(__name__)

DEFAULT_MOUNT = "/run/netwarden/cgroup2"


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/PID/mountinfo (the fields netwarden needs)."""

    root: str  # the path inside the filesystem that is mounted ("/" for the whole hierarchy)
    mount_point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        c = field[i]
        code = field[i + 1 : i + 4]
        if c == "\\" and len(code) == 3 and all(d in "01234567" for d in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a mountinfo text; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf = left.split()
        rf = right.split()
        if len(lf) < 5 or len(rf) < 2:
            continue
        mounts.append(Mount(_unescape(lf[3]), _unescape(lf[4]), rf[0], _unescape(rf[1])))
    return mounts


def find_cgroup2(mountinfo: str) -> str | None:
    """The mount point of the whole cgroup v2 hierarchy in a mountinfo text, if any.

    A mount of the hierarchy's root (root field ``/``) is preferred; a mount of a subtree
    (a container's view) is returned only when no root mount exists.
    """
    best = None
    for m in parse_mountinfo(mountinfo):
        if m.fstype != "cgroup2":
            continue
        if m.root == "/":
            return m.mount_point
        if best is None:
            best = m.mount_point
    return best


def cgroup2_root(
    *, mountinfo_path: str = "/proc/self/mountinfo", mount_dir: str = DEFAULT_MOUNT
) -> str:
    """The cgroup v2 root directory; mounts one at ``mount_dir`` when none is mounted.

    Raises MissingCapability when none is mounted and mounting fails (not root, or a
    kernel without cgroup v2).
    """
    try:
        with open(mountinfo_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        raise MissingCapability(
            f"cannot read {mountinfo_path} ({exc.strerror})", "is /proc mounted?"
        ) from exc
    found = find_cgroup2(text)
    if found is not None:
        return found
    try:
        os.makedirs(mount_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise MissingCapability(
            f"no cgroup v2 hierarchy is mounted and {mount_dir} cannot be made ({exc.strerror})",
            "run as root, or mount one: mount -t cgroup2 none /sys/fs/cgroup/unified",
        ) from exc
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    libc.mount.restype = ctypes.c_int
    if libc.mount(b"cgroup2", os.fsencode(mount_dir), b"cgroup2", 0, None) != 0:
        err = ctypes.get_errno()
        raise MissingCapability(
            f"no cgroup v2 hierarchy is mounted and mounting one at {mount_dir} failed "
            f"({os.strerror(err)})",
            "run as root on a kernel with cgroup v2 (CONFIG_CGROUPS, cgroup2 in /proc/filesystems)",
        )
    log.info("mounted the cgroup v2 hierarchy at %s", mount_dir)
    return mount_dir
