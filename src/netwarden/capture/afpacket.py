"""Live capture: an AF_PACKET socket with a memory-mapped receive ring, read in batches.

Two layouts (the caller picks one; both hand over the same batches):

* blocks (TPACKET_V3, the default): the kernel fills blocks of the ring and retires one when
  it is full or when ``block_timeout_ms`` has passed since its first packet; a batch is one
  retired block. Cheapest per packet; a packet waits up to the block timeout.
* immediate (TPACKET_V2 frames of ``frame_size`` bytes, libpcap's immediate mode): the
  reader wakes at each packet and a batch is every frame ready then: one packet when the
  host is quiet, many under load. ``netwarden run --block`` uses it, so a scanner's
  threshold probe is judged as soon as it arrives. A packet longer than a frame holds (a
  GRO/TSO super-packet; about 1950 bytes fit in 2 KiB frames) is kept truncated: its
  ``wirelen`` and ``segs`` stay exact, payload beyond the frame is not seen.

:meth:`RingCapture.batches` hands over each batch as a list of plain tuples::

    (ts, data, wirelen, linktype, ifindex, segs)

``ts`` is the kernel timestamp (float Unix seconds), ``data`` a ``memoryview`` slice of the
ring starting at the link-layer header (``linktype`` 1, Ethernet) or at the IP header
(``linktype`` 101, raw IP), ``wirelen`` the packet's length from that point on the wire,
``ifindex`` the interface it was seen on (see :meth:`RingCapture.ifname`), ``segs`` how many
packets it was on the wire (see "Offloads" below). The memoryviews stay valid only until the
next batch is requested: then the block (or the frames) go back to the kernel. Copy what must
be kept.

Modes:

* ``iface=None`` (or ``"any"``): every interface of the network namespace, ``SOCK_DGRAM``
  (the kernel strips link-layer headers; data starts at the network header; linktype 101).
  The filter is compiled for raw IP, which is what the kernel's socket filter sees then.
* ``iface="eth0"``: that interface only. Ethernet and loopback interfaces are read with
  ``SOCK_RAW`` (linktype 1); others (tun, ipip, wireguard, ...) with ``SOCK_DGRAM`` (101).

Non-IP frames (ARP, LLDP, ...) may arrive; decoders return ``None`` for them.

Loopback: each packet on a loopback interface passes the packet tap twice, as outgoing and as
incoming; the outgoing copy is dropped in the kernel (a short prefix to the socket filter), so
each packet is seen once, as libpcap does. On other interfaces outgoing packets are kept.

Filters run in the kernel: a drop-all filter is attached right after the socket is made,
the ring is set up and bound, anything that slipped in is drained, then the real filter
replaces the drop-all one. Packets that do not match are never copied and never counted.

Offloads: bytes count as on the wire (INTERFACE.md), so a GSO/GRO super-packet must count as
its segments. On ``SOCK_RAW`` sockets (``-i`` on Ethernet or loopback) the kernel accepts
``PACKET_VNET_HDR`` together with TPACKET_V3 and V2 (checked on Linux 6.18) and writes a
``virtio_net_hdr`` in front of each packet: ``segs`` is then exact,
``ceil((len - headers) / gso_size)``, with the headers' length read from the packet itself.
The kernel refuses ``PACKET_VNET_HDR`` on ``SOCK_DGRAM`` sockets (all interfaces, tun, ...):
there ``segs`` is estimated for packets the kernel flags as TCP GSO, with the interface's MTU
minus the packet's IP and TCP header lengths as the segment size (exact when the segment size
is the interface's MSS, an underestimate when the path MSS is smaller); other packets count 1.
With ``PACKET_VNET_HDR`` the kernel drops (and counts as dropped) the rare GSO packets it
cannot describe in a ``virtio_net_hdr`` (SCTP, ESP, fraglist GSO).

Stopping: after :meth:`RingCapture.stop` (safe from a signal handler or another thread) the
socket takes no new packets, ``batches()`` hands over what is still in the ring, including
the block the kernel had not retired yet (at most about two block timeouts of waiting), and
returns; so every packet counted in ``stats()`` reaches the caller who iterates to the end.
:meth:`RingCapture.close` makes ``batches()`` return at once and releases the socket and the
ring (right away, or from the iterating thread as soon as it notices).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Final

from netwarden.capture.bpf_filter import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    CompiledFilter,
    compile_filter,
)
from netwarden.closing import Closing
from netwarden.errors import MissingCapability, RuntimeFailure, UsageError

log = logging.getLogger(__name__)

__all__ = ["Packet", "RingCapture"]

#: One captured packet: (ts, data, wirelen, linktype, ifindex, segs).
Packet = tuple[float, memoryview, int, int, int, int]

# <linux/if_packet.h>, <linux/if_ether.h>, <linux/if_arp.h>, <linux/filter.h>
SOL_PACKET: Final = 263
PACKET_ADD_MEMBERSHIP: Final = 1
PACKET_RX_RING: Final = 5
PACKET_STATISTICS: Final = 6
PACKET_VERSION: Final = 10
PACKET_VNET_HDR: Final = 15
PACKET_MR_PROMISC: Final = 1
TPACKET_V2: Final = 1
TPACKET_V3: Final = 2
PACKET_OUTGOING: Final = 4
ETH_P_ALL: Final = 0x0003
SO_ATTACH_FILTER: Final = 26
ARPHRD_ETHER: Final = 1
ARPHRD_LOOPBACK: Final = 772
SIOCGIFHWADDR: Final = 0x8927
SIOCGIFMTU: Final = 0x8921

TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1
TP_STATUS_GSO_TCP: Final = 1 << 8

# classic BPF opcodes and ancillary offsets (SKF_AD_OFF = -0x1000)
_BPF_LD_W_ABS: Final = 0x20
_BPF_JEQ_K: Final = 0x15
_BPF_RET_K: Final = 0x06
_SKF_AD_PKTTYPE: Final = (-0x1000 + 4) & 0xFFFFFFFF
_SKF_AD_HATYPE: Final = (-0x1000 + 28) & 0xFFFFFFFF
_DROP_ALL: Final = [(_BPF_RET_K, 0, 0, 0)]

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
# block_status (8), num_pkts (12), offset_to_first_pkt (16), blk_len (20), ...
_BLOCK_STATUS_OFF: Final = 8
_BLOCK: Final = struct.Struct("<III")  # block_status, num_pkts, offset_to_first_pkt
_STATUS: Final = struct.Struct("<I")
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status,
# tp_mac, tp_net, hv1 (12 bytes), padding (8); then, at TPACKET_ALIGN(48), struct
# sockaddr_ll: family, protocol, ifindex (offset 52), ...
_PKT: Final = struct.Struct("<IIIIIIHH24xi")
# struct virtio_net_hdr (little endian here), just before the link-layer header:
# flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_VNET: Final = struct.Struct("<BBHHHH")
_VNET_LEN: Final = _VNET.size
_VNET_GSO_UDP_L4: Final = 5
_TPACKET_STATS_V3: Final = struct.Struct("III")  # tp_packets, tp_drops, tp_freeze_q_cnt
_TPACKET_STATS: Final = struct.Struct("II")  # tp_packets, tp_drops (V1, V2)
# struct tpacket2_hdr: tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_sec, tp_nsec,
# tp_vlan_tci, tp_vlan_tpid, padding (4); then, at TPACKET_ALIGN(32), struct sockaddr_ll:
# family, protocol, ifindex (offset 36)
_FRAME: Final = struct.Struct("<IIIHHII8x4xi")

#: immediate mode: at most this many frames in one batch (the rest are the next batch,
#: ready at once): a batch's packet tuples stay a few hundred kilobytes under a flood
MAX_FRAMES_PER_BATCH: Final = 1024

_CAP_FIX: Final = f"run as root or: setcap cap_net_raw+ep {os.path.realpath(sys.executable)}"


class RingCapture(Closing):
    """A capture ring on one interface (``iface``) or on all (``iface=None``): TPACKET_V3
    blocks, or with ``frame_size`` TPACKET_V2 frames handed over at once.

    See the module docstring for the packet tuples, layouts, modes, filters and offloads.
    ``stats()`` gives ``(packets, drops)`` since the start: packets the filter accepted and
    the kernel put in the ring, and packets it accepted but had to drop (ring full).
    Not thread-safe except for :meth:`stop` and :meth:`close`.
    """

    def __init__(
        self,
        iface: str | None,
        *,
        filter_expr: str | None = None,
        snaplen: int = 262144,
        block_size: int = 1 << 20,
        block_count: int = 64,
        block_timeout_ms: int = 50,
        frame_size: int | None = None,
        promisc: bool = False,
    ) -> None:
        if snaplen <= 0:
            raise ValueError("snaplen must be positive")
        if block_size <= 0 or block_size % mmap.PAGESIZE:
            raise ValueError(f"block_size must be a positive multiple of {mmap.PAGESIZE}")
        if block_count <= 0 or block_timeout_ms <= 0:
            raise ValueError("block_count and block_timeout_ms must be positive")
        if frame_size is not None and (
            frame_size < 256 or frame_size % 16 or block_size % frame_size
        ):
            raise ValueError("frame_size must be a multiple of 16 dividing block_size, >= 256")
        if iface in ("", "any"):
            iface = None
        self.iface = iface
        self.snaplen = snaplen
        self.block_size = block_size
        self.block_count = block_count
        self.block_timeout_ms = block_timeout_ms
        #: TPACKET_V2 frames (immediate hand-over) when set, else TPACKET_V3 blocks
        self.frame_size = frame_size
        self._frame = 0  # immediate: the next frame to read
        self._frame_count = 0
        self._frames_held = 0  # immediate: frames handed out and not back yet
        self._poller: select.poll | None = None
        self._stop = False
        self._closing = False
        self._busy = False
        self._lock = threading.RLock()
        self._packets = 0
        self._drops = 0
        self._names: dict[int, str] = {}
        self._mtus: dict[int, int] = {}
        self._block = 0
        self._held = False  # the current block was handed out and is not back yet
        self._vnet = False
        self._sock: socket.socket | None = None
        self._ring: mmap.mmap | None = None
        self._mv: memoryview | None = None
        self._wake_fd = -1

        ifindex = 0
        hatype = -1
        if iface is not None:
            try:
                ifindex = socket.if_nametoindex(iface)
                hatype = _hardware_type(iface)
            except (OSError, ValueError):
                raise UsageError("no such interface", option="-i", value=iface) from None
        raw = hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK)
        self.linktype = LINKTYPE_ETHERNET if raw else LINKTYPE_RAW
        self.ifindex = ifindex
        # Compile before creating anything: a bad expression is a usage error, also as non-root.
        self.filter: CompiledFilter = compile_filter(filter_expr, self.linktype, snaplen)

        kind = socket.SOCK_RAW if raw else socket.SOCK_DGRAM
        # Bound to one interface: protocol 0 receives nothing until bind(). All interfaces:
        # the protocol at creation hooks the socket in at once, and the drop-all filter below
        # keeps anything from being queued.
        proto = 0 if iface is not None else socket.htons(ETH_P_ALL)
        try:
            sock = socket.socket(socket.AF_PACKET, kind, proto)
        except PermissionError:
            raise MissingCapability("capturing needs CAP_NET_RAW", _CAP_FIX) from None
        except OSError as exc:
            if exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                raise MissingCapability(
                    "this kernel has no AF_PACKET sockets", "load the af_packet module"
                ) from None
            raise
        self._sock = sock
        try:
            self._attach(_DROP_ALL)
            self._setup_ring(vnet=raw)
            if iface is not None:
                sock.bind((iface, ETH_P_ALL))
                if promisc:  # dropped by the kernel when the socket closes
                    mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
                    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            elif promisc:
                log.debug("promiscuous mode needs an interface; not set for all interfaces")
            self._drain()
            self._attach(self._kernel_program(hatype))
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._poller = select.poll()
            self._poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
            self._poller.register(self._wake_fd, select.POLLIN)
            self._packets = self._drops = 0  # counting starts with the real filter
        except BaseException:
            self._teardown()
            raise
        log.debug(
            "capturing on %s: %s, linktype %d, vnet_hdr %s, ring %d x %d bytes, %s",
            iface or "all interfaces",
            "SOCK_RAW" if raw else "SOCK_DGRAM",
            self.linktype,
            self._vnet,
            self.block_count,
            block_size,
            f"{self._frame_count} frames of {frame_size}" if frame_size else "blocks",
        )

    # ---- set-up -------------------------------------------------------------------------

    def _setup_ring(self, *, vnet: bool) -> None:
        sock = self._sock
        assert sock is not None
        frames = self.frame_size
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2 if frames else TPACKET_V3)
        if vnet:
            try:
                sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
                self._vnet = True
            except OSError as exc:
                log.debug("PACKET_VNET_HDR refused: %s", exc)
        count = self.block_count
        while True:
            if frames:
                # struct tpacket_req: block size and number, frame size and number
                per_block = self.block_size // frames
                req = struct.pack("4I", self.block_size, count, frames, per_block * count)
            else:
                req = struct.pack(
                    "7I",
                    self.block_size,
                    count,
                    self.block_size,  # tp_frame_size: one "frame" per block (unused by V3)
                    count,
                    self.block_timeout_ms,
                    0,
                    0,
                )
            try:
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
                break
            except OSError as exc:
                if exc.errno == errno.EINVAL and self._vnet:
                    log.debug("capture ring refused with PACKET_VNET_HDR; without it")
                    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 0)
                    self._vnet = False
                    continue
                if exc.errno == errno.ENOMEM and count > 8:
                    count //= 2
                    log.warning("capture ring: not enough memory, trying %d blocks", count)
                    continue
                raise RuntimeFailure(f"cannot set up the capture ring: {exc.strerror}") from None
        self.block_count = count
        if frames:
            self._frame_count = (self.block_size // frames) * count
        self._ring = mmap.mmap(
            sock.fileno(),
            self.block_size * count,
            mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
        )
        self._mv = memoryview(self._ring)

    def _kernel_program(self, hatype: int) -> list[tuple[int, int, int, int]]:
        """The user's filter, behind a prefix dropping loopback's outgoing copies."""
        insns = list(self.filter.instructions)
        if self.iface is None:
            # pkttype == OUTGOING and dev->type == LOOPBACK -> drop; else on to the filter
            prefix = [
                (_BPF_LD_W_ABS, 0, 0, _SKF_AD_PKTTYPE),
                (_BPF_JEQ_K, 0, 3, PACKET_OUTGOING),
                (_BPF_LD_W_ABS, 0, 0, _SKF_AD_HATYPE),
                (_BPF_JEQ_K, 0, 1, ARPHRD_LOOPBACK),
                (_BPF_RET_K, 0, 0, 0),
            ]
        elif hatype == ARPHRD_LOOPBACK:
            prefix = [
                (_BPF_LD_W_ABS, 0, 0, _SKF_AD_PKTTYPE),
                (_BPF_JEQ_K, 0, 1, PACKET_OUTGOING),
                (_BPF_RET_K, 0, 0, 0),
            ]
        else:
            return insns
        return prefix + insns

    def _attach(self, insns: list[tuple[int, int, int, int]]) -> None:
        sock = self._sock
        assert sock is not None
        n = len(insns)
        # struct sock_filter is laid out like struct bpf_insn: u16 code, u8 jt, u8 jf, u32 k
        code = bytearray(struct.pack("=" + "HBBI" * n, *(v for insn in insns for v in insn)))
        buf = (ctypes.c_char * len(code)).from_buffer(code)
        fprog = struct.pack("HP", n, ctypes.addressof(buf))  # struct sock_fprog
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError as exc:
            raise UsageError(
                f"the kernel refused the compiled filter ({n} instructions): {exc.strerror}",
                option="filter",
                value=self.filter.expression,
            ) from None
        finally:
            del buf

    def _drain(self) -> None:
        """Give back any block (or frame) filled before the real filter was attached."""
        mv = self._mv
        assert mv is not None
        if self.frame_size:
            size = self.frame_size
            for _ in range(self._frame_count):
                base = self._frame * size
                if not _STATUS.unpack_from(mv, base)[0] & TP_STATUS_USER:
                    break
                _STATUS.pack_into(mv, base, TP_STATUS_KERNEL)
                self._frame = (self._frame + 1) % self._frame_count
            self._read_stats()
            return
        for _ in range(self.block_count):
            base = self._block * self.block_size
            if not _STATUS.unpack_from(mv, base + _BLOCK_STATUS_OFF)[0] & TP_STATUS_USER:
                break
            _STATUS.pack_into(mv, base + _BLOCK_STATUS_OFF, TP_STATUS_KERNEL)
            self._block = (self._block + 1) % self.block_count
        self._read_stats()  # and forget what the drop-all period counted

    # ---- the hot loop ---------------------------------------------------------------------

    def batches(self, timeout: float) -> Iterator[list[Packet]]:
        """Yield the packets of each retired block (immediate: of the frames ready); an empty
        list after ``timeout`` seconds without one. Each batch's block or frames go back to
        the kernel when the next batch is requested.

        After :meth:`stop` the socket takes no new packets (a drop-all filter), the block the
        kernel was still filling is retired by its timer and handed over, then this returns:
        everything counted in :meth:`stats` has been yielded. Iterate to the end rather than
        breaking out after ``stop()``. After :meth:`close` it returns at once.
        """
        if not self._enter():
            return
        try:
            draining_until = 0.0
            while not self._closing:
                if self._stop:
                    if not draining_until:
                        draining_until = self._start_draining()
                    left = draining_until - time.monotonic()
                    if left <= 0 or not self._more_in_ring():
                        break
                    batch = self._next_batch(left, draining=True)
                else:
                    batch = self._next_batch(timeout)
                    if batch is None and self._stop:
                        continue  # stopped while waiting: hand over what is left first
                with self._lock:
                    self._busy = False
                yield batch if batch is not None else []
                if not self._enter():  # closed while the caller had the batch
                    return
        finally:
            with self._lock:
                self._busy = False
                if self._closing:
                    self._teardown()

    def _enter(self) -> bool:
        """Mark the ring in use by batches(); False if it is closed."""
        with self._lock:
            if self._mv is None or self._closing:
                return False
            self._busy = True
            return True

    def _start_draining(self) -> float:
        """Take no new packets; the deadline for the kernel to retire its current block."""
        try:
            self._attach(_DROP_ALL)
        except UsageError as exc:
            log.debug("cannot stop the intake before draining: %s", exc)
        self._clear_wake()
        if self.frame_size:
            # no block to retire; a packet past the old filter may still be being copied
            time.sleep(0.005)
            return time.monotonic() + 0.25
        return time.monotonic() + (2 * self.block_timeout_ms + 250) / 1000.0

    def _clear_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except OSError:  # nothing to clear
            pass

    def ready(self) -> bool:
        """Whether the next batch can be taken without waiting (a retired block, or a frame
        ready, after those of the batch handed out)."""
        mv = self._mv
        if mv is None:
            return False
        if self.frame_size:
            nxt = (self._frame + self._frames_held) % self._frame_count
            return bool(_STATUS.unpack_from(mv, nxt * self.frame_size)[0] & TP_STATUS_USER)
        block = (self._block + 1) % self.block_count if self._held else self._block
        status = _STATUS.unpack_from(mv, block * self.block_size + _BLOCK_STATUS_OFF)[0]
        return bool(status & TP_STATUS_USER)

    def _more_in_ring(self) -> bool:
        """Whether the next block holds packets: retired, or still being filled (immediate:
        whether the next frame is ready)."""
        if self.frame_size:
            return self.ready()
        mv = self._mv
        assert mv is not None
        base = self._block * self.block_size
        if self._held:
            base = ((self._block + 1) % self.block_count) * self.block_size
        status, num, _ = _BLOCK.unpack_from(mv, base + _BLOCK_STATUS_OFF)
        return bool(status & TP_STATUS_USER or num)

    def _next_batch(self, timeout: float, *, draining: bool = False) -> list[Packet] | None:
        """The current block's packets once the kernel retires it (immediate: the frames
        ready, once there is one); None on timeout (or on stop, unless ``draining``)."""
        mv = self._mv
        sock = self._sock
        assert mv is not None and sock is not None
        if self.frame_size:
            return self._next_frames(mv, timeout, draining)
        if self._held:  # the previous batch's block goes back to the kernel
            base = self._block * self.block_size
            _STATUS.pack_into(mv, base + _BLOCK_STATUS_OFF, TP_STATUS_KERNEL)
            self._block = (self._block + 1) % self.block_count
            self._held = False
        base = self._block * self.block_size
        status = _STATUS.unpack_from(mv, base + _BLOCK_STATUS_OFF)[0]
        if not status & TP_STATUS_USER and not self._wait(
            mv, base + _BLOCK_STATUS_OFF, timeout, draining
        ):
            return None
        self._held = True
        return self._read_block(mv, base)

    def _wait(self, mv: memoryview, status_at: int, timeout: float, draining: bool) -> bool:
        """Wait until the status word at ``status_at`` says the kernel handed it over; False
        on timeout (or on stop, unless ``draining``)."""
        sock = self._sock
        poller = self._poller
        assert sock is not None and poller is not None
        deadline = time.monotonic() + timeout
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0 or self._closing or (self._stop and not draining):
                return False
            events = poller.poll(wait * 1000.0)
            if _STATUS.unpack_from(mv, status_at)[0] & TP_STATUS_USER:
                return True
            for fd, ev in events:
                if fd == sock.fileno() and ev & (select.POLLERR | select.POLLHUP):
                    self._raise_socket_error()
                if fd == self._wake_fd and draining and not self._closing:
                    self._clear_wake()  # another stop(): keep waiting for the block

    def _next_frames(self, mv: memoryview, timeout: float, draining: bool) -> list[Packet] | None:
        """Immediate mode: give back the frames of the previous batch, then every frame
        ready (waiting for the first)."""
        size = self.frame_size
        count = self._frame_count
        assert size is not None
        frame = self._frame
        held = self._frames_held
        if held:
            pack = _STATUS.pack_into
            for _ in range(held):
                pack(mv, frame * size, TP_STATUS_KERNEL)
                frame += 1
                if frame == count:
                    frame = 0
            self._frame = frame
            self._frames_held = 0
        if not _STATUS.unpack_from(mv, frame * size)[0] & TP_STATUS_USER and not self._wait(
            mv, frame * size, timeout, draining
        ):
            return None
        return self._read_frames(mv)

    def _read_frames(self, mv: memoryview) -> list[Packet]:
        size = self.frame_size
        count = self._frame_count
        assert size is not None
        unpack = _FRAME.unpack_from
        linktype = self.linktype
        vnet = self._vnet
        out: list[Packet] = []
        append = out.append
        frame = self._frame
        for _ in range(min(count, MAX_FRAMES_PER_BATCH)):
            off = frame * size
            status, wirelen, snap, mac, net, sec, nsec, ifindex = unpack(mv, off)
            if not status & TP_STATUS_USER:
                break
            start = off + mac
            # virtio_net_hdr.gso_type, or the kernel's flag: a super-packet (rare)
            segs = (
                self._segs(mv, start, off + net, status, wirelen, ifindex)
                if (mv[start - 9] if vnet else status & TP_STATUS_GSO_TCP)
                else 1
            )
            append((sec + nsec * 1e-9, mv[start : start + snap], wirelen, linktype, ifindex, segs))
            frame += 1
            if frame == count:
                frame = 0
        self._frames_held = len(out)
        return out

    def _read_block(self, mv: memoryview, base: int) -> list[Packet]:
        _, num, first = _BLOCK.unpack_from(mv, base + _BLOCK_STATUS_OFF)
        unpack = _PKT.unpack_from
        linktype = self.linktype
        vnet = self._vnet
        out: list[Packet] = []
        append = out.append
        off = base + first
        for _ in range(num):
            nxt, sec, nsec, snap, wirelen, status, mac, net, ifindex = unpack(mv, off)
            start = off + mac
            # virtio_net_hdr.gso_type, or the kernel's flag: a super-packet (rare)
            segs = (
                self._segs(mv, start, off + net, status, wirelen, ifindex)
                if (mv[start - 9] if vnet else status & TP_STATUS_GSO_TCP)
                else 1
            )
            append((sec + nsec * 1e-9, mv[start : start + snap], wirelen, linktype, ifindex, segs))
            off += nxt
        return out

    def _segs(
        self, mv: memoryview, start: int, net: int, status: int, wirelen: int, ifindex: int
    ) -> int:
        """How many packets a GSO/GRO super-packet was on the wire."""
        if self._vnet:
            return self._vnet_segs(mv, start, net, wirelen)
        return self._estimated_segs(mv, net, wirelen - (net - start), ifindex)

    def _vnet_segs(self, mv: memoryview, start: int, net: int, wirelen: int) -> int:
        gso_type: int
        hdr_len: int
        gso_size: int
        _flags, gso_type, hdr_len, gso_size, _cs, _co = _VNET.unpack_from(mv, start - _VNET_LEN)
        if not gso_size:
            return 1
        # hdr_len is skb_headlen(), which may include payload: measure the headers instead.
        headers = _ip_l4_header_len(mv, net, udp=(gso_type & 0x7F) == _VNET_GSO_UDP_L4)
        if headers is None:
            headers = hdr_len - (net - start)
            if headers <= 0:
                return 1
        iplen = wirelen - (net - start)
        return max(1, -(-(iplen - headers) // gso_size))

    def _estimated_segs(self, mv: memoryview, net: int, iplen: int, ifindex: int) -> int:
        headers = _ip_l4_header_len(mv, net, udp=False)
        mtu = self._mtu(ifindex)
        if headers is None or mtu is None or mtu <= headers:
            return 1
        return max(1, -(-(iplen - headers) // (mtu - headers)))

    def _raise_socket_error(self) -> None:
        sock = self._sock
        assert sock is not None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err in (errno.ENETDOWN, errno.ENODEV, errno.ENXIO):
            where = self.iface or "all interfaces"
            raise RuntimeFailure(f"capture on {where}: the interface went down")
        raise RuntimeFailure(f"capture socket error: {os.strerror(err) if err else 'unknown'}")

    # ---- control and bookkeeping ----------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`batches` return at its next step. Safe from a signal handler."""
        self._stop = True
        if self._wake_fd >= 0:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass

    def close(self) -> None:
        """Stop, unmap the ring and close the socket (idempotent, any thread)."""
        self._closing = True
        self.stop()
        with self._lock:
            if not self._busy:
                self._teardown()

    def _teardown(self) -> None:
        if self._sock is not None:
            try:
                self._read_stats()
            except OSError:
                pass
        mv, self._mv = self._mv, None
        if mv is not None:
            mv.release()
        ring, self._ring = self._ring, None
        if ring is not None:
            try:
                ring.close()
            except BufferError:
                # The caller still holds packet views: the mapping goes when they do.
                log.debug("capture ring still referenced; unmapped when released")
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        fd, self._wake_fd = self._wake_fd, -1
        if fd >= 0:
            os.close(fd)

    def _read_stats(self) -> None:
        sock = self._sock
        assert sock is not None
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS_V3.size)
        packets, drops = _TPACKET_STATS.unpack_from(raw)  # V3 appends tp_freeze_q_cnt
        # The kernel's tp_packets includes the drops; it resets both on each read.
        self._packets += packets - drops
        self._drops += drops

    def stats(self) -> tuple[int, int]:
        """``(packets, drops)`` since the start (the kernel's counters reset on each read)."""
        with self._lock:
            if self._sock is not None:
                self._read_stats()
            return self._packets, self._drops

    @property
    def vnet_hdr(self) -> bool:
        """Whether ``segs`` is exact (PACKET_VNET_HDR in use) rather than estimated."""
        return self._vnet

    def fileno(self) -> int:
        """The socket's descriptor (readable when a block is ready), -1 once closed."""
        return self._sock.fileno() if self._sock is not None else -1

    def ifname(self, ifindex: int) -> str | None:
        """The name of interface ``ifindex`` (cached), None if there is none now."""
        name = self._names.get(ifindex)
        if name is None:
            try:
                name = socket.if_indextoname(ifindex)
            except OSError:
                return None
            if len(self._names) >= 4096:
                self._names.clear()
            self._names[ifindex] = name
        return name

    def _mtu(self, ifindex: int) -> int | None:
        mtu = self._mtus.get(ifindex)
        if mtu is None:
            name = self.ifname(ifindex)
            if name is None:
                return None
            try:
                mtu = _ioctl_ifreq_int(name, SIOCGIFMTU)
            except OSError:
                return None
            if len(self._mtus) >= 4096:
                self._mtus.clear()
            self._mtus[ifindex] = mtu
        return mtu

    def __del__(self) -> None:
        try:
            if self._sock is not None and not self._busy:
                self._teardown()
        except Exception:
            pass


# ---- helpers ------------------------------------------------------------------------------


def _ioctl_ifreq(name: str, request: int) -> bytes:
    ifreq = struct.pack("16s16x", name.encode())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        return fcntl.ioctl(s.fileno(), request, ifreq)


def _ioctl_ifreq_int(name: str, request: int) -> int:
    value: int = struct.unpack_from("i", _ioctl_ifreq(name, request), 16)[0]
    return value


def _hardware_type(name: str) -> int:
    """The interface's ARPHRD_* type (from SIOCGIFHWADDR: right in any network namespace,
    unlike /sys, which ``setns`` does not remount)."""
    family: int = struct.unpack_from("H", _ioctl_ifreq(name, SIOCGIFHWADDR), 16)[0]
    return family


_IPV6_EXT: Final = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options


def _ip_l4_header_len(mv: memoryview, net: int, *, udp: bool) -> int | None:
    """Length of the IP (with IPv6 extension headers) and TCP or UDP headers at ``net``."""
    try:
        b0 = mv[net]
        version = b0 >> 4
        if version == 4:
            ihl = (b0 & 0x0F) * 4
            proto = mv[net + 9]
        elif version == 6:
            ihl = 40
            proto = mv[net + 6]
            while proto in _IPV6_EXT:
                proto, hlen = mv[net + ihl], (mv[net + ihl + 1] + 1) * 8
                ihl += hlen
        else:
            return None
        if proto == 6 and not udp:
            return ihl + (mv[net + ihl + 12] >> 4) * 4
        if proto == 17:
            return ihl + 8
    except IndexError:
        return None
    return None
