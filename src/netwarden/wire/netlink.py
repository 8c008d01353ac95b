"""Pure netlink codecs: message framing, ctnetlink (conntrack), sock_diag and nfqueue.

Bytes in, values out; no sockets here (``capture/netlink_socket.py`` does the I/O). Every
decoder tolerates truncated or hostile input: a malformed message or attribute is skipped
(the decoders return ``None`` or stop early), never raises.

Byte orders, as the kernel sends them: the netlink header, attribute headers and
sock_diag's ``uid``/``inode`` are host order; ctnetlink attribute values, nfqueue values,
nfgenmsg's ``res_id`` and sock_diag's ports and addresses are network order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

# ------------------------------------------------------------------ netlink framing
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLA_HDR = struct.Struct("=HH")  # len, type
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (network order)

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = 0x3FFF

AF_UNSPEC = 0
AF_INET = 2
AF_INET6 = 10

# netlink protocols and socket options (for the I/O layer)
NETLINK_SOCK_DIAG = 4
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_DROP_MEMBERSHIP = 2
NETLINK_NO_ENOBUFS = 5
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

# nfnetlink
NFNL_SUBSYS_CTNETLINK = 1
NFNL_SUBSYS_QUEUE = 3
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3

# ctnetlink message types and attributes
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
CT_NEW_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
CT_DELETE_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
CT_GET_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET

CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_USE = 11
CTA_ID = 12
CTA_ZONE = 18
CTA_TIMESTAMP = 20

CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_TUPLE_ZONE = 3
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
CTA_PROTO_ICMP_TYPE = 5
CTA_PROTO_ICMP_CODE = 6
CTA_PROTO_ICMPV6_ID = 7
CTA_PROTO_ICMPV6_TYPE = 8
CTA_PROTO_ICMPV6_CODE = 9
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2
CTA_COUNTERS32_PACKETS = 3
CTA_COUNTERS32_BYTES = 4
CTA_TIMESTAMP_START = 1
CTA_TIMESTAMP_STOP = 2

#: conntrack status bits (nf_conntrack_common.h)
IPS_EXPECTED = 1 << 0
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5

# nfqueue
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQ_PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
NFQ_VERDICT_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
NFQ_CONFIG_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_TIMESTAMP = 4
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_PAYLOAD = 10
NFQA_CT = 11
NFQA_CT_INFO = 12
NFQA_CAP_LEN = 13
NFQA_SKB_INFO = 14
NFQA_UID = 16
NFQA_GID = 17

NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_CFG_CMD_PF_BIND = 3
NFQNL_CFG_CMD_PF_UNBIND = 4
NFQNL_COPY_NONE = 0
NFQNL_COPY_META = 1
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_CONNTRACK = 1 << 1
NFQA_CFG_F_GSO = 1 << 2
NFQA_CFG_F_UID_GID = 1 << 3

NF_DROP = 0
NF_ACCEPT = 1
NF_REPEAT = 4

# sock_diag
SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_SOCKID = struct.Struct("!HH16s16s")  # sport, dport, src, dst (network order)
INET_DIAG_SOCKID_TAIL = struct.Struct("=I8s")  # ifindex, cookie (host order)
INET_DIAG_SOCKID_SIZE = INET_DIAG_SOCKID.size + INET_DIAG_SOCKID_TAIL.size
INET_DIAG_REQ_V2 = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
INET_DIAG_MSG_HEAD = struct.Struct("=BBBB")  # family, state, timer, retrans
INET_DIAG_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
INET_DIAG_MSG_SIZE = INET_DIAG_MSG_HEAD.size + INET_DIAG_SOCKID_SIZE + INET_DIAG_MSG_TAIL.size
INET_DIAG_CGROUP_ID = 21
INET_DIAG_NOCOOKIE = b"\xff" * 8
TCP_LISTEN = 10
ALL_STATES = 0xFFFFFFFF

_U8 = struct.Struct("B")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")
_NE64 = struct.Struct("=Q")
_NFQ_PACKET_HDR = struct.Struct("!IHB")
_NFQ_TIMESTAMP = struct.Struct("!QQ")

Buffer = bytes | bytearray | memoryview


def _align(n: int) -> int:
    return (n + 3) & ~3


# ------------------------------------------------------------------ framing
class NlMsg(NamedTuple):
    """One netlink message; ``payload`` is a view of the bytes after the header."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: memoryview


def split_messages(data: Buffer) -> tuple[list[NlMsg], bool]:
    """The netlink messages in one datagram, and whether it ended cleanly.

    A header whose length is impossible stops the split (``False``): what follows it
    cannot be framed.
    """
    view = memoryview(data)
    out: list[NlMsg] = []
    off = 0
    n = len(view)
    hsize = NLMSG_HDR.size
    while off + hsize <= n:
        mlen, mtype, flags, seq, pid = NLMSG_HDR.unpack_from(view, off)
        if mlen < hsize or off + mlen > n:
            return out, False
        out.append(NlMsg(mtype, flags, seq, pid, view[off + hsize : off + mlen]))
        off += _align(mlen)
    return out, off >= n


def nlmsg_error(payload: Buffer) -> int | None:
    """The errno (positive; 0 for an ACK) of an NLMSG_ERROR payload, or None if cut short."""
    if len(payload) < 4:
        return None
    (code,) = struct.unpack_from("=i", payload, 0)
    return -int(code)


def nlmsg(mtype: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    """One netlink message with its header."""
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(payload), mtype, flags, seq, pid) + payload


def nla(atype: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    size = NLA_HDR.size + len(value)
    return NLA_HDR.pack(size, atype) + value + b"\0" * (_align(size) - size)


def attrs(data: Buffer, start: int = 0, end: int | None = None) -> dict[int, tuple[int, int]]:
    """The attributes in ``data[start:end]``: type (flags masked off) → (value start, end).

    Offsets rather than copies keep the hot path cheap; an attribute whose length is
    impossible ends the walk (the ones before it are kept).
    """
    if end is None or end > len(data):
        end = len(data)
    out: dict[int, tuple[int, int]] = {}
    off = start
    while off + 4 <= end:
        alen, atype = NLA_HDR.unpack_from(data, off)
        if alen < 4 or off + alen > end:
            break
        out[atype & NLA_TYPE_MASK] = (off + 4, off + alen)
        off += _align(alen)
    return out


def _be(data: Buffer, span: tuple[int, int] | None) -> int | None:
    """A network-order unsigned integer of 1, 2, 4 or 8 bytes, or None."""
    if span is None:
        return None
    a, b = span
    size = b - a
    if size == 4:
        return int(_BE32.unpack_from(data, a)[0])
    if size == 8:
        return int(_BE64.unpack_from(data, a)[0])
    if size == 2:
        return int(_BE16.unpack_from(data, a)[0])
    if size == 1:
        return int(data[a])
    return None


def _bytes(data: Buffer, span: tuple[int, int] | None, size: int) -> bytes | None:
    if span is None or span[1] - span[0] != size:
        return None
    return bytes(data[span[0] : span[1]])


# ------------------------------------------------------------------ ctnetlink
@dataclass(frozen=True, slots=True)
class CtTuple:
    """One direction of a conntrack entry; addresses packed (4 or 16 bytes)."""

    proto: int
    src: bytes
    dst: bytes
    sport: int | None = None
    dport: int | None = None
    icmp_id: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


@dataclass(frozen=True, slots=True)
class CtEntry:
    """A decoded ctnetlink message (an event or a dump row)."""

    msg_type: int  # IPCTNL_MSG_CT_NEW or IPCTNL_MSG_CT_DELETE
    flags: int  # the netlink flags: NLM_F_CREATE marks a new entry in events
    family: int  # AF_INET or AF_INET6
    orig: CtTuple
    reply: CtTuple | None = None
    ct_id: int | None = None
    status: int | None = None
    mark: int | None = None
    zone: int | None = None
    timeout: int | None = None
    tcp_state: int | None = None
    orig_pkts: int | None = None
    orig_bytes: int | None = None
    reply_pkts: int | None = None
    reply_bytes: int | None = None
    start_ns: int | None = None
    stop_ns: int | None = None

    @property
    def destroyed(self) -> bool:
        return self.msg_type == IPCTNL_MSG_CT_DELETE

    @property
    def created(self) -> bool:
        """A NEW event (rather than an update or a dump row)."""
        return self.msg_type == IPCTNL_MSG_CT_NEW and bool(self.flags & NLM_F_CREATE)


def _ct_tuple(data: Buffer, span: tuple[int, int] | None) -> CtTuple | None:
    if span is None:
        return None
    t = attrs(data, span[0], span[1])
    ipspan = t.get(CTA_TUPLE_IP)
    pspan = t.get(CTA_TUPLE_PROTO)
    if ipspan is None or pspan is None:
        return None
    ip = attrs(data, ipspan[0], ipspan[1])
    src = _bytes(data, ip.get(CTA_IP_V4_SRC), 4)
    dst = _bytes(data, ip.get(CTA_IP_V4_DST), 4)
    if src is None or dst is None:
        src = _bytes(data, ip.get(CTA_IP_V6_SRC), 16)
        dst = _bytes(data, ip.get(CTA_IP_V6_DST), 16)
        if src is None or dst is None:
            return None
    p = attrs(data, pspan[0], pspan[1])
    proto = _be(data, p.get(CTA_PROTO_NUM))
    if proto is None or proto > 255:
        return None
    sport = _be(data, p.get(CTA_PROTO_SRC_PORT))
    dport = _be(data, p.get(CTA_PROTO_DST_PORT))
    if proto == 58:
        icmp = (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE)
    else:
        icmp = (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
    return CtTuple(
        proto,
        src,
        dst,
        None if sport is None or sport > 0xFFFF else sport,
        None if dport is None or dport > 0xFFFF else dport,
        _be(data, p.get(icmp[0])),
        _be(data, p.get(icmp[1])),
        _be(data, p.get(icmp[2])),
    )


def _counters(data: Buffer, span: tuple[int, int] | None) -> tuple[int | None, int | None]:
    if span is None:
        return None, None
    c = attrs(data, span[0], span[1])
    pkts = _be(data, c.get(CTA_COUNTERS_PACKETS) or c.get(CTA_COUNTERS32_PACKETS))
    nbytes = _be(data, c.get(CTA_COUNTERS_BYTES) or c.get(CTA_COUNTERS32_BYTES))
    return pkts, nbytes


def decode_ct_payload(msg_type: int, flags: int, payload: Buffer) -> CtEntry | None:
    """Decode a ctnetlink payload (nfgenmsg + attributes); ``msg_type`` is the low byte
    of the netlink type (IPCTNL_MSG_CT_NEW or _DELETE). None when malformed."""
    if len(payload) < NFGENMSG.size:
        return None
    family = payload[0]
    a = attrs(payload, NFGENMSG.size)
    return _ct_entry(msg_type, flags, family, payload, a)


def _ct_entry(
    msg_type: int, flags: int, family: int, data: Buffer, a: dict[int, tuple[int, int]]
) -> CtEntry | None:
    orig = _ct_tuple(data, a.get(CTA_TUPLE_ORIG))
    if orig is None:
        return None
    fam = AF_INET if len(orig.src) == 4 else AF_INET6
    if family not in (AF_INET, AF_INET6):
        family = fam
    reply = _ct_tuple(data, a.get(CTA_TUPLE_REPLY))
    tcp_state = None
    pi = a.get(CTA_PROTOINFO)
    if pi is not None:
        tcp = attrs(data, pi[0], pi[1]).get(CTA_PROTOINFO_TCP)
        if tcp is not None:
            tcp_state = _be(data, attrs(data, tcp[0], tcp[1]).get(CTA_PROTOINFO_TCP_STATE))
    op, ob = _counters(data, a.get(CTA_COUNTERS_ORIG))
    rp, rb = _counters(data, a.get(CTA_COUNTERS_REPLY))
    start = stop = None
    ts = a.get(CTA_TIMESTAMP)
    if ts is not None:
        t = attrs(data, ts[0], ts[1])
        start = _be(data, t.get(CTA_TIMESTAMP_START))
        stop = _be(data, t.get(CTA_TIMESTAMP_STOP))
    return CtEntry(
        msg_type=msg_type,
        flags=flags,
        family=fam,
        orig=orig,
        reply=reply,
        ct_id=_be(data, a.get(CTA_ID)),
        status=_be(data, a.get(CTA_STATUS)),
        mark=_be(data, a.get(CTA_MARK)),
        zone=_be(data, a.get(CTA_ZONE)),
        timeout=_be(data, a.get(CTA_TIMEOUT)),
        tcp_state=tcp_state,
        orig_pkts=op,
        orig_bytes=ob,
        reply_pkts=rp,
        reply_bytes=rb,
        start_ns=start,
        stop_ns=stop,
    )


class CtCounters(NamedTuple):
    """The parts of a ctnetlink message that change: id, counters, times, TCP state."""

    ct_id: int | None
    orig_pkts: int | None
    orig_bytes: int | None
    reply_pkts: int | None
    reply_bytes: int | None
    start_ns: int | None
    stop_ns: int | None
    tcp_state: int | None


def decode_ct_counters(payload: Buffer) -> CtCounters | None:
    """A quick partial decode of a ctnetlink payload: no tuples, one top-level walk.

    For the messages whose flow is already known by its id (updates, GET answers, rows of
    a re-dump): about a fifth of the cost of :func:`decode_ct_payload`."""
    if len(payload) < NFGENMSG.size:
        return None
    a = attrs(payload, NFGENMSG.size)
    op, ob = _counters(payload, a.get(CTA_COUNTERS_ORIG))
    rp, rb = _counters(payload, a.get(CTA_COUNTERS_REPLY))
    start = stop = tcp_state = None
    ts = a.get(CTA_TIMESTAMP)
    if ts is not None:
        t = attrs(payload, ts[0], ts[1])
        start = _be(payload, t.get(CTA_TIMESTAMP_START))
        stop = _be(payload, t.get(CTA_TIMESTAMP_STOP))
    pi = a.get(CTA_PROTOINFO)
    if pi is not None:
        tcp = attrs(payload, pi[0], pi[1]).get(CTA_PROTOINFO_TCP)
        if tcp is not None:
            tcp_state = _be(payload, attrs(payload, tcp[0], tcp[1]).get(CTA_PROTOINFO_TCP_STATE))
    return CtCounters(_be(payload, a.get(CTA_ID)), op, ob, rp, rb, start, stop, tcp_state)


def decode_ct(msg: NlMsg) -> CtEntry | None:
    """A ctnetlink NEW/DELETE message (event or dump row) → :class:`CtEntry`, else None."""
    if msg.type >> 8 != NFNL_SUBSYS_CTNETLINK:
        return None
    sub = msg.type & 0xFF
    if sub not in (IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE):
        return None
    return decode_ct_payload(sub, msg.flags, msg.payload)


def ct_dump_request(seq: int, family: int = AF_UNSPEC) -> bytes:
    """IPCTNL_MSG_CT_GET with NLM_F_DUMP: every entry of the table (of ``family``)."""
    return nlmsg(CT_GET_TYPE, NLM_F_REQUEST | NLM_F_DUMP, seq, NFGENMSG.pack(family, 0, 0))


def _tuple_attr(atype: int, t: CtTuple) -> bytes:
    if len(t.src) == 4:
        ip = nla(CTA_IP_V4_SRC, t.src) + nla(CTA_IP_V4_DST, t.dst)
    else:
        ip = nla(CTA_IP_V6_SRC, t.src) + nla(CTA_IP_V6_DST, t.dst)
    proto = nla(CTA_PROTO_NUM, bytes([t.proto]))
    if t.sport is not None and t.dport is not None:
        proto += nla(CTA_PROTO_SRC_PORT, _BE16.pack(t.sport))
        proto += nla(CTA_PROTO_DST_PORT, _BE16.pack(t.dport))
    icmp = (
        (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE)
        if t.proto == 58
        else (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
    )
    if t.icmp_id is not None:
        proto += nla(icmp[0], _BE16.pack(t.icmp_id))
    if t.icmp_type is not None:
        proto += nla(icmp[1], bytes([t.icmp_type]))
    if t.icmp_code is not None:
        proto += nla(icmp[2], bytes([t.icmp_code]))
    body = nla(CTA_TUPLE_IP | NLA_F_NESTED, ip) + nla(CTA_TUPLE_PROTO | NLA_F_NESTED, proto)
    return nla(atype | NLA_F_NESTED, body)


def ct_get_request(seq: int, orig: CtTuple, zone: int | None = None, *, ack: bool = True) -> bytes:
    """IPCTNL_MSG_CT_GET of one entry by its original tuple (and zone): its counters now.

    Without ``ack`` the kernel answers with the entry alone (or an error): one message
    per request, so many requests can share a datagram."""
    body = NFGENMSG.pack(AF_INET if len(orig.src) == 4 else AF_INET6, 0, 0)
    body += _tuple_attr(CTA_TUPLE_ORIG, orig)
    if zone:
        body += nla(CTA_ZONE, _BE16.pack(zone))
    return nlmsg(CT_GET_TYPE, NLM_F_REQUEST | (NLM_F_ACK if ack else 0), seq, body)


# ------------------------------------------------------------------ event filter (cBPF)
_BPF_INSN = struct.Struct("=HBBI")  # code, jt, jf, k
_SKF_AD_OFF = -0x1000
_SKF_AD_NLATTR = 12
_SKF_AD_NLATTR_NEST = 16
# opcodes
_LD_H_ABS = 0x28
_LD_W_ABS = 0x20
_LD_IMM = 0x00
_LDX_IMM = 0x01
_LD_B_IND = 0x50
_TAX = 0x07
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06


def _be16_of_host(value: int) -> int:
    """What a cBPF half-word load (network order) reads for a host-order u16 field."""
    return int(_BE16.unpack(struct.pack("=H", value))[0])


def ct_event_filter(closed_states: tuple[int, ...] = (7, 8)) -> list[tuple[int, int, int, int]]:
    """A classic BPF socket filter for a ctnetlink event socket: it keeps NEW events,
    DESTROY events and anything else, but of UPDATE events only those whose TCP state
    (CTA_PROTOINFO/TCP/STATE) is one of ``closed_states`` (TIME_WAIT, CLOSE). Updates are
    most of the messages of a TCP connection; dropping them in the kernel keeps them out
    of our receive queue. Uses the netlink attribute extensions (SKF_AD_NLATTR*)."""
    nlattr = (_SKF_AD_OFF + _SKF_AD_NLATTR) & 0xFFFFFFFF
    nest = (_SKF_AD_OFF + _SKF_AD_NLATTR_NEST) & 0xFFFFFFFF
    prog: list[tuple[int, int, int, int]] = []
    accept = 0xFFFFFFFF
    states = list(closed_states)
    # the program, with jump targets resolved below: [ACCEPT] and [DROP] are the last two
    body: list[tuple[int, str | int, str | int, int]] = [
        (_LD_H_ABS, 0, 0, 4),  # nlmsg_type
        (_JEQ_K, 0, "A", _be16_of_host(CT_NEW_TYPE)),  # not NEW/UPDATE: accept
        (_LD_H_ABS, 0, 0, 6),  # nlmsg_flags
        (_JSET_K, "A", 0, _be16_of_host(NLM_F_CREATE)),  # a NEW event: accept
        (_LD_IMM, 0, 0, NLMSG_HDR.size + NFGENMSG.size),  # first attribute
        (_LDX_IMM, 0, 0, CTA_PROTOINFO),
        (_LD_W_ABS, 0, 0, nlattr),
        (_JEQ_K, "D", 0, 0),
        (_LDX_IMM, 0, 0, CTA_PROTOINFO_TCP),
        (_LD_W_ABS, 0, 0, nest),
        (_JEQ_K, "D", 0, 0),
        (_LDX_IMM, 0, 0, CTA_PROTOINFO_TCP_STATE),
        (_LD_W_ABS, 0, 0, nest),
        (_JEQ_K, "D", 0, 0),
        (_TAX, 0, 0, 0),
        (_LD_B_IND, 0, 0, NLA_HDR.size),
    ]
    for st in states:
        body.append((_JEQ_K, "A", 0, st))
    body.append((_RET_K, 0, 0, 0))  # DROP
    drop_at = len(body) - 1
    body.append((_RET_K, 0, 0, accept))  # ACCEPT
    accept_at = len(body) - 1
    for i, (code, jt, jf, k) in enumerate(body):

        def rel(target: str | int, i: int = i) -> int:
            if target == "A":
                return accept_at - i - 1
            if target == "D":
                return drop_at - i - 1
            return int(target)

        prog.append((code, rel(jt), rel(jf), k))
    return prog


def bpf_program(insns: list[tuple[int, int, int, int]]) -> bytes:
    """The instructions as the kernel's struct sock_filter array."""
    return b"".join(_BPF_INSN.pack(*i) for i in insns)


# ------------------------------------------------------------------ sock_diag
@dataclass(frozen=True, slots=True)
class SockInfo:
    """A socket as sock_diag describes it; addresses packed (4 or 16 bytes)."""

    family: int
    state: int
    src: bytes
    sport: int
    dst: bytes
    dport: int
    ifindex: int
    cookie: bytes
    uid: int
    inode: int
    cgroup_id: int | None = None


def _pad16(addr: bytes) -> bytes:
    return addr[:16].ljust(16, b"\0")


def inet_diag_request(
    seq: int,
    family: int,
    ipproto: int,
    *,
    src: bytes = b"",
    sport: int = 0,
    dst: bytes = b"",
    dport: int = 0,
    states: int = ALL_STATES,
    dump: bool = False,
    cookie: bytes = INET_DIAG_NOCOOKIE,
    ext: int = 0,
) -> bytes:
    """A SOCK_DIAG_BY_FAMILY request (inet_diag_req_v2).

    Without ``dump`` it is an exact lookup: for TCP ``src`` is the local end; for UDP the
    kernel looks the socket up as a receiver, so pass the remote end as ``src``.
    """
    sockid = INET_DIAG_SOCKID.pack(sport, dport, _pad16(src), _pad16(dst))
    sockid += INET_DIAG_SOCKID_TAIL.pack(0, cookie)
    body = INET_DIAG_REQ_V2.pack(family, ipproto, ext, 0, states) + sockid
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return nlmsg(SOCK_DIAG_BY_FAMILY, flags, seq, body)


def decode_inet_diag(payload: Buffer) -> SockInfo | None:
    """An inet_diag_msg (+ attributes, for the cgroup id) → :class:`SockInfo`, or None."""
    if len(payload) < INET_DIAG_MSG_SIZE:
        return None
    family, state, _timer, _retrans = INET_DIAG_MSG_HEAD.unpack_from(payload, 0)
    sport, dport, src, dst = INET_DIAG_SOCKID.unpack_from(payload, 4)
    ifindex, cookie = INET_DIAG_SOCKID_TAIL.unpack_from(payload, 4 + INET_DIAG_SOCKID.size)
    _exp, _rq, _wq, uid, inode = INET_DIAG_MSG_TAIL.unpack_from(payload, 4 + INET_DIAG_SOCKID_SIZE)
    size = 4 if family == AF_INET else 16
    cgroup_id = None
    cg = attrs(payload, INET_DIAG_MSG_SIZE).get(INET_DIAG_CGROUP_ID)
    if cg is not None and cg[1] - cg[0] == 8:
        cgroup_id = int(_NE64.unpack_from(payload, cg[0])[0])
    return SockInfo(
        family=family,
        state=state,
        src=bytes(src[:size]),
        sport=sport,
        dst=bytes(dst[:size]),
        dport=dport,
        ifindex=ifindex,
        cookie=bytes(cookie),
        uid=uid,
        inode=inode,
        cgroup_id=cgroup_id,
    )


# ------------------------------------------------------------------ nfqueue
@dataclass(frozen=True, slots=True)
class NfqPacket:
    """A packet queued to userspace (NFQNL_MSG_PACKET)."""

    queue: int
    packet_id: int
    hw_protocol: int
    hook: int
    mark: int | None = None
    indev: int | None = None
    outdev: int | None = None
    uid: int | None = None
    gid: int | None = None
    timestamp: float | None = None
    cap_len: int | None = None
    ct: CtEntry | None = None
    ct_info: int | None = None
    payload: bytes = b""


def decode_nfq_packet(msg: NlMsg) -> NfqPacket | None:
    """An NFQNL_MSG_PACKET message → :class:`NfqPacket`, or None."""
    if msg.type != NFQ_PACKET_TYPE:
        return None
    data = msg.payload
    if len(data) < NFGENMSG.size:
        return None
    _fam, _ver, queue = NFGENMSG.unpack_from(data, 0)
    a = attrs(data, NFGENMSG.size)
    hdr = a.get(NFQA_PACKET_HDR)
    if hdr is None or hdr[1] - hdr[0] < _NFQ_PACKET_HDR.size:
        return None
    packet_id, hw_protocol, hook = _NFQ_PACKET_HDR.unpack_from(data, hdr[0])
    ts = None
    tspan = a.get(NFQA_TIMESTAMP)
    if tspan is not None and tspan[1] - tspan[0] == _NFQ_TIMESTAMP.size:
        sec, usec = _NFQ_TIMESTAMP.unpack_from(data, tspan[0])
        ts = sec + usec / 1e6
    ct = None
    ctspan = a.get(NFQA_CT)
    if ctspan is not None:
        ct = _ct_entry(IPCTNL_MSG_CT_NEW, 0, AF_UNSPEC, data, attrs(data, ctspan[0], ctspan[1]))
    pl = a.get(NFQA_PAYLOAD)
    return NfqPacket(
        queue=queue,
        packet_id=packet_id,
        hw_protocol=hw_protocol,
        hook=hook,
        mark=_be(data, a.get(NFQA_MARK)),
        indev=_be(data, a.get(NFQA_IFINDEX_INDEV)),
        outdev=_be(data, a.get(NFQA_IFINDEX_OUTDEV)),
        uid=_be(data, a.get(NFQA_UID)),
        gid=_be(data, a.get(NFQA_GID)),
        timestamp=ts,
        cap_len=_be(data, a.get(NFQA_CAP_LEN)),
        ct=ct,
        ct_info=_be(data, a.get(NFQA_CT_INFO)),
        payload=b"" if pl is None else bytes(data[pl[0] : pl[1]]),
    )


def _nfq_config(seq: int, queue: int, body: bytes, family: int = AF_UNSPEC) -> bytes:
    return nlmsg(
        NFQ_CONFIG_TYPE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        NFGENMSG.pack(family, 0, queue) + body,
    )


def nfq_cmd(seq: int, queue: int, command: int, pf: int = AF_UNSPEC) -> bytes:
    """A queue config command (BIND, UNBIND, PF_BIND, PF_UNBIND), asking for an ACK."""
    return _nfq_config(seq, queue, nla(NFQA_CFG_CMD, struct.pack("!BBH", command, 0, pf)))


def nfq_params(
    seq: int,
    queue: int,
    *,
    copy_mode: int = NFQNL_COPY_PACKET,
    copy_range: int = 128,
    flags: int = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_UID_GID | NFQA_CFG_F_CONNTRACK,
    maxlen: int | None = None,
) -> bytes:
    """Copy mode/range, the NFQA_CFG_F_* flags and the queue length of a bound queue."""
    body = nla(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, copy_mode))
    if maxlen is not None:
        body += nla(NFQA_CFG_QUEUE_MAXLEN, _BE32.pack(maxlen))
    body += nla(NFQA_CFG_MASK, _BE32.pack(flags)) + nla(NFQA_CFG_FLAGS, _BE32.pack(flags))
    return _nfq_config(seq, queue, body)


def nfq_verdict(
    seq: int, queue: int, packet_id: int, verdict: int = NF_ACCEPT, mark: int | None = None
) -> bytes:
    """A verdict on one queued packet (no ACK asked: verdicts are the hot path)."""
    body = nla(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    if mark is not None:
        body += nla(NFQA_MARK, _BE32.pack(mark))
    return nlmsg(NFQ_VERDICT_TYPE, NLM_F_REQUEST, seq, NFGENMSG.pack(AF_UNSPEC, 0, queue) + body)


# ------------------------------------------------------------------ IP headers
class FiveTuple(NamedTuple):
    family: int  # 4 or 6
    proto: int
    src: bytes
    sport: int | None
    dst: bytes
    dport: int | None


_IPV6_EXT = frozenset({0, 43, 60, 135, 139, 140})  # hop-by-hop, routing, dst opts, ...


def five_tuple(packet: Buffer) -> FiveTuple | None:
    """Addresses, protocol and ports of an IPv4/IPv6 packet (its first bytes suffice)."""
    n = len(packet)
    if n < 1:
        return None
    version = packet[0] >> 4
    if version == 4:
        if n < 20:
            return None
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20:
            return None
        proto = packet[9]
        src, dst = bytes(packet[12:16]), bytes(packet[16:20])
        frag_off = struct.unpack_from("!H", packet, 6)[0] & 0x1FFF
        l4 = ihl if frag_off == 0 else -1
        family = 4
    elif version == 6:
        if n < 40:
            return None
        proto = packet[6]
        src, dst = bytes(packet[8:24]), bytes(packet[24:40])
        l4 = 40
        for _ in range(8):
            if proto not in _IPV6_EXT and proto != 44:
                break
            if l4 + 8 > n:
                l4 = -1
                break
            if proto == 44:  # fragment header: ports only in the first fragment
                if struct.unpack_from("!H", packet, l4 + 2)[0] & 0xFFF8:
                    proto = packet[l4]
                    l4 = -1
                    break
                proto, l4 = packet[l4], l4 + 8
            else:
                proto, l4 = packet[l4], l4 + (packet[l4 + 1] + 1) * 8
        family = 6
    else:
        return None
    sport = dport = None
    if proto in (6, 17, 132, 136) and l4 >= 0 and l4 + 4 <= n:
        sport, dport = struct.unpack_from("!HH", packet, l4)
    return FiveTuple(family, proto, src, sport, dst, dport)
