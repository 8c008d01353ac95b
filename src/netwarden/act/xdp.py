"""The XDP fast path: drop new connections of blocked sources before the network stack, and
drop a port scanner at its threshold probe with no user-space round trip.

The program (``src/netwarden/bpf/xdp_block.bpf.c``, built by ``scripts/build-bpf.sh`` into
``build/bpf/xdp_block.bpf.o``) is loaded through :mod:`netwarden.capture.libbpf` and
attached to one interface with a BPF link: it goes away when the link is closed, and also
when the process that attached it dies, so a crash never leaves an XDP program (nor its
blocks) behind. :meth:`XdpBlocker.sync` puts the persisted blocks back on the next start.

API::

    xdp = XdpBlocker("eth0").attach()          # MissingCapability (exit 3) when it cannot
    xdp.configure(scan_ports=3, window=60.0, block_for=3600.0)   # the in-kernel threshold
    xdp.set_allow([ip_network("10.0.0.0/8"), ...])    # never counted nor blocked by it
    xdp.block("192.0.2.7", until=time.time() + 3600)  # an address or CIDR; until None: no end
    xdp.unblock("192.0.2.7")                   # -> whether it was there
    xdp.blocked()                              # [XdpBlock(net, since, until, drops, auto)]
    xdp.poll(timeout_ms=0)                     # [XdpDetection]: in-kernel threshold blocks
    xdp.counters()                             # {"dropped_blocked": ..., ...} (all CPUs)
    xdp.tracked()                              # [XdpTracked]: sources being counted now
    xdp.expire()                               # remove entries past their time; returns them
    xdp.detach()                               # nothing of it stays in the kernel

What "new" means at XDP, with no conntrack this early (the C file has the details): TCP
segments without ACK and without RST (SYN, FIN/NULL/Xmas probes); UDP datagrams that no
*connected* socket of this namespace would receive (so replies to flows opened with
``connect()`` pass); ICMP/ICMPv6 requests (echo, timestamp, ...). Replies, errors, neighbour
discovery, ARP and established TCP always pass; other protocols always pass.

The in-kernel threshold is netwarden's port-scan rule without its scoring: more than
``scan_ports`` distinct TCP/UDP ports of one destination address within ``window`` seconds
blocks the source and drops the packet that crossed it. At most 15 ports (the kernel keeps
the last 16 distinct ports per source and destination). Allowlisted sources are never
counted; unlike the policy, the kernel cannot exempt a peer with an established connection.

Times handed in and out are Unix seconds; the kernel keeps CLOCK_BOOTTIME nanoseconds.
There is no guard here: callers check the policy's refusal (allowlist, own addresses)
before :meth:`XdpBlocker.block`, as :class:`netwarden.act.blocker.Blocker` does. One thread
at a time (the daemon calls it under its pipeline lock).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from netwarden.detect.policy import IPNetwork, as_network
from netwarden.errors import MissingCapability, RuntimeFailure, UsageError

if TYPE_CHECKING:
    from netwarden.capture.libbpf import BpfObject, Libbpf, RingBuffer

log = logging.getLogger(__name__)

__all__ = [
    "COUNTER_NAMES",
    "MAX_SCAN_PORTS",
    "OBJECT_NAME",
    "PROGRAM_NAME",
    "XdpBlock",
    "XdpBlocker",
    "XdpDetection",
    "XdpTracked",
    "find_object",
]

OBJECT_NAME: Final = "xdp_block.bpf.o"
PROGRAM_NAME: Final = "netwarden"
SLOTS: Final = 16
#: the highest ``scan_ports`` the kernel can count (it remembers SLOTS distinct ports)
MAX_SCAN_PORTS: Final = SLOTS - 1

#: nw_xdp_stats, in the order of the NW_XS_* enum of the C file
COUNTER_NAMES: Final = (
    "packets",  # IP packets seen
    "new",  # new-connection packets judged (of blocked sources, or counted by the threshold)
    "dropped_blocked",  # dropped: the source is blocked
    "dropped_threshold",  # dropped: the packet that crossed the threshold
    "auto_blocks",  # sources blocked by the threshold
    "detected",  # threshold crossings (blocking or only reporting)
    "events_lost",  # the ring buffer was full: a crossing not reported to user space
    "allowed",  # attempts of allowlisted sources (not counted)
    "attempts",  # TCP/UDP attempts counted by the threshold
    "track_failed",  # the per-source map refused an update
    "expired",  # blocks found past their time (and removed) by the program
    "unparsed",  # truncated or unusual headers (passed)
)

# layouts mirrored from xdp_block.bpf.c (little-endian hosts; "<" = no padding, which the
# C structs have none of)
_CFG = struct.Struct("<IIQQ")  # scan_ports, flags, window_ns, block_ns
_BLOCK = struct.Struct("<QQQII")  # until_ns, since_ns, drops, flags, pad
_LPM = struct.Struct("<I16s")  # prefixlen, addr
_SCAN_KEY = struct.Struct("<16s16s")
_SCAN = struct.Struct(f"<{SLOTS}Q{SLOTS}H")
_EVENT = struct.Struct(f"<16s16sQQ{SLOTS}HIBBH")
_COUNTERS = struct.Struct(f"<{len(COUNTER_NAMES)}Q")

_CFG_BLOCK: Final = 0x1
_BLOCK_AUTO: Final = 0x1
_V4_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"

# kernel ABI constants
_BPF_XDP: Final = 37  # enum bpf_attach_type
_XDP_FLAGS_SKB_MODE: Final = 1 << 1
_XDP_FLAGS_DRV_MODE: Final = 1 << 2
_ATTACH_MODES: Final = {0: "none", 1: "native", 2: "generic", 3: "offload", 4: "multi"}
_MODES: Final = {"auto": 0, "native": _XDP_FLAGS_DRV_MODE, "generic": _XDP_FLAGS_SKB_MODE}


class _LinkCreateOpts(ctypes.Structure):
    """The head of struct bpf_link_create_opts (libbpf 1.1): ``sz`` says how much we pass."""

    _fields_ = (("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32))


class _XdpQueryOpts(ctypes.Structure):
    """struct bpf_xdp_query_opts (libbpf 1.1)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 7),
    )


@dataclass(frozen=True, slots=True)
class XdpBlock:
    """A block the kernel holds: an address (a /32 or /128) or a CIDR."""

    net: IPNetwork
    since: float
    #: Unix seconds, None = no timeout
    until: float | None
    #: packets dropped because of it
    drops: int
    #: made by the in-kernel threshold (not by user space)
    auto: bool


@dataclass(frozen=True, slots=True)
class XdpDetection:
    """The in-kernel threshold fired: ``src`` reached ``ports`` of ``dst`` within the window."""

    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    ports: tuple[int, ...]
    at: float
    #: the block's end (Unix seconds); None without timeout or when not blocked
    until: float | None
    #: the IP protocol of the packet that crossed the threshold
    ipproto: int
    #: whether the kernel blocked the source (else it only reported the crossing)
    blocked: bool


@dataclass(frozen=True, slots=True)
class XdpTracked:
    """A source being counted: its distinct ports of ``dst`` within the window."""

    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    ports: tuple[int, ...]
    last: float


def find_object(path: str | os.PathLike[str] | None = None) -> str:
    """The XDP object file: ``path``, ``$NETWARDEN_XDP_OBJ``, next to the package, or the
    repository's ``build/bpf``. MissingCapability when none exists."""
    from netwarden.capture.libbpf import find_object as _find_object

    return _find_object(OBJECT_NAME, "NETWARDEN_XDP_OBJ", "XDP", path)


def _boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _addr16(addr: IPv4Address | IPv6Address) -> bytes:
    return _V4_PREFIX + addr.packed if addr.version == 4 else addr.packed


def _from16(raw: bytes) -> IPv4Address | IPv6Address:
    if raw[:12] == _V4_PREFIX:
        return IPv4Address(raw[12:])
    return IPv6Address(raw)


def _lpm_key(net: IPNetwork) -> bytes:
    plen = net.prefixlen + (96 if net.version == 4 else 0)
    return _LPM.pack(plen, _addr16(net.network_address))


def _net_from_lpm(raw: bytes) -> IPNetwork:
    plen, addr = _LPM.unpack(raw)
    a = _from16(addr)
    if a.version == 4:
        return IPv4Network((a, max(0, plen - 96)))
    return IPv6Network((a, plen))


def _host_net(addr: IPv4Address | IPv6Address) -> IPNetwork:
    return IPv4Network(addr) if addr.version == 4 else IPv6Network(addr)


def _is_host(net: IPNetwork) -> bool:
    return net.prefixlen == net.max_prefixlen


class XdpBlocker:
    """netwarden's XDP program on one interface, and the maps it reads."""

    def __init__(
        self,
        iface: str,
        *,
        mode: str = "auto",
        obj_path: str | os.PathLike[str] | None = None,
        max_sources: int = 65536,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if mode not in _MODES:
            raise UsageError(
                "unknown XDP mode", option="mode", value=mode, allowed="auto, native, generic"
            )
        if max_sources < 1:
            raise UsageError("must be 1 or more", option="max_sources", value=max_sources)
        self.iface = iface
        self.mode = mode
        self._obj_path = obj_path
        self._max_sources = max_sources
        self._clock = clock
        self._lib: Libbpf | None = None
        self._obj: BpfObject | None = None
        self._link_fd = -1
        self._ring: RingBuffer | None = None
        self._fds: dict[str, int] = {}
        self._pending: list[XdpDetection] = []
        self._ncpus = 1
        self._window_ns = 60 * 10**9
        self.ifindex = 0
        #: the mode the kernel attached the program in: "native" or "generic"
        self.attached_mode = "none"
        #: the program's id (as ``bpftool prog show`` lists it)
        self.prog_id = 0

    # ------------------------------------------------------------------ life cycle
    def attach(self) -> XdpBlocker:
        """Load the program and attach it to the interface (in the calling thread's network
        namespace). MissingCapability (exit 3) with the reason when this machine cannot."""
        if self._obj is not None:
            return self
        from netwarden.capture.libbpf import BpfError, BpfObject, load_libbpf, messages

        try:
            self.ifindex = socket.if_nametoindex(self.iface)
        except OSError:
            raise UsageError("no such interface", option="--iface", value=self.iface) from None
        path = find_object(self._obj_path)
        lib = load_libbpf()
        messages(clear=True)
        try:
            obj = BpfObject(lib, path)
        except BpfError as exc:
            raise MissingCapability(f"cannot open {path}: {exc.strerror}") from None
        try:
            obj.map("nw_scan").set_max_entries(self._max_sources)
            obj.load()
        except BpfError as exc:
            obj.close()
            raise self._load_error(exc, messages()) from None
        self._lib, self._obj = lib, obj
        try:
            for name in (
                "nw_xdp_cfg",
                "nw_blocked",
                "nw_blocknets",
                "nw_allow",
                "nw_scan",
                "nw_xdp_events",
                "nw_xdp_stats",
            ):
                self._fds[name] = obj.map(name).fd
            self._ncpus = lib.num_possible_cpus()
            prog = obj.program(PROGRAM_NAME)
            prog_fd = int(lib.lib.bpf_program__fd(prog.ptr))
            if prog_fd < 0:
                raise BpfError(-prog_fd, "bpf_program__fd")
            self._link_fd = self._link(lib, prog_fd)
            self.attached_mode, self.prog_id = self._query()
            from netwarden.capture.libbpf import RingBuffer

            self._ring = RingBuffer(lib, self._fds["nw_xdp_events"], self._on_event)
        except BpfError as exc:
            self.detach()
            raise RuntimeFailure(f"XDP on {self.iface}: {exc}") from None
        except BaseException:
            self.detach()
            raise
        log.info(
            "XDP program %s attached to %s (%s mode, id %d)",
            PROGRAM_NAME,
            self.iface,
            self.attached_mode,
            self.prog_id,
        )
        return self

    @staticmethod
    def _load_error(exc: OSError, log_lines: list[str]) -> MissingCapability:
        if exc.errno in (errno.EPERM, errno.EACCES):
            return MissingCapability(
                "loading an XDP program needs root (CAP_BPF and CAP_NET_ADMIN)",
                "run netwarden as root",
            )
        reason = next((ln for ln in reversed(log_lines) if ln.strip()), exc.strerror or "")
        return MissingCapability(
            f"the kernel refused the XDP program: {reason.strip()[:300]}",
            "netwarden doctor shows what this kernel lacks",
        )

    def _link(self, lib: Libbpf, prog_fd: int) -> int:
        create = lib.lib["bpf_link_create"]
        create.restype = ctypes.c_int
        create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        modes = ["native", "generic"] if self.mode == "auto" else [self.mode]
        err = 0
        for m in modes:
            opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=_MODES[m])
            fd = int(create(prog_fd, self.ifindex, _BPF_XDP, ctypes.byref(opts)))
            if fd >= 0:
                return fd
            err = -fd
            if err in (errno.EBUSY, errno.EEXIST, errno.EPERM):
                break
            log.debug("XDP %s mode on %s: %s", m, self.iface, os.strerror(err))
        if err in (errno.EBUSY, errno.EEXIST):
            _mode, other = self._query()
            raise RuntimeFailure(
                f"{self.iface} already has an XDP program (id {other}); netwarden does not "
                "replace another program: detach it first (ip link set dev "
                f"{self.iface} xdp off)"
            )
        if err == errno.EPERM:
            raise MissingCapability(
                "attaching an XDP program needs root (CAP_NET_ADMIN)", "run netwarden as root"
            )
        raise MissingCapability(
            f"cannot attach XDP to {self.iface} in {'/'.join(modes)} mode: {os.strerror(err)}"
        )

    def _query(self) -> tuple[str, int]:
        """(attach mode, program id) of whatever XDP program the interface has."""
        assert self._lib is not None
        query = self._lib.lib["bpf_xdp_query"]
        query.restype = ctypes.c_int
        query.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        opts = _XdpQueryOpts(sz=ctypes.sizeof(_XdpQueryOpts))
        if int(query(self.ifindex, 0, ctypes.byref(opts))) < 0:
            return "unknown", 0
        mode = _ATTACH_MODES.get(int(opts.attach_mode), "unknown")
        prog_id = opts.prog_id or opts.drv_prog_id or opts.skb_prog_id or opts.hw_prog_id
        return mode, int(prog_id)

    def detach(self) -> None:
        """Detach the program and free its maps: nothing of it stays in the kernel."""
        if self._ring is not None:
            self._ring.free()
            self._ring = None
        if self._link_fd >= 0:
            os.close(self._link_fd)
            self._link_fd = -1
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        self._fds.clear()
        self.attached_mode = "none"

    @property
    def attached(self) -> bool:
        return self._link_fd >= 0

    def __enter__(self) -> XdpBlocker:
        return self.attach()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()

    # ------------------------------------------------------------------ map access
    def _o(self) -> BpfObject:
        if self._obj is None:
            raise RuntimeFailure(f"the XDP program is not attached to {self.iface}")
        return self._obj

    def _keys(self, name: str, key_size: int) -> Iterator[bytes]:
        """Every key of a map (a snapshot walk: entries may come and go meanwhile)."""
        self._o()
        assert self._lib is not None
        next_key = self._lib.lib["bpf_map_get_next_key"]
        next_key.restype = ctypes.c_int
        next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        fd = self._fds[name]
        cur = None
        out = ctypes.create_string_buffer(key_size)
        seen = 0
        while True:
            ret = int(next_key(fd, cur, out))
            if ret < 0:
                if -ret in (errno.ENOENT, 0):
                    return
                raise RuntimeFailure(f"map {name}: next key: {os.strerror(-ret)}")
            key = out.raw
            yield key
            seen += 1
            if seen > 1 << 22:  # a map cannot hold that many: a walk gone wrong
                return
            cur = ctypes.create_string_buffer(key, key_size)

    def _lookup(self, name: str, key: bytes, size: int) -> bytes | None:
        return self._o().lookup(self._fds[name], key, size)

    def _update(self, name: str, key: bytes, value: bytes) -> None:
        from netwarden.capture.libbpf import BpfError

        try:
            self._o().update(self._fds[name], key, value)
        except BpfError as exc:
            if exc.errno == errno.E2BIG:
                raise RuntimeFailure(f"XDP map {name} is full") from None
            raise RuntimeFailure(f"XDP map {name}: {exc.strerror}") from None

    def _delete(self, name: str, key: bytes) -> bool:
        return self._o().delete(self._fds[name], key)

    def _unix(self, ns: int, now_boot: int, now: float) -> float:
        return now + (ns - now_boot) / 1e9

    def _boot(self, unix: float, now_boot: int, now: float) -> int:
        return max(1, now_boot + round((unix - now) * 1e9))

    # ------------------------------------------------------------------ configuration
    def configure(
        self,
        *,
        scan_ports: int | None,
        window: float = 60.0,
        block_for: float | None = 3600.0,
        blocking: bool = True,
    ) -> None:
        """The in-kernel threshold: more than ``scan_ports`` distinct ports of one host
        within ``window`` seconds blocks the source for ``block_for`` seconds (None or 0: no
        timeout) when ``blocking``, else the crossing is only reported (:meth:`poll`).
        ``scan_ports`` None or 0 turns the threshold off."""
        ports = scan_ports or 0
        if not 0 <= ports <= MAX_SCAN_PORTS:
            raise UsageError(
                "too many for the XDP threshold",
                option="scan_ports",
                value=scan_ports,
                allowed=f"1-{MAX_SCAN_PORTS} (or no in-kernel threshold)",
            )
        if not window > 0:
            raise UsageError("must be more than 0", option="scan_window", value=window)
        if block_for is not None and block_for < 0:
            raise UsageError("negative", option="block_for", value=block_for)
        self._window_ns = round(window * 1e9)
        block_ns = round(block_for * 1e9) if block_for else 0
        flags = _CFG_BLOCK if blocking else 0
        self._update("nw_xdp_cfg", b"\0\0\0\0", _CFG.pack(ports, flags, self._window_ns, block_ns))

    def set_allow(self, nets: Iterable[str | IPv4Address | IPv6Address | IPNetwork]) -> None:
        """Replace the allowlist of the in-kernel threshold (e.g. ``--allow`` and the host's
        own addresses): these sources are never counted nor blocked by it."""
        want = {_lpm_key(as_network(n, "allow")) for n in nets}
        for key in list(self._keys("nw_allow", _LPM.size)):
            if key not in want:
                self._delete("nw_allow", key)
        for key in want:
            self._update("nw_allow", key, b"\1")

    # ------------------------------------------------------------------ blocks
    def block(
        self,
        target: str | IPv4Address | IPv6Address | IPNetwork,
        until: float | None = None,
    ) -> None:
        """Drop new connections from an address or CIDR until ``until`` (Unix seconds; None:
        until unblocked). Replaces an existing entry's time (its drop count is kept)."""
        net = as_network(target, "block")
        now, now_boot = self._clock(), _boot_ns()
        if until is not None and until <= now:
            return
        name, key = self._where(net)
        old = self._lookup(name, key, _BLOCK.size)
        drops = _BLOCK.unpack(old)[2] if old is not None else 0
        until_ns = 0 if until is None else self._boot(until, now_boot, now)
        self._update(name, key, _BLOCK.pack(until_ns, now_boot, drops, 0, 0))

    def unblock(self, target: str | IPv4Address | IPv6Address | IPNetwork) -> bool:
        """Remove a block; whether it was there."""
        name, key = self._where(as_network(target, "unblock"))
        return self._delete(name, key)

    def _where(self, net: IPNetwork) -> tuple[str, bytes]:
        if _is_host(net):
            return "nw_blocked", _addr16(net.network_address)
        return "nw_blocknets", _lpm_key(net)

    def sync(self, blocks: Iterable[Any]) -> None:
        """Make the kernel hold exactly ``blocks`` (objects with ``net`` and ``until``, e.g.
        :class:`netwarden.act.blocker.Block`): at start, to restore the persisted ones."""
        want: dict[tuple[str, bytes], Any] = {}
        for b in blocks:
            want[self._where(b.net)] = b
        for name, size in (("nw_blocked", 16), ("nw_blocknets", _LPM.size)):
            for key in list(self._keys(name, size)):
                if (name, key) not in want:
                    self._delete(name, key)
        for b in want.values():
            self.block(b.net, b.until)

    def blocked(self) -> list[XdpBlock]:
        """The blocks the kernel holds (expired ones included until :meth:`expire`)."""
        now, now_boot = self._clock(), _boot_ns()
        out: list[XdpBlock] = []
        for name, size in (("nw_blocked", 16), ("nw_blocknets", _LPM.size)):
            for key in self._keys(name, size):
                raw = self._lookup(name, key, _BLOCK.size)
                if raw is None:
                    continue
                until_ns, since_ns, drops, flags, _pad = _BLOCK.unpack(raw)
                net = _host_net(_from16(key)) if size == 16 else _net_from_lpm(key)
                out.append(
                    XdpBlock(
                        net=net,
                        since=self._unix(since_ns, now_boot, now),
                        until=None if not until_ns else self._unix(until_ns, now_boot, now),
                        drops=drops,
                        auto=bool(flags & _BLOCK_AUTO),
                    )
                )
        return sorted(out, key=lambda b: b.since)

    def expire(self) -> list[XdpBlock]:
        """Remove the entries whose time ran out (the program already ignores them)."""
        now = self._clock()
        gone = [b for b in self.blocked() if b.until is not None and b.until <= now]
        for b in gone:
            name, key = self._where(b.net)
            self._delete(name, key)
        return gone

    # ------------------------------------------------------------------ observations
    def _on_event(self, raw: bytes) -> None:
        if len(raw) < _EVENT.size:
            return
        src, dst, at_ns, until_ns, *rest = _EVENT.unpack_from(raw)
        slots = rest[:SLOTS]
        live, proto, flags, _pad = rest[SLOTS:]
        ports = sorted({p for i, p in enumerate(slots) if live & (1 << i)})
        now, now_boot = self._clock(), _boot_ns()
        self._pending.append(
            XdpDetection(
                src=_from16(src),
                dst=_from16(dst),
                ports=tuple(ports),
                at=self._unix(at_ns, now_boot, now),
                until=self._unix(until_ns, now_boot, now) if until_ns else None,
                ipproto=proto,
                blocked=bool(flags & _CFG_BLOCK),
            )
        )

    def poll(self, timeout_ms: int = 0) -> list[XdpDetection]:
        """The threshold crossings the kernel reported since the last call (waiting up to
        ``timeout_ms`` for the first)."""
        if self._ring is None:
            raise RuntimeFailure(f"the XDP program is not attached to {self.iface}")
        self._ring.poll(timeout_ms)
        out, self._pending = self._pending, []
        return out

    def events_fd(self) -> int:
        """A file descriptor that is readable when :meth:`poll` has something (epoll)."""
        if self._ring is None:
            raise RuntimeFailure(f"the XDP program is not attached to {self.iface}")
        return self._ring.epoll_fd()

    def counters(self) -> dict[str, int]:
        """The program's counters, summed over CPUs (names: :data:`COUNTER_NAMES`)."""
        size = _COUNTERS.size  # a multiple of 8: no per-CPU padding
        raw = self._lookup("nw_xdp_stats", b"\0\0\0\0", size * self._ncpus)
        totals = [0] * len(COUNTER_NAMES)
        if raw is not None:
            for cpu in range(self._ncpus):
                for i, v in enumerate(_COUNTERS.unpack_from(raw, cpu * size)):
                    totals[i] += v
        return dict(zip(COUNTER_NAMES, totals, strict=True))

    def tracked(self, limit: int = 1024) -> list[XdpTracked]:
        """Sources being counted by the threshold with two or more live ports (a source's
        first port sits in a hashed table that is not listed); at most ``limit`` entries,
        most recent first."""
        now, now_boot = self._clock(), _boot_ns()
        out: list[XdpTracked] = []
        for key in self._keys("nw_scan", _SCAN_KEY.size):
            raw = self._lookup("nw_scan", key, _SCAN.size)
            if raw is None:
                continue
            vals = _SCAN.unpack(raw)
            ts, ports = vals[:SLOTS], vals[SLOTS:]
            live = [
                (t, p)
                for t, p in zip(ts, ports, strict=True)
                if t and now_boot - t <= self._window_ns
            ]
            if not live:
                continue
            src, dst = _SCAN_KEY.unpack(key)
            out.append(
                XdpTracked(
                    src=_from16(src),
                    dst=_from16(dst),
                    ports=tuple(sorted(p for _t, p in live)),
                    last=self._unix(max(t for t, _p in live), now_boot, now),
                )
            )
            if len(out) >= limit:
                break
        return sorted(out, key=lambda t: -t.last)
