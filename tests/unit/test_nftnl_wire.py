"""wire/nftnl.py: the bytes of nf_tables set-element batches, checked field by field and
against a message laid out by hand; the constants against the kernel's UAPI headers."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from netwarden.wire import netlink as nl
from netwarden.wire import nftnl as w

INCLUDE = Path("/usr/include/linux")
KEY4 = bytes([192, 0, 2, 7])
KEY6 = bytes.fromhex("20010db8000000000000000000000007")


def raw_attrs(buf: bytes) -> list[tuple[int, bytes]]:
    """(type with its flag bits, value) of each attribute; asserts 4-byte alignment."""
    out = []
    off = 0
    while off < len(buf):
        alen, atype = struct.unpack_from("=HH", buf, off)
        assert alen >= 4 and off + alen <= len(buf)
        out.append((atype, buf[off + 4 : off + alen]))
        padded = (alen + 3) & ~3
        assert buf[off + alen : off + padded] == b"\0" * (padded - alen)
        off += padded
    assert off == len(buf)
    return out


def messages(data: bytes) -> list[nl.NlMsg]:
    msgs, ok = nl.split_messages(data)
    assert ok
    return msgs


def element(msg: nl.NlMsg) -> tuple[bytes, list[tuple[int, bytes]]]:
    """The nfgenmsg and the attributes of the single element of a set-element message."""
    payload = bytes(msg.payload)
    top = raw_attrs(payload[4:])
    assert [t for t, _ in top] == [
        w.NFTA_SET_ELEM_LIST_TABLE,
        w.NFTA_SET_ELEM_LIST_SET,
        w.NFTA_SET_ELEM_LIST_ELEMENTS | nl.NLA_F_NESTED,
    ]
    (entry,) = raw_attrs(top[2][1])
    assert entry[0] == w.NFTA_LIST_ELEM | nl.NLA_F_NESTED
    return payload[:4], raw_attrs(entry[1])


# ------------------------------------------------------------------ constants
def _enum(text: str, member: str) -> int:
    """The value of ``member`` of whichever ``enum { ... }`` in a C header holds it."""
    for m in re.finditer(r"enum\s*\w*\s*\{(.*?)\}", text, re.S):
        value = -1
        for item in re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S).split(","):
            ident, _, expr = (part.strip() for part in item.partition("="))
            if not ident:
                continue
            try:
                value = int(expr, 0) if expr else value + 1
            except ValueError:  # an expression such as __X_MAX - 1: ours never are
                value = -1_000_000
            if ident == member:
                return value
    raise AssertionError(f"{member} not found")


def _define(text: str, name: str) -> str:
    m = re.search(r"#define\s+" + name + r"\s+(.+)", text)
    assert m is not None, name
    return m.group(1).split("/*")[0].strip()


def test_constants_match_the_kernel_headers() -> None:
    nft_h = INCLUDE / "netfilter" / "nf_tables.h"
    if not nft_h.exists():
        pytest.skip("no kernel headers (apt-get install linux-libc-dev)")
    nft = nft_h.read_text()
    for name in (
        "NFT_MSG_NEWSETELEM",
        "NFT_MSG_GETSETELEM",
        "NFT_MSG_DELSETELEM",
        "NFTA_LIST_ELEM",
        "NFTA_SET_ELEM_LIST_TABLE",
        "NFTA_SET_ELEM_LIST_SET",
        "NFTA_SET_ELEM_LIST_ELEMENTS",
        "NFTA_SET_ELEM_KEY",
        "NFTA_SET_ELEM_TIMEOUT",
        "NFTA_DATA_VALUE",
    ):
        assert _enum(nft, name) == getattr(w, name), name
    assert int(_define(nft, "NFT_NAME_MAXLEN")) == w.NFT_NAME_MAXLEN

    nfnl = (INCLUDE / "netfilter" / "nfnetlink.h").read_text()
    assert int(_define(nfnl, "NFNL_SUBSYS_NFTABLES")) == w.NFNL_SUBSYS_NFTABLES
    assert int(_define(nfnl, "NFNETLINK_V0")) == w.NFNETLINK_V0
    assert _define(nfnl, "NFNL_MSG_BATCH_BEGIN") == "NLMSG_MIN_TYPE"
    assert _define(nfnl, "NFNL_MSG_BATCH_END") == "NLMSG_MIN_TYPE+1"
    netlink_h = (INCLUDE / "netlink.h").read_text()
    min_type = int(_define(netlink_h, "NLMSG_MIN_TYPE"), 0)
    assert (min_type, min_type + 1) == (w.NFNL_MSG_BATCH_BEGIN, w.NFNL_MSG_BATCH_END)
    assert int(_define(netlink_h, "NLM_F_CAPPED"), 0) == w.NLM_F_CAPPED
    assert int(_define(netlink_h, "NLM_F_ACK_TLVS"), 0) == w.NLM_F_ACK_TLVS
    assert _enum(netlink_h, "NLMSGERR_ATTR_MSG") == w.NLMSGERR_ATTR_MSG
    assert _enum((INCLUDE / "netfilter.h").read_text(), "NFPROTO_INET") == w.NFPROTO_INET


# ------------------------------------------------------------------ one message
def test_setelem_matches_a_message_laid_out_by_hand() -> None:
    op = w.ElemOp(w.NFT_MSG_NEWSETELEM, "blocked4", KEY4, 60_000, nl.NLM_F_CREATE)
    value = struct.pack("=HH", 8, 1) + KEY4  # NFTA_DATA_VALUE
    key = struct.pack("=HH", 4 + len(value), 1 | 0x8000) + value  # NFTA_SET_ELEM_KEY
    timeout = struct.pack("=HH", 12, 4) + (60_000).to_bytes(8, "big")
    entry = struct.pack("=HH", 4 + len(key) + len(timeout), 1 | 0x8000) + key + timeout
    elements = struct.pack("=HH", 4 + len(entry), 3 | 0x8000) + entry
    body = (
        bytes([1, 0, 0, 0])  # nfgenmsg: NFPROTO_INET, NFNETLINK_V0, res_id 0
        + struct.pack("=HH", 14, 1)
        + b"netwarden\0\0\0"
        + struct.pack("=HH", 13, 2)
        + b"blocked4\0\0\0\0"
        + elements
    )
    flags = 0x01 | 0x04 | 0x400  # NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
    header = struct.pack("=IHHII", 16 + len(body), (10 << 8) | 12, flags, 77, 0)
    assert w.setelem(77, "netwarden", op) == header + body
    assert len(header + body) == 84


def test_ipv6_key_and_timeout_are_nested_in_the_element() -> None:
    op = w.ElemOp(w.NFT_MSG_NEWSETELEM, "blocked6", KEY6, 1_500, nl.NLM_F_CREATE)
    (msg,) = messages(w.setelem(5, "netwarden", op))
    assert msg.type == w.msg_type(w.NFT_MSG_NEWSETELEM) == 0x0A0C
    assert msg.flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE
    gen, attrs = element(msg)
    assert gen == nl.NFGENMSG.pack(w.NFPROTO_INET, w.NFNETLINK_V0, 0)
    assert [t for t, _ in attrs] == [w.NFTA_SET_ELEM_KEY | nl.NLA_F_NESTED, w.NFTA_SET_ELEM_TIMEOUT]
    assert raw_attrs(attrs[0][1]) == [(w.NFTA_DATA_VALUE, KEY6)]
    assert attrs[1][1] == b"\0\0\0\0\0\0\x05\xdc"  # be64 1500
    top = raw_attrs(bytes(msg.payload)[4:])
    assert top[0][1] == b"netwarden\0"
    assert top[1][1] == b"blocked6\0"


def test_no_timeout_attribute_without_a_timeout() -> None:
    op = w.ElemOp(w.NFT_MSG_DELSETELEM, "blocked4", KEY4)
    (msg,) = messages(w.setelem(9, "netwarden", op))
    assert msg.type == (w.NFNL_SUBSYS_NFTABLES << 8) | w.NFT_MSG_DELSETELEM
    assert msg.flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK
    _gen, attrs = element(msg)
    assert attrs == [(w.NFTA_SET_ELEM_KEY | nl.NLA_F_NESTED, struct.pack("=HH", 8, 1) + KEY4)]


def test_timeout_is_big_endian_64_bit() -> None:
    big = (1 << 40) + 3
    op = w.ElemOp(w.NFT_MSG_NEWSETELEM, "blocked4", KEY4, big)
    (msg,) = messages(w.setelem(1, "netwarden", op))
    _gen, attrs = element(msg)
    assert attrs[1] == (w.NFTA_SET_ELEM_TIMEOUT, struct.pack(">Q", big))


@pytest.mark.parametrize(
    ("table", "op"),
    [
        ("", w.ElemOp(w.NFT_MSG_NEWSETELEM, "blocked4", KEY4)),
        ("x" * 256, w.ElemOp(w.NFT_MSG_NEWSETELEM, "blocked4", KEY4)),
        ("net\0warden", w.ElemOp(w.NFT_MSG_NEWSETELEM, "blocked4", KEY4)),
        ("netwarden", w.ElemOp(w.NFT_MSG_NEWSETELEM, "", KEY4)),
        ("netwarden", w.ElemOp(w.NFT_MSG_NEWSETELEM, "blocked4", b"")),
        ("netwarden", w.ElemOp(w.NFT_MSG_NEWSETELEM, "blocked4", KEY4, -1)),
        ("netwarden", w.ElemOp(w.NFT_MSG_NEWSETELEM, "blocked4", KEY4, 1 << 64)),
        ("netwarden", w.ElemOp(w.NFT_MSG_GETSETELEM, "blocked4", KEY4)),
    ],
)
def test_bad_input_is_refused(table: str, op: w.ElemOp) -> None:
    with pytest.raises(ValueError):
        w.setelem(1, table, op)


def test_longest_name_fits() -> None:
    name = "t" * 255
    (msg,) = messages(w.setelem(1, name, w.ElemOp(w.NFT_MSG_DELSETELEM, "s", KEY4)))
    assert raw_attrs(bytes(msg.payload)[4:])[0][1] == name.encode() + b"\0"


# ------------------------------------------------------------------ batches
def test_batch_frames_the_messages_with_begin_and_end() -> None:
    ops = w.replace_ops("blocked4", KEY4, 60_000)
    data = w.batch(1000, "netwarden", ops)
    msgs = messages(data)
    assert [m.type for m in msgs] == [
        w.NFNL_MSG_BATCH_BEGIN,
        w.msg_type(w.NFT_MSG_NEWSETELEM),
        w.msg_type(w.NFT_MSG_DELSETELEM),
        w.msg_type(w.NFT_MSG_NEWSETELEM),
        w.NFNL_MSG_BATCH_END,
    ]
    assert [m.seq for m in msgs] == [1000, 1001, 1002, 1003, 1004]
    assert all(m.pid == 0 for m in msgs)
    for m in (msgs[0], msgs[-1]):
        assert m.flags == nl.NLM_F_REQUEST  # no ACK asked of BEGIN/END
        assert bytes(m.payload) == bytes([0, 0, 0, 10])  # AF_UNSPEC, v0, res_id 10 (be16)
    # only the last element message asks for an ACK: errors are reported either way, and
    # the kernel replies in message order once the batch is done
    assert [bool(m.flags & nl.NLM_F_ACK) for m in msgs[1:-1]] == [False, False, True]
    # every header's length is the message's own; every message starts 4-aligned
    off = 0
    for m in msgs:
        (length,) = struct.unpack_from("=I", data, off)
        assert length == 16 + len(m.payload)
        assert off % 4 == 0
        off += (length + 3) & ~3
    assert off == len(data)
    assert data == b"".join(
        [w.batch_begin(1000)]
        + [w.setelem(1001 + i, "netwarden", op) for i, op in enumerate(ops)]
        + [w.batch_end(1004)]
    )


def test_replace_is_add_bare_then_delete_then_add_with_timeout() -> None:
    add, delete, again = w.replace_ops("blocked6", KEY6, 90_000)
    assert (add.msg, add.timeout_ms) == (w.NFT_MSG_NEWSETELEM, None)
    assert not add.flags & nl.NLM_F_EXCL  # a no-op if the element is there
    assert (delete.msg, delete.timeout_ms, delete.flags) == (w.NFT_MSG_DELSETELEM, None, 0)
    assert (again.msg, again.timeout_ms) == (w.NFT_MSG_NEWSETELEM, 90_000)
    assert {op.set_name for op in (add, delete, again)} == {"blocked6"}
    assert {op.key for op in (add, delete, again)} == {KEY6}
    msgs = messages(w.batch(1, "netwarden", (add, delete, again)))
    assert [len(element(m)[1]) for m in msgs[1:-1]] == [1, 1, 2]
    assert w.replace_ops("blocked4", KEY4, None)[2].timeout_ms is None


@pytest.mark.parametrize(
    ("set_name", "key", "timeout"),
    [
        ("blocked4", KEY4, 60_000),
        ("blocked4", bytes([0xA5] * 4), 1),  # the template's own marker as a value
        ("blocked6", KEY6, (1 << 64) - 1),
        ("blocked4", KEY4, None),
        ("blocked6", KEY6, None),
    ],
)
@pytest.mark.parametrize("seq", [1, 0x1234_5678, 0xFFFF_FFFE])
def test_replace_template_renders_what_batch_encodes(
    set_name: str, key: bytes, timeout: int | None, seq: int
) -> None:
    tpl = w.ReplaceTemplate("netwarden", set_name, len(key), timeout is not None)
    assert tpl.render(seq, key, timeout) == w.batch(
        seq, "netwarden", w.replace_ops(set_name, key, timeout)
    )
    # and again with other values: nothing of the first call is left in the template
    other = bytes(len(key))
    assert tpl.render(seq + 9, other, 5 if timeout is not None else None) == w.batch(
        seq + 9, "netwarden", w.replace_ops(set_name, other, 5 if timeout is not None else None)
    )


def test_replace_template_refuses_a_key_of_another_size() -> None:
    tpl = w.ReplaceTemplate("netwarden", "blocked4", 4, True)
    with pytest.raises(ValueError, match="key of 16 bytes"):
        tpl.render(1, KEY6, 1000)
    with pytest.raises(ValueError, match="timeout out of range"):
        tpl.render(1, KEY4, None)


def test_delete_is_one_message() -> None:
    (op,) = w.delete_ops("blocked4", KEY4)
    msgs = messages(w.batch(7, "netwarden", [op]))
    assert [m.seq for m in msgs] == [7, 8, 9]
    assert msgs[1].type == w.msg_type(w.NFT_MSG_DELSETELEM)


def test_sequence_numbers_wrap() -> None:
    msgs = messages(w.batch(0xFFFF_FFFE, "netwarden", w.replace_ops("blocked4", KEY4, 1)))
    assert [m.seq for m in msgs] == [0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1, 2]


# ------------------------------------------------------------------ error replies
def _error(flags: int, code: int, echoed: bytes, tlvs: bytes) -> tuple[int, bytes]:
    return flags, struct.pack("=i", -code) + echoed + tlvs


def test_error_text_after_a_capped_echo() -> None:
    echoed = struct.pack("=IHHII", 84, 0x0A0C, 5, 1, 0)
    tlvs = nl.nla(w.NLMSGERR_ATTR_MSG, b"bad things\0") + nl.nla(2, struct.pack("=I", 20))
    flags, payload = _error(w.NLM_F_CAPPED | w.NLM_F_ACK_TLVS, 2, echoed, tlvs)
    assert nl.nlmsg_error(payload) == 2
    assert w.error_text(flags, payload) == "bad things"


def test_error_text_after_a_full_echo() -> None:
    request = w.setelem(3, "netwarden", w.ElemOp(w.NFT_MSG_DELSETELEM, "blocked6", KEY6))
    tlvs = nl.nla(w.NLMSGERR_ATTR_MSG, b"no\0")
    flags, payload = _error(w.NLM_F_ACK_TLVS, 2, request, tlvs)
    assert w.error_text(flags, payload) == "no"


def test_no_error_text_without_tlvs() -> None:
    echoed = struct.pack("=IHHII", 84, 0x0A0C, 5, 1, 0)
    assert w.error_text(w.NLM_F_CAPPED, struct.pack("=i", -2) + echoed) is None
    flags, payload = _error(w.NLM_F_CAPPED | w.NLM_F_ACK_TLVS, 2, echoed, nl.nla(2, bytes(4)))
    assert w.error_text(flags, payload) is None
    assert w.error_text(w.NLM_F_CAPPED | w.NLM_F_ACK_TLVS, b"\0\0") is None
