"""Who owns a socket: sock_diag for (inode, uid, cgroup id), then a bounded /proc search.

sock_diag answers an exact 5-tuple lookup in ~10 µs with the socket's inode, uid and cgroup
v2 id. Turning the inode into a pid needs /proc/PID/fd, and a full scan of every process costs
hundreds of milliseconds, so the search here is bounded: processes of the socket's uid (and
cgroup) first, processes that appeared since the last search first, at most ``max_pids``
processes and ``budget`` seconds per lookup, and a global time allowance per second. Every
socket inode seen on the way is remembered (LRU), so a busy process is found in one step.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from netwarden.capture.netlink_socket import NetlinkError, NetlinkSocket, Overrun
from netwarden.events import Attribution, ProcessInfo
from netwarden.proc import ProcReader
from netwarden.wire.netlink import (
    AF_INET,
    AF_INET6,
    NETLINK_SOCK_DIAG,
    NLMSG_ERROR,
    TCP_LISTEN,
    SockInfo,
    decode_inet_diag,
    inet_diag_request,
    nlmsg_error,
    split_messages,
)

log = logging.getLogger(__name__)

IPPROTO_TCP = 6
IPPROTO_UDP = 17
_V4_ANY = bytes(4)
_V6_ANY = bytes(16)
_V4MAPPED = bytes(10) + b"\xff\xff"


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or, on hybrid
    systems, ``/sys/fs/cgroup/unified``), or None."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                if sep and right.split(" ", 1)[0] == "cgroup2":
                    return left.split(" ")[4]
    except OSError:
        pass
    return None


@dataclass
class SearchStats:
    lookups: int = 0
    sockdiag_found: int = 0
    sockdiag_missing: int = 0
    inode_cached: int = 0
    proc_found: int = 0
    proc_missed: int = 0
    proc_skipped: int = 0  # no allowance left: not searched
    scans: int = 0
    pids_scanned: int = 0
    scan_seconds: float = 0.0
    by_attribution: dict[str, int] = field(default_factory=dict)


class ProcSocketIndex:
    """socket inode → pid, from /proc/PID/fd, searched under a budget."""

    def __init__(
        self,
        proc_root: str = "/proc",
        *,
        cgroup_root: str | None = None,
        max_pids: int = 128,
        budget: float = 0.02,
        allowance_per_second: float = 0.25,
        cache_size: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = proc_root
        self.cgroup_root = cgroup_root if cgroup_root is not None else cgroup2_mount()
        self.max_pids = max_pids
        self.budget = budget
        self.allowance_per_second = allowance_per_second
        self.clock = clock
        self.cache_size = cache_size
        self._inodes: OrderedDict[int, int] = OrderedDict()
        self._known: set[int] = set()
        self._cgroup_of_pid: dict[int, int | None] = {}
        self._cgroup_ino: dict[str, int | None] = {}
        self._allowance = allowance_per_second
        self._allowance_at = clock()
        self.stats = SearchStats()

    # ---------------------------------------------------------------- helpers
    def _remember(self, inode: int, pid: int) -> None:
        self._inodes[inode] = pid
        self._inodes.move_to_end(inode)
        if len(self._inodes) > self.cache_size:
            self._inodes.popitem(last=False)

    def forget(self, inode: int) -> None:
        self._inodes.pop(inode, None)

    def _pid_cgroup(self, pid: int) -> int | None:
        if pid in self._cgroup_of_pid:
            return self._cgroup_of_pid[pid]
        cg: int | None = None
        if self.cgroup_root is not None:
            try:
                with open(f"{self.root}/{pid}/cgroup", "rb") as f:
                    data = f.read(65536)
            except OSError:
                data = b""
            for line in data.split(b"\n"):
                if line.startswith(b"0::"):
                    path = line[3:].decode("utf-8", "replace")
                    if path not in self._cgroup_ino:
                        if len(self._cgroup_ino) > 16384:
                            self._cgroup_ino.clear()
                        try:
                            ino: int | None = os.stat(self.cgroup_root + path).st_ino
                        except OSError:
                            ino = None
                        self._cgroup_ino[path] = ino
                    cg = self._cgroup_ino[path]
                    break
        self._cgroup_of_pid[pid] = cg
        return cg

    def _scan_pid(self, pid: int, target: str) -> bool:
        """Record every socket of ``pid``; whether ``target`` (``socket:[N]``) is one."""
        found = False
        try:
            dfd = os.open(f"{self.root}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            for name in os.listdir(dfd):
                try:
                    link = os.readlink(name, dir_fd=dfd)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    if link == target:
                        found = True
                    try:
                        self._remember(int(link[8:-1]), pid)
                    except ValueError:
                        continue
        except OSError:
            pass
        finally:
            os.close(dfd)
        return found

    def _pid_alive(self, pid: int) -> bool:
        return os.path.exists(f"{self.root}/{pid}")

    def _take_allowance(self) -> float:
        now = self.clock()
        self._allowance = min(
            self.allowance_per_second,
            self._allowance + (now - self._allowance_at) * self.allowance_per_second,
        )
        self._allowance_at = now
        return min(self.budget, self._allowance)

    # ---------------------------------------------------------------- the search
    def find(
        self, inode: int, *, uid: int | None = None, cgroup_id: int | None = None
    ) -> int | None:
        """The pid holding socket ``inode``, or None (not found within the bounds)."""
        if inode <= 0:
            return None
        pid = self._inodes.get(inode)
        if pid is not None:
            if self._pid_alive(pid):
                self.stats.inode_cached += 1
                return pid
            self._inodes.pop(inode, None)
        budget = self._take_allowance()
        if budget <= 0:
            self.stats.proc_skipped += 1
            return None
        start = self.clock()
        deadline = start + budget
        target = f"socket:[{inode}]"
        self.stats.scans += 1
        try:
            pids = [int(e.name) for e in os.scandir(self.root) if e.name.isdigit()]
        except OSError:
            return None
        new = [p for p in pids if p not in self._known]  # appeared since the last search
        alive = set(pids)
        self._known = alive
        for gone in [p for p in self._cgroup_of_pid if p not in alive]:
            del self._cgroup_of_pid[gone]
        new.sort(reverse=True)
        new_set = set(new)
        order = new + sorted((p for p in pids if p not in new_set), reverse=True)
        scanned = 0
        result = None
        # without the cgroup2 mount (``ip netns exec`` remounts /sys) only the uid filters
        by_cgroup = cgroup_id is not None and self.cgroup_root is not None
        deferred: list[int] = []  # the socket's uid, another cgroup: searched last
        for p in order:
            if scanned >= self.max_pids or self.clock() > deadline:
                break
            if uid is not None:
                try:
                    if os.stat(f"{self.root}/{p}").st_uid != uid:
                        continue
                except OSError:
                    continue
            if by_cgroup:
                cg = self._pid_cgroup(p)
                if cg is not None and cg != cgroup_id:
                    deferred.append(p)
                    continue
            scanned += 1
            if self._scan_pid(p, target):
                result = p
                break
        if result is None:
            for p in deferred:
                if scanned >= self.max_pids or self.clock() > deadline:
                    break
                scanned += 1
                if self._scan_pid(p, target):
                    result = p
                    break
        self.stats.pids_scanned += scanned
        self.stats.scan_seconds += self.clock() - start
        self._allowance -= self.clock() - start
        if result is None:
            self.stats.proc_missed += 1
        else:
            self.stats.proc_found += 1
        return result


class SockDiag:
    """Exact socket lookups through NETLINK_SOCK_DIAG."""

    def __init__(self) -> None:
        self.nl = NetlinkSocket(NETLINK_SOCK_DIAG)
        self.errors = 0

    def close(self) -> None:
        self.nl.close()

    def _query(self, req: bytes, seq: int, *, dump: bool) -> list[SockInfo]:
        self.nl.send(req)
        out: list[SockInfo] = []
        while True:
            if not self.nl.wait(2.0):
                self.errors += 1
                return out
            try:
                data = self.nl.recv()
            except Overrun:
                self.errors += 1
                return out
            if data is None:
                continue
            msgs, _ok = split_messages(data)
            for m in msgs:
                if m.seq != seq:
                    continue
                if m.type == NLMSG_ERROR:
                    err = nlmsg_error(m.payload)
                    if err and err != errno.ENOENT:
                        self.errors += 1
                    return out
                if m.type == 3:  # NLMSG_DONE
                    return out
                info = decode_inet_diag(m.payload)
                if info is not None:
                    out.append(info)
                if not dump:
                    return out

    def lookup(
        self, family: int, proto: int, local: bytes, lport: int, remote: bytes, rport: int
    ) -> SockInfo | None:
        """The socket of this connection (``family`` 4 or 6), or None.

        TCP is looked up by its (local, remote) identity; UDP as the kernel would deliver
        a datagram from ``remote`` to ``local`` (which also finds unconnected sockets).
        """
        af = AF_INET if family == 4 else AF_INET6
        seq = self.nl.next_seq()
        if proto == IPPROTO_UDP:
            req = inet_diag_request(seq, af, proto, src=remote, sport=rport, dst=local, dport=lport)
        else:
            req = inet_diag_request(seq, af, proto, src=local, sport=lport, dst=remote, dport=rport)
        try:
            found = self._query(req, seq, dump=False)
        except (OSError, NetlinkError):
            self.errors += 1
            return None
        return found[0] if found else None

    def listener(self, family: int, local: bytes, lport: int) -> SockInfo | None:
        """The TCP socket listening on ``local``:``lport`` (or the wildcard address)."""
        af = AF_INET if family == 4 else AF_INET6
        seq = self.nl.next_seq()
        req = inet_diag_request(seq, af, IPPROTO_TCP, states=1 << TCP_LISTEN, dump=True)
        try:
            socks = self._query(req, seq, dump=True)
        except (OSError, NetlinkError):
            self.errors += 1
            return None
        best = None
        for s in socks:
            if s.sport != lport:
                continue
            if s.src == local:
                return s
            if s.src in (_V4_ANY, _V6_ANY):
                best = s
        if best is None and family == 4:
            # a dual-stack IPv6 listener accepts IPv4 too
            return self._v6_listener_for_v4(local, lport)
        return best

    def _v6_listener_for_v4(self, local: bytes, lport: int) -> SockInfo | None:
        seq = self.nl.next_seq()
        req = inet_diag_request(seq, AF_INET6, IPPROTO_TCP, states=1 << TCP_LISTEN, dump=True)
        try:
            socks = self._query(req, seq, dump=True)
        except (OSError, NetlinkError):
            return None
        for s in socks:
            if s.sport == lport and s.src in (_V6_ANY, _V4MAPPED + local):
                return s
        return None


class OwnerLookup:
    """(family, proto, local end, remote end) → (ProcessInfo | None, attribution)."""

    def __init__(
        self,
        *,
        proc: ProcReader | None = None,
        index: ProcSocketIndex | None = None,
        sockdiag: SockDiag | None = None,
    ) -> None:
        self.proc = proc if proc is not None else ProcReader()
        self.index = index if index is not None else ProcSocketIndex(self.proc.root)
        self.sockdiag = sockdiag if sockdiag is not None else SockDiag()

    @property
    def stats(self) -> SearchStats:
        return self.index.stats

    def close(self) -> None:
        self.sockdiag.close()

    def socket(
        self, family: int, proto: int, local: bytes, lport: int, remote: bytes, rport: int
    ) -> SockInfo | None:
        s = self.sockdiag.lookup(family, proto, local, lport, remote, rport)
        if proto == IPPROTO_TCP and (s is None or s.inode == 0):
            # an inbound connection not accepted yet: its owner is the listener
            listener = self.sockdiag.listener(family, local, lport)
            if listener is not None:
                return listener
        return s

    def pid_of(self, sock: SockInfo) -> int | None:
        return self.index.find(sock.inode, uid=sock.uid, cgroup_id=sock.cgroup_id)

    def owner(
        self,
        family: int,
        proto: int,
        local: bytes,
        lport: int | None,
        remote: bytes,
        rport: int | None,
        *,
        uid: int | None = None,
        gid: int | None = None,
        found: Attribution = Attribution.SOCKET,
    ) -> tuple[ProcessInfo | None, Attribution]:
        """The process owning the local end, and how it was found.

        ``uid``/``gid`` known from elsewhere (an NFQUEUE packet) are kept when no process
        is found. ``found`` is the attribution reported on success.
        """
        st = self.index.stats
        st.lookups += 1
        sock = None
        if proto in (IPPROTO_TCP, IPPROTO_UDP) and lport is not None and rport is not None:
            sock = self.socket(family, proto, local, lport, remote, rport)
        if sock is None:
            st.sockdiag_missing += 1
        else:
            st.sockdiag_found += 1
            if uid is None:
                uid = sock.uid
            pid = self.pid_of(sock)
            if pid is not None:
                info = self.proc.info(pid)
                if info.uid is None and uid is not None:
                    info = ProcessInfo(pid=info.pid, comm=info.comm, uid=uid, gid=gid)
                self._count(found)
                return info, found
        self._count(Attribution.NONE)
        if uid is None:
            return None, Attribution.NONE
        return ProcessInfo(uid=uid, gid=gid, user=self.proc.user(uid)), Attribution.NONE

    def _count(self, how: Attribution) -> None:
        d = self.index.stats.by_attribution
        d[str(how)] = d.get(str(how), 0) + 1
