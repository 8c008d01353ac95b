"""``netwarden doctor``: each capture backend and blocker, available or not, why, how to fix.

The checks are light probes of the real thing (open the socket, load the library, find the
kernel file) without attaching anything to the host. Each is a function returning a
:class:`Check`; none raises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    name: str
    kind: str  # backend | blocker | feature
    ok: bool
    why: str
    fix: str = ""


def _lib(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    return None


def _caps() -> int:
    """The effective capability set of this process (0 when unreadable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
CAP_BPF = 39


def _has(cap: int) -> bool:
    return bool(_caps() >> cap & 1)


def check_sniff() -> Check:
    if _lib(("libpcap.so.0.8", "libpcap.so.1", "libpcap.so")) is None:
        return Check("sniff", "backend", False, "libpcap is missing", "apt-get install libpcap0.8")
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.close()
    except PermissionError:
        return Check(
            "sniff",
            "backend",
            False,
            "no CAP_NET_RAW for AF_PACKET",
            "run as root or: setcap cap_net_raw+ep $(readlink -f $(which python3))",
        )
    except OSError as exc:
        return Check("sniff", "backend", False, f"AF_PACKET: {exc.strerror}")
    return Check("sniff", "backend", True, "AF_PACKET ring and libpcap filters work")


def check_ebpf() -> Check:
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return Check(
            "ebpf",
            "backend",
            False,
            "the kernel has no BTF (/sys/kernel/btf/vmlinux)",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    if _lib(("libbpf.so.1",)) is None:
        return Check("ebpf", "backend", False, "libbpf.so.1 is missing", "apt-get install libbpf1")
    if not (_has(CAP_BPF) or _has(CAP_SYS_ADMIN)):
        return Check("ebpf", "backend", False, "no CAP_BPF/CAP_SYS_ADMIN", "run as root")
    import importlib

    from netwarden.errors import MissingCapability

    try:
        ebpf = importlib.import_module("netwarden.capture.ebpf")
        refused: dict[str, str] = ebpf.check()  # loads and attaches once, then detaches
    except ImportError:
        return Check("ebpf", "backend", False, "the eBPF backend is not in this build")
    except MissingCapability as exc:
        return Check("ebpf", "backend", False, exc.what, exc.fix)
    if refused:
        hooks = "; ".join(f"{k}: {v}" for k, v in sorted(refused.items()))
        return Check("ebpf", "backend", True, f"works without optional hooks ({hooks})")
    return Check("ebpf", "backend", True, "every hook loads and attaches")


def check_conntrack() -> Check:
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    except OSError as exc:
        return Check(
            "conntrack",
            "backend",
            False,
            f"netlink netfilter: {exc.strerror}",
            "modprobe nf_conntrack_netlink",
        )
    try:
        s.bind((0, 1 | 4))  # NEW and DESTROY groups
    except PermissionError:
        return Check(
            "conntrack", "backend", False, "no CAP_NET_ADMIN for conntrack events", "run as root"
        )
    except OSError as exc:
        return Check(
            "conntrack",
            "backend",
            False,
            f"conntrack events: {exc.strerror}",
            "modprobe nf_conntrack_netlink",
        )
    finally:
        s.close()
    return Check("conntrack", "backend", True, "conntrack NEW/DESTROY events can be read")


def check_nft() -> Check:
    if _lib(("libnftables.so.1",)) is None:
        return Check(
            "nftables",
            "blocker",
            False,
            "libnftables.so.1 is missing",
            "apt-get install libnftables1",
        )
    if not _has(CAP_NET_ADMIN):
        return Check("nftables", "blocker", False, "no CAP_NET_ADMIN", "run as root")
    return Check("nftables", "blocker", True, "libnftables present, CAP_NET_ADMIN held")


def check_xdp() -> Check:
    e = check_ebpf()
    if not e.ok:
        return Check("xdp", "blocker", False, f"needs eBPF: {e.why}", e.fix)
    return Check("xdp", "blocker", True, "eBPF available for the XDP drop path")


def check_nfqueue() -> Check:
    if shutil.which("iptables") is None:
        return Check(
            "nfqueue hold", "feature", False, "iptables is missing", "apt-get install iptables"
        )
    if not _has(CAP_NET_ADMIN):
        return Check("nfqueue hold", "feature", False, "no CAP_NET_ADMIN", "run as root")
    return Check("nfqueue hold", "feature", True, "iptables -j NFQUEUE available")


def check_cgroup2() -> Check:
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        mounts = ""
    if " cgroup2 " in mounts:
        return Check("cgroup2", "feature", True, "a cgroup2 hierarchy is mounted")
    if _has(CAP_SYS_ADMIN):
        return Check(
            "cgroup2",
            "feature",
            True,
            "no cgroup2 mounted; netwarden mounts one under /run/netwarden",
        )
    return Check(
        "cgroup2",
        "feature",
        False,
        "no cgroup2 mounted and no CAP_SYS_ADMIN to mount it",
        "mount -t cgroup2 none /sys/fs/cgroup/unified, or run as root",
    )


CHECKS: tuple[Callable[[], Check], ...] = (
    check_ebpf,
    check_conntrack,
    check_sniff,
    check_nft,
    check_xdp,
    check_nfqueue,
    check_cgroup2,
)


def run_checks() -> list[Check]:
    out = []
    for fn in CHECKS:
        try:
            out.append(fn())
        except Exception as exc:  # a probe must never take the table down
            out.append(
                Check(fn.__name__.removeprefix("check_"), "?", False, f"check failed: {exc}")
            )
    return out


def render(checks: list[Check]) -> str:
    rows = [("what", "kind", "status", "why", "fix")]
    for c in checks:
        rows.append((c.name, c.kind, "ok" if c.ok else "UNAVAILABLE", c.why, c.fix or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for r in rows:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    auto = next((c.name for c in checks if c.kind == "backend" and c.ok), None)
    lines.append("")
    lines.append(f"--backend auto picks: {auto or 'nothing (no backend works here)'}")
    return "\n".join(line.rstrip() for line in lines) + "\n"
