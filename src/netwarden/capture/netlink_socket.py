"""A small netlink socket: requests with ACKs, dumps, multicast groups, a big buffer.

The codecs live in :mod:`netwarden.wire.netlink`; this is only the I/O. ENOBUFS (the kernel
dropped messages because our receive buffer was full) surfaces as :class:`Overrun` so the
caller can count it and resynchronise (conntrack re-dumps its table).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import select
import socket
import struct
from collections.abc import Iterator

from netwarden.errors import MissingCapability, RuntimeFailure
from netwarden.wire.netlink import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_OVERRUN,
    SOL_NETLINK,
    NlMsg,
    nlmsg_error,
    split_messages,
)

log = logging.getLogger(__name__)

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_ATTACH_FILTER = 26
RECV_SIZE = 1 << 18  # one datagram: dumps send up to 32 KiB per skb, events much less


class Overrun(Exception):
    """The kernel dropped messages for this socket (ENOBUFS)."""


class NetlinkError(RuntimeFailure):
    """The kernel answered a request with an error (``errno`` carries it)."""

    def __init__(self, what: str, err: int) -> None:
        self.errno = err
        super().__init__(f"{what}: {os.strerror(err)} (errno {err})")


class NetlinkSocket:
    """One AF_NETLINK socket of ``protocol``, bound to the kernel-chosen port id."""

    def __init__(self, protocol: int, *, rcvbuf: int | None = None, groups: int = 0) -> None:
        try:
            self.sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol
            )
        except PermissionError as exc:  # pragma: no cover - depends on the machine
            raise MissingCapability(
                f"cannot open a netlink socket (protocol {protocol}): {exc.strerror}",
                "run as root (CAP_NET_ADMIN)",
            ) from exc
        except OSError as exc:  # pragma: no cover - depends on the kernel
            raise MissingCapability(
                f"this kernel has no netlink protocol {protocol}: {exc.strerror}",
                "load the netfilter/sock_diag support (CONFIG_NF_CT_NETLINK, CONFIG_INET_DIAG)",
            ) from exc
        self.protocol = protocol
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass
        if rcvbuf:
            self.set_rcvbuf(rcvbuf)
        self.sock.bind((0, groups))
        self.portid: int = self.sock.getsockname()[0]
        self._seq = itertools.count(int.from_bytes(os.urandom(2), "little") + 1)
        self._buf = bytearray(RECV_SIZE)
        self.overruns = 0

    # ---------------------------------------------------------------- set-up
    def set_rcvbuf(self, size: int) -> int:
        """Ask for a ``size``-byte receive buffer (beyond rmem_max as root); return the
        size the kernel granted (it doubles the request for its bookkeeping)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return int(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def attach_filter(self, program: bytes) -> None:
        """Attach a classic BPF socket filter (``program``: struct sock_filter array)."""
        count = len(program) // 8
        buf = ctypes.create_string_buffer(program, len(program))
        fprog = struct.pack("HL", count, ctypes.addressof(buf))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def join(self, group: int) -> None:
        """Subscribe to multicast ``group`` (a number, not a bit mask)."""
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def kernel_drops(self, proc_net: str = "/proc/net/netlink") -> int | None:
        """Messages the kernel dropped for this socket (the ``Drops`` column of
        /proc/net/netlink), or None when it cannot be read."""
        try:
            inode = os.fstat(self.sock.fileno()).st_ino
            with open(proc_net, encoding="ascii", errors="replace") as f:
                header = f.readline().split()
                col_drops, col_inode = header.index("Drops"), header.index("Inode")
                for line in f:
                    cols = line.split()
                    if len(cols) > col_inode and cols[col_inode] == str(inode):
                        return int(cols[col_drops])
        except (OSError, ValueError):
            return None
        return None

    def next_seq(self) -> int:
        return next(self._seq) & 0xFFFFFFFF

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # ---------------------------------------------------------------- I/O
    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self, *, block: bool = True) -> memoryview | None:
        """One datagram (a view into a buffer reused by the next call), or None when
        nothing is waiting and ``block`` is false. Raises :class:`Overrun` on ENOBUFS."""
        try:
            n = self.sock.recv_into(self._buf, 0, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self.overruns += 1
                raise Overrun() from exc
            raise
        return memoryview(self._buf)[:n]

    def wait(self, timeout: float | None) -> bool:
        """Whether a datagram is ready within ``timeout`` seconds."""
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            return False
        return bool(ready)

    def request(self, data: bytes, seq: int, *, what: str, timeout: float = 5.0) -> None:
        """Send a request that asks for an ACK and wait for it; raise on a NACK."""
        self.send(data)
        for msg in self._replies(seq, what, timeout):
            if msg.type == NLMSG_ERROR:
                err = nlmsg_error(msg.payload)
                if err:
                    raise NetlinkError(what, err)
                return

    def dump(self, data: bytes, seq: int, *, what: str, timeout: float = 10.0) -> Iterator[NlMsg]:
        """Send a dump request; yield its messages until NLMSG_DONE.

        Messages of other sequence numbers (events on the same socket) are skipped. The
        yielded payloads are copies, valid after the next receive. A dump the kernel marks
        interrupted (NLM_F_DUMP_INTR) is still complete enough for our use: logged once.
        """
        self.send(data)
        interrupted = False
        for msg in self._replies(seq, what, timeout):
            if msg.type == NLMSG_DONE:
                break
            if msg.type == NLMSG_ERROR:
                err = nlmsg_error(msg.payload)
                if err:
                    raise NetlinkError(what, err)
                break
            if msg.flags & NLM_F_DUMP_INTR:
                interrupted = True
            yield msg
        if interrupted:
            log.debug("%s: the kernel marked the dump inconsistent (table changed meanwhile)", what)

    def _replies(self, seq: int, what: str, timeout: float) -> Iterator[NlMsg]:
        while True:
            if not self.wait(timeout):
                raise RuntimeFailure(f"{what}: no answer from the kernel within {timeout} s")
            try:
                data = self.recv()
            except Overrun:
                # a dump socket has no groups: an overrun here means the dump itself lost
                # data. Say so; the caller decides.
                raise
            if data is None:
                continue
            msgs, _ok = split_messages(bytes(data))
            for msg in msgs:
                if msg.seq != seq or msg.pid not in (0, self.portid):
                    continue
                if msg.type == NLMSG_OVERRUN:
                    raise Overrun()
                yield msg
