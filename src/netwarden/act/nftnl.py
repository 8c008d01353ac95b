"""Single addresses in netwarden's hash sets (``blocked4``/``blocked6``) over raw nf_tables
netlink: one batch per call, 25-45 µs against 100-240 µs through libnftables
(bench/nft_bench.py).

API::

    with NftSets() as sets:                   # table "netwarden"; the socket lives in the
                                              # network namespace of the creating thread
        sets.replace(ip_address("192.0.2.7"), 3_600_000)   # present, with exactly this
                                              # timeout (ms; None: no timeout) afterwards
        sets.delete(ip_address("192.0.2.7"))  # NftError(no_such_object) if it is not there
    # errors: NftError (message holds the strerror text, command the nft equivalent);
    # EPERM becomes MissingCapability (needs CAP_NET_ADMIN)

CIDRs (the interval sets) and the table itself stay with libnftables (:mod:`.nft`). Calls
are serialized by a lock. The kernel answers a batch while it is being sent, so every
reply is waiting when ``send`` returns; after an error the rest of the batch's replies are
read and dropped, so none is left for the next call.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_network

from netwarden.act import nft as render
from netwarden.act.libnftables import NftError
from netwarden.capture.netlink_socket import NetlinkSocket
from netwarden.closing import Closing
from netwarden.errors import MissingCapability, RuntimeFailure
from netwarden.wire import nftnl as wire
from netwarden.wire.netlink import NETLINK_NETFILTER, NLMSG_ERROR, nlmsg_error, split_messages

__all__ = ["NftSets"]

_SEQ_MASK = 0xFFFFFFFF


class NftSets(Closing):
    """One NETLINK_NETFILTER socket adding and deleting addresses in the table's hash sets."""

    def __init__(self, table: str = render.TABLE, *, timeout: float = 5.0) -> None:
        render.list_table(table)  # validates the name as the rest of netwarden does
        self.table = table
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: NetlinkSocket | None = NetlinkSocket(NETLINK_NETFILTER)
        self._seq = int.from_bytes(os.urandom(4), "little")
        self._dirty = False  # a call ended before reading all its replies
        self._templates: dict[tuple[int, bool], wire.ReplaceTemplate] = {}

    # ---------------------------------------------------------------- API
    def replace(self, addr: IPv4Address | IPv6Address, timeout_ms: int | None) -> None:
        """Put ``addr`` in its set with exactly ``timeout_ms`` (None: no timeout), whether
        or not it was there: one transaction.

        The kernel reads 0 as "no timeout", so less than 1 ms becomes 1 ms; it keeps
        timeouts in whole jiffies, at least one (at HZ=250: 1 ms and 7 ms list as 4 ms)."""
        ms = None if timeout_ms is None else max(1, int(timeout_ms))
        shape = (addr.version, ms is not None)
        tpl = self._templates.get(shape)
        if tpl is None:
            name = render.SETS[(addr.version, False)]
            klen = 4 if addr.version == 4 else 16
            tpl = self._templates[shape] = wire.ReplaceTemplate(
                self.table, name, klen, ms is not None
            )
        self._transact(tpl, addr, ms)

    def delete(self, addr: IPv4Address | IPv6Address) -> None:
        """Remove ``addr`` from its set; NftError (``no_such_object``) if it is not there."""
        name = render.SETS[(addr.version, False)]
        self._transact(wire.delete_ops(name, addr.packed), addr, None, delete=True)

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # ---------------------------------------------------------------- internals
    def _transact(
        self,
        ops: Sequence[wire.ElemOp] | wire.ReplaceTemplate,
        addr: IPv4Address | IPv6Address,
        timeout_ms: int | None,
        *,
        delete: bool = False,
    ) -> None:
        with self._lock:
            sock = self._sock
            if sock is None:
                raise RuntimeFailure("nftables: netlink socket already closed")
            if self._dirty:
                self._drain(sock)
            seq = self._seq
            if isinstance(ops, wire.ReplaceTemplate):
                count, acks = ops.ops, 1  # only the last message asks for an ACK
                data = ops.render(seq, addr.packed, timeout_ms)
            else:
                count, acks = len(ops), sum(1 for op in ops if op.ack)
                data = wire.batch(seq, self.table, ops)
            self._seq = (seq + count + 2) & _SEQ_MASK
            self._dirty = True
            sock.send(data)
            failure = self._acks(sock, seq, count, acks)
            if failure is not None:
                self._drain(sock)
            self._dirty = False
        if failure is not None:
            self._raise(failure, addr, timeout_ms, delete)

    def _acks(
        self, sock: NetlinkSocket, seq: int, count: int, acks: int
    ) -> tuple[int, str | None] | None:
        """Read replies until the ``acks`` element messages asking for one (of the ``count``
        of the batch starting at ``seq``) are acknowledged; the first error (errno,
        extended-ACK text) ends it early. The kernel sends a batch's replies in message
        order once it is done, so an error comes before the last message's ACK."""
        pending = acks
        last = count + 1
        while pending:
            data = sock.recv(block=False)
            if data is None:
                if not sock.wait(self.timeout):
                    raise RuntimeFailure(
                        f"nftables: no answer from the kernel within {self.timeout} s"
                    )
                continue
            msgs, _ok = split_messages(data)
            for msg in msgs:
                if msg.type != NLMSG_ERROR:
                    continue
                index = (msg.seq - seq) & _SEQ_MASK
                if index > last:
                    continue  # a late reply to an earlier batch
                err = nlmsg_error(msg.payload)
                if err is None:
                    err = errno.EPROTO
                if err:
                    return err, wire.error_text(msg.flags, msg.payload)
                if 0 < index < last:
                    pending -= 1
        return None

    @staticmethod
    def _drain(sock: NetlinkSocket) -> None:
        """Drop every datagram waiting on the socket."""
        while sock.recv(block=False) is not None:
            pass

    def _raise(
        self,
        failure: tuple[int, str | None],
        addr: IPv4Address | IPv6Address,
        timeout_ms: int | None,
        delete: bool,
    ) -> None:
        err, detail = failure
        net = ip_network(addr)
        if delete:
            command = render.delete_elements([net], self.table)
        else:
            command = render.replace_elements([render.Element(net, timeout_ms)], self.table)
        if err == errno.EPERM:
            raise MissingCapability(
                "nftables: Operation not permitted",
                "blocking needs root (CAP_NET_ADMIN); run as root or without --block",
            )
        what = "delete" if delete else "replace"
        name = render.SETS[(addr.version, False)]
        message = (
            f"Could not {what} element {addr} in set {render.FAMILY} {self.table} {name}: "
            f"{os.strerror(err)}"
        )
        if detail:
            message += f" ({detail})"
        raise NftError(message, command)
