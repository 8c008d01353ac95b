"""tcpdump filter expressions, compiled by libpcap's ``pcap_compile`` through ctypes.

The same classic BPF program serves two places:

* live capture attaches :attr:`CompiledFilter.instructions` to an AF_PACKET socket with
  ``SO_ATTACH_FILTER``, so packets that do not match never leave the kernel;
* ``replay FILE FILTER`` runs it in user space with :meth:`CompiledFilter.matches`
  (``pcap_offline_filter``).

libpcap is loaded on first use, not at import. An empty expression needs no libpcap at all: it
compiles to a one-instruction accept-all program.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
from typing import Final

from netwarden.closing import Closing
from netwarden.errors import MissingCapability, UsageError

log = logging.getLogger(__name__)

__all__ = [
    "DLT_EN10MB",
    "DLT_RAW",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "CompiledFilter",
    "compile_filter",
    "dlt_for_linktype",
]

LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101

DLT_EN10MB: Final = 1
#: DLT_RAW is 12 on Linux (14 only on OpenBSD).
DLT_RAW: Final = 12

#: Capture files carry LINKTYPE_* values; pcap_open_dead wants the platform's DLT_* values.
#: They are the same number except for these (libpcap's own table, Linux side).
_LINKTYPE_TO_DLT: Final[dict[int, int]] = {
    100: 11,  # LINKTYPE_ATM_RFC1483 -> DLT_ATM_RFC1483
    101: 12,  # LINKTYPE_RAW -> DLT_RAW
    102: 15,  # LINKTYPE_SLIP_BSDOS -> DLT_SLIP_BSDOS
    103: 16,  # LINKTYPE_PPP_BSDOS -> DLT_PPP_BSDOS
    106: 19,  # LINKTYPE_ATM_CLIP -> DLT_ATM_CLIP
}

PCAP_NETMASK_UNKNOWN: Final = 0xFFFFFFFF
_BPF_RET_K: Final = 0x06  # BPF_RET | BPF_K

_LIB_NAMES: Final = ("libpcap.so.1", "libpcap.so.0.8", "libpcap.so")
_MISSING_FIX: Final = "run: apt-get install libpcap0.8 (libpcap0.8t64 on Debian 13 and later)"


def dlt_for_linktype(linktype: int) -> int:
    """The DLT_* value libpcap's ``pcap_open_dead`` expects for a file's LINKTYPE_* value.

    Only the low 16 bits of a capture file's link-type field are the link type.
    """
    lt = linktype & 0xFFFF
    return _LINKTYPE_TO_DLT.get(lt, lt)


class _BpfInsn(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    )


class _BpfProgram(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn)))


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _PcapPkthdr(ctypes.Structure):
    _fields_ = (("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32))


class _Libpcap:
    """The few libpcap functions we use, with their prototypes set."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.open_dead = lib.pcap_open_dead
        self.open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
        self.open_dead.restype = ctypes.c_void_p
        self.close = lib.pcap_close
        self.close.argtypes = (ctypes.c_void_p,)
        self.close.restype = None
        self.compile = lib.pcap_compile
        self.compile.argtypes = (
            ctypes.c_void_p,
            ctypes.POINTER(_BpfProgram),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        )
        self.compile.restype = ctypes.c_int
        self.geterr = lib.pcap_geterr
        self.geterr.argtypes = (ctypes.c_void_p,)
        self.geterr.restype = ctypes.c_char_p
        self.freecode = lib.pcap_freecode
        self.freecode.argtypes = (ctypes.POINTER(_BpfProgram),)
        self.freecode.restype = None
        self.offline_filter = lib.pcap_offline_filter
        self.offline_filter.argtypes = (
            ctypes.POINTER(_BpfProgram),
            ctypes.POINTER(_PcapPkthdr),
            ctypes.c_char_p,
        )
        self.offline_filter.restype = ctypes.c_int
        # pcap_compile is reentrant since libpcap 1.8; older builds are not. One lock is cheap.
        self.compile_lock = threading.Lock()


@functools.cache
def _libpcap() -> _Libpcap:
    names = list(_LIB_NAMES)
    found = ctypes.util.find_library("pcap")
    if found and found not in names:
        names.append(found)
    errors = []
    for name in names:
        try:
            return _Libpcap(ctypes.CDLL(name, use_errno=True))
        except (OSError, AttributeError) as exc:
            errors.append(f"{name}: {exc}")
    log.debug("libpcap not loadable: %s", "; ".join(errors))
    raise MissingCapability("filter expressions need libpcap, which is not installed", _MISSING_FIX)


class CompiledFilter(Closing):
    """A compiled filter expression.

    ``instructions`` are ``(code, jt, jf, k)`` tuples, ready for ``SO_ATTACH_FILTER``.
    ``matches(data, wirelen)`` runs the program in user space (libpcap's
    ``pcap_offline_filter``); it reuses one packet header, so use one object per thread.
    The libpcap program is freed by :meth:`close` (also on garbage collection).
    An empty expression accepts everything and needs no libpcap.
    """

    __slots__ = ("_hdr", "_lib", "_prog", "expression", "instructions", "linktype", "snaplen")

    def __init__(
        self,
        expression: str,
        linktype: int,
        snaplen: int,
        instructions: list[tuple[int, int, int, int]],
        lib: _Libpcap | None = None,
        prog: _BpfProgram | None = None,
    ) -> None:
        self.expression = expression
        self.linktype = linktype
        self.snaplen = snaplen
        self.instructions = instructions
        self._lib = lib
        self._prog = prog
        self._hdr = _PcapPkthdr()

    @property
    def accepts_all(self) -> bool:
        """True for the empty expression (no filtering at all)."""
        return not self.expression

    def matches(self, data: bytes | bytearray | memoryview, wirelen: int) -> bool:
        """Whether a packet (captured bytes ``data``, ``wirelen`` bytes on the wire) matches."""
        prog = self._prog
        if prog is None:
            if self.accepts_all:
                return True
            raise ValueError("filter is closed")
        assert self._lib is not None
        buf = data if isinstance(data, bytes) else bytes(data)
        hdr = self._hdr
        hdr.caplen = len(buf)
        hdr.len = wirelen
        return int(self._lib.offline_filter(prog, hdr, buf)) != 0

    def close(self) -> None:
        """Free the libpcap program (idempotent)."""
        prog, self._prog = self._prog, None
        if prog is not None and self._lib is not None:
            self._lib.freecode(prog)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass

    def __repr__(self) -> str:
        return (
            f"CompiledFilter({self.expression!r}, linktype={self.linktype}, "
            f"{len(self.instructions)} instructions)"
        )


def compile_filter(expr: str | None, linktype: int, snaplen: int = 262144) -> CompiledFilter:
    """Compile a tcpdump filter expression for packets of ``linktype`` (a LINKTYPE_* value).

    ``None`` or a blank expression gives an accept-all filter. A bad expression raises
    :class:`UsageError` carrying libpcap's own message and the option name ``filter``; a
    missing libpcap raises :class:`MissingCapability`.
    """
    text = (expr or "").strip()
    if not text:
        return CompiledFilter("", linktype, snaplen, [(_BPF_RET_K, 0, 0, snaplen)])
    lib = _libpcap()
    dlt = dlt_for_linktype(linktype)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(str(exc), option="filter", value=text) from None
    pcap = lib.open_dead(dlt, snaplen)
    if not pcap:
        raise UsageError(
            f"libpcap cannot compile filters for link type {linktype}", option="filter", value=text
        )
    prog = _BpfProgram()
    try:
        with lib.compile_lock:
            rc = lib.compile(pcap, ctypes.byref(prog), encoded, 1, PCAP_NETMASK_UNKNOWN)
            message = lib.geterr(pcap) if rc != 0 else None
        if rc != 0:
            reason = (message or b"cannot compile").decode("utf-8", "replace")
            raise UsageError(reason, option="filter", value=text)
    finally:
        lib.close(pcap)
    insns = [
        (int(i.code), int(i.jt), int(i.jf), int(i.k))
        for i in (prog.bf_insns[n] for n in range(prog.bf_len))
    ]
    return CompiledFilter(text, linktype, snaplen, insns, lib, prog)
