"""Pure nf_tables netlink encoders: one nfnetlink batch of set-element messages. No I/O.

A batch is one nf_tables transaction (all or nothing)::

    NFNL_MSG_BATCH_BEGIN   seq       nfgenmsg(AF_UNSPEC, v0, res_id=NFNL_SUBSYS_NFTABLES)
    NFT_MSG_NEWSETELEM     seq + 1   nfgenmsg(NFPROTO_INET, v0, 0)
        NFTA_SET_ELEM_LIST_TABLE     "netwarden\\0"
        NFTA_SET_ELEM_LIST_SET       "blocked4\\0"
        NFTA_SET_ELEM_LIST_ELEMENTS  (nested)
            NFTA_LIST_ELEM           (nested)
                NFTA_SET_ELEM_KEY    (nested)
                    NFTA_DATA_VALUE  the address, 4 or 16 bytes
                NFTA_SET_ELEM_TIMEOUT  be64 milliseconds (only with a timeout)
    ...                    seq + i
    NFNL_MSG_BATCH_END     seq + n + 1

Element messages carry NLM_F_ACK (one ACK or error each, sent once the batch is committed
or aborted); BATCH_BEGIN/END do not: older kernels never acknowledge them, and an error of
the batch as a whole (EPERM) comes with BATCH_BEGIN's sequence number anyway. Constants are those of
``linux/netfilter/nf_tables.h``, ``nfnetlink.h``, ``netfilter.h`` and ``netlink.h``.
Framing (header, attributes, padding) is :mod:`netwarden.wire.netlink`'s.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from netwarden.wire.netlink import (
    AF_UNSPEC,
    NFGENMSG,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    Buffer,
    attrs,
    nla,
    nlmsg,
)

__all__ = [
    "NFNETLINK_V0",
    "NFNL_MSG_BATCH_BEGIN",
    "NFNL_MSG_BATCH_END",
    "NFNL_SUBSYS_NFTABLES",
    "NFPROTO_INET",
    "NFT_MSG_DELSETELEM",
    "NFT_MSG_NEWSETELEM",
    "ElemOp",
    "ReplaceTemplate",
    "batch",
    "batch_begin",
    "batch_end",
    "delete_ops",
    "error_text",
    "msg_type",
    "replace_ops",
    "setelem",
]

# nfnetlink.h
NFNETLINK_V0 = 0
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10  # NLMSG_MIN_TYPE
NFNL_MSG_BATCH_END = 0x11  # NLMSG_MIN_TYPE + 1

# netfilter.h
NFPROTO_INET = 1

# nf_tables.h: enum nf_tables_msg_types
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14
# enum nft_list_attributes
NFTA_LIST_ELEM = 1
# enum nft_set_elem_list_attributes
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
# enum nft_set_elem_attributes
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_TIMEOUT = 4
# enum nft_data_attributes
NFTA_DATA_VALUE = 1
#: NFT_TABLE_MAXNAMELEN and NFT_SET_MAXNAMELEN, the terminating NUL included
NFT_NAME_MAXLEN = 256

# netlink.h: flags of an NLMSG_ERROR message and its extended-ACK attributes
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1

_BE64 = struct.Struct("!Q")
_U64_MAX = (1 << 64) - 1
_SEQ_MASK = 0xFFFFFFFF


def msg_type(msg: int) -> int:
    """The netlink message type of nf_tables message ``msg`` (subsystem in the high byte)."""
    return (NFNL_SUBSYS_NFTABLES << 8) | msg


@dataclass(frozen=True, slots=True)
class ElemOp:
    """One set-element message of a batch: add (NFT_MSG_NEWSETELEM) or delete
    (NFT_MSG_DELSETELEM) ``key`` in ``set_name``; ``timeout_ms`` None sends no timeout;
    ``flags`` are added to NLM_F_REQUEST | NLM_F_ACK."""

    msg: int
    set_name: str
    key: bytes
    timeout_ms: int | None = None
    flags: int = 0
    #: ask for an ACK (an error is reported either way)
    ack: bool = True


def _name(value: str, what: str) -> bytes:
    raw = value.encode()
    if not raw or b"\0" in raw or len(raw) >= NFT_NAME_MAXLEN:
        raise ValueError(f"bad nf_tables {what} name {value!r}")
    return raw + b"\0"


@functools.lru_cache(maxsize=64)
def _names(table: str, set_name: str) -> bytes:
    """NFTA_SET_ELEM_LIST_TABLE and _SET (constant per set: cached)."""
    return nla(NFTA_SET_ELEM_LIST_TABLE, _name(table, "table")) + nla(
        NFTA_SET_ELEM_LIST_SET, _name(set_name, "set")
    )


def _nest(atype: int, *children: bytes) -> bytes:
    return nla(atype | NLA_F_NESTED, b"".join(children))


def _header(seq: int, family: int, res_id: int) -> tuple[int, bytes]:
    return seq & _SEQ_MASK, NFGENMSG.pack(family, NFNETLINK_V0, res_id)


def batch_begin(seq: int) -> bytes:
    """NFNL_MSG_BATCH_BEGIN for the nf_tables subsystem (res_id, network order)."""
    s, gen = _header(seq, AF_UNSPEC, NFNL_SUBSYS_NFTABLES)
    return nlmsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, s, gen)


def batch_end(seq: int) -> bytes:
    """NFNL_MSG_BATCH_END: commit the transaction."""
    s, gen = _header(seq, AF_UNSPEC, NFNL_SUBSYS_NFTABLES)
    return nlmsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, s, gen)


def setelem(seq: int, table: str, op: ElemOp) -> bytes:
    """One NFT_MSG_NEWSETELEM / NFT_MSG_DELSETELEM message of family NFPROTO_INET holding
    one element (key, and timeout when given), asking for an ACK."""
    if op.msg not in (NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM):
        raise ValueError(f"not a set-element message: {op.msg}")
    if not op.key:
        raise ValueError("empty set-element key")
    elem = _nest(NFTA_SET_ELEM_KEY, nla(NFTA_DATA_VALUE, op.key))
    if op.timeout_ms is not None:
        if not 0 <= op.timeout_ms <= _U64_MAX:
            raise ValueError(f"timeout out of range: {op.timeout_ms} ms")
        elem += nla(NFTA_SET_ELEM_TIMEOUT, _BE64.pack(op.timeout_ms))
    s, gen = _header(seq, NFPROTO_INET, 0)
    body = (
        gen
        + _names(table, op.set_name)
        + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, _nest(NFTA_LIST_ELEM, elem))
    )
    flags = NLM_F_REQUEST | op.flags | (NLM_F_ACK if op.ack else 0)
    return nlmsg(msg_type(op.msg), flags, s, body)


def batch(seq: int, table: str, ops: Sequence[ElemOp]) -> bytes:
    """One transaction: BATCH_BEGIN (``seq``), ``ops[i]`` (``seq + 1 + i``), BATCH_END
    (``seq + len(ops) + 1``); sequence numbers wrap at 2**32."""
    parts = [batch_begin(seq)]
    parts += [setelem(seq + 1 + i, table, op) for i, op in enumerate(ops)]
    parts.append(batch_end(seq + len(ops) + 1))
    return b"".join(parts)


def replace_ops(set_name: str, key: bytes, timeout_ms: int | None) -> tuple[ElemOp, ...]:
    """Add ``key`` whether or not it is there, with exactly ``timeout_ms``: add without
    timeout and without NLM_F_EXCL (a no-op if present), delete, add with the timeout
    (the messages of ``nft.replace_elements``; NLM_F_CREATE as nft sends it)."""
    return (
        ElemOp(NFT_MSG_NEWSETELEM, set_name, key, None, NLM_F_CREATE, ack=False),
        ElemOp(NFT_MSG_DELSETELEM, set_name, key, ack=False),
        ElemOp(NFT_MSG_NEWSETELEM, set_name, key, timeout_ms, NLM_F_CREATE),
    )


_KEY_MARK = 0xA5
_TIMEOUT_MARK = 0x0123456789ABCDEF
_U32 = struct.Struct("=I")


class ReplaceTemplate:
    """:func:`batch` of :func:`replace_ops` for one set, key size and with or without a
    timeout, encoded once: :meth:`render` patches the sequence numbers, the key and the
    timeout into a copy (a few microseconds instead of tens: it runs on every block)."""

    def __init__(self, table: str, set_name: str, key_len: int, with_timeout: bool) -> None:
        mark = bytes([_KEY_MARK]) * key_len
        ops = replace_ops(set_name, mark, _TIMEOUT_MARK if with_timeout else None)
        self.ops = len(ops)
        data = batch(0, table, ops)
        self._data = data
        self._seq_at: list[int] = []
        off = 0
        while off < len(data):
            self._seq_at.append(off + 8)
            off += _U32.unpack_from(data, off)[0]
        self._key_at: list[int] = []
        i = data.find(mark)
        while i >= 0:
            self._key_at.append(i)
            i = data.find(mark, i + key_len)
        self._timeout_at = data.find(_BE64.pack(_TIMEOUT_MARK)) if with_timeout else -1
        if len(self._key_at) != len(ops) or (with_timeout and self._timeout_at < 0):
            raise ValueError("the key or timeout marker also occurs elsewhere in the batch")
        self.key_len = key_len

    def render(self, seq: int, key: bytes, timeout_ms: int | None = None) -> bytes:
        """The batch with ``seq`` (BATCH_BEGIN's; the messages follow), ``key`` and
        ``timeout_ms`` (ignored without a timeout)."""
        if len(key) != self.key_len:
            raise ValueError(f"key of {len(key)} bytes, not {self.key_len}")
        buf = bytearray(self._data)
        pack_seq = _U32.pack_into
        for i, at in enumerate(self._seq_at):
            pack_seq(buf, at, (seq + i) & _SEQ_MASK)
        n = self.key_len
        for at in self._key_at:
            buf[at : at + n] = key
        if self._timeout_at >= 0:
            if timeout_ms is None or not 0 <= timeout_ms <= _U64_MAX:
                raise ValueError(f"timeout out of range: {timeout_ms} ms")
            _BE64.pack_into(buf, self._timeout_at, timeout_ms)
        return bytes(buf)


def delete_ops(set_name: str, key: bytes) -> tuple[ElemOp, ...]:
    """Delete ``key`` (ENOENT when it is not there)."""
    return (ElemOp(NFT_MSG_DELSETELEM, set_name, key),)


def error_text(flags: int, payload: Buffer) -> str | None:
    """The kernel's extended-ACK message (NLMSGERR_ATTR_MSG) of an NLMSG_ERROR, if any.

    ``flags`` are the error message's netlink flags: NLM_F_ACK_TLVS says attributes follow
    the echoed request, NLM_F_CAPPED that only its header was echoed.
    """
    if not flags & NLM_F_ACK_TLVS or len(payload) < 4 + 16:
        return None
    if flags & NLM_F_CAPPED:
        start = 4 + 16
    else:
        (orig_len,) = struct.unpack_from("=I", payload, 4)
        start = 4 + ((orig_len + 3) & ~3)
    span = attrs(payload, start).get(NLMSGERR_ATTR_MSG)
    if span is None:
        return None
    text = bytes(payload[span[0] : span[1]]).split(b"\0", 1)[0].decode(errors="replace")
    return text or None
