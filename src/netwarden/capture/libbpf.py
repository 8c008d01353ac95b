"""A small ctypes binding of our own to libbpf.so.1 (Debian's libbpf 1.1 and later).

Only what netwarden's eBPF backend needs: open and load an object, set read-only data and
map sizes before loading, attach programs (cgroup, BTF tracepoints, iterators), read and
delete map elements, and consume a ring buffer.

libbpf 1.x conventions: functions returning an int return a negative errno on failure;
functions returning a pointer return NULL and set ``errno``. Every pointer return is
declared ``c_void_p`` (a plain ``int`` on the Python side) so that 64-bit addresses are
never truncated. Callback objects are kept referenced for as long as libbpf may call them.

libbpf's own messages (verifier logs included) are collected by :func:`messages`, so that a
refused program can be reported in one line with the kernel's reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from netwarden.errors import MissingCapability

log = logging.getLogger(__name__)

__all__ = [
    "BpfError",
    "BpfLink",
    "BpfMap",
    "BpfObject",
    "BpfProgram",
    "Libbpf",
    "RingBuffer",
    "load_libbpf",
    "messages",
]

LIBBPF_NAMES: Final = ("libbpf.so.1", "libbpf.so")

# enum libbpf_print_level
LIBBPF_WARN: Final = 0
LIBBPF_INFO: Final = 1
LIBBPF_DEBUG: Final = 2

BPF_ANY: Final = 0
BPF_NOEXIST: Final = 1

_c_void_p = ctypes.c_void_p
_c_int = ctypes.c_int
_c_char_p = ctypes.c_char_p

# typedef int (*libbpf_print_fn_t)(enum libbpf_print_level, const char *, va_list);
# A va_list argument is passed as a pointer on x86-64 and arm64.
_PRINT_FN = ctypes.CFUNCTYPE(_c_int, _c_int, _c_char_p, _c_void_p)
# typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
RING_SAMPLE_FN = ctypes.CFUNCTYPE(_c_int, _c_void_p, _c_void_p, ctypes.c_size_t)


class BpfIterAttachOpts(ctypes.Structure):
    """struct bpf_iter_attach_opts (libbpf 1.1)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("link_info", _c_void_p),
        ("link_info_len", ctypes.c_uint32),
    )


class BpfIterLinkInfo(ctypes.Structure):
    """union bpf_iter_link_info, as its ``map`` member (the union is 16 bytes)."""

    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("_rest", ctypes.c_uint32 * 3),
    )


class BpfError(OSError):
    """A libbpf call failed; ``errno`` is set, ``what`` names the call."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.what = what


# ---------------------------------------------------------------------------- log capture
_MESSAGES: deque[str] = deque(maxlen=400)
_MSG_LOCK = threading.Lock()


def messages(clear: bool = False) -> list[str]:
    """libbpf's recent messages (warnings and info), oldest first."""
    with _MSG_LOCK:
        out = list(_MESSAGES)
        if clear:
            _MESSAGES.clear()
    return out


class Libbpf:
    """The loaded library with its prototypes. Use :func:`load_libbpf`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = ctypes.CDLL(path, use_errno=True)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._declare()
        self._print_cb = _PRINT_FN(self._on_print)  # kept alive with the library object
        self.lib.libbpf_set_print(self._print_cb)

    def _fn(self, name: str, restype: Any, *argtypes: Any) -> None:
        f = getattr(self.lib, name)
        f.restype = restype
        f.argtypes = list(argtypes)

    def _declare(self) -> None:
        fn = self._fn
        vp, i, u32, sz = _c_void_p, _c_int, ctypes.c_uint32, ctypes.c_size_t
        fn("libbpf_set_print", vp, _PRINT_FN)
        fn("libbpf_num_possible_cpus", i)
        fn("libbpf_major_version", u32)
        fn("libbpf_minor_version", u32)
        fn("bpf_object__open_file", vp, _c_char_p, vp)
        fn("bpf_object__load", i, vp)
        fn("bpf_object__close", None, vp)
        fn("bpf_object__find_map_by_name", vp, vp, _c_char_p)
        fn("bpf_object__find_program_by_name", vp, vp, _c_char_p)
        fn("bpf_object__next_program", vp, vp, vp)
        fn("bpf_program__name", _c_char_p, vp)
        fn("bpf_program__section_name", _c_char_p, vp)
        fn("bpf_program__set_autoload", i, vp, ctypes.c_bool)
        fn("bpf_program__autoload", ctypes.c_bool, vp)
        fn("bpf_program__fd", i, vp)
        fn("bpf_program__attach", vp, vp)
        fn("bpf_program__attach_cgroup", vp, vp, i)
        fn("bpf_program__attach_iter", vp, vp, ctypes.POINTER(BpfIterAttachOpts))
        fn("bpf_link__fd", i, vp)
        fn("bpf_link__destroy", i, vp)
        fn("bpf_iter_create", i, i)
        fn("bpf_map__fd", i, vp)
        fn("bpf_map__name", _c_char_p, vp)
        fn("bpf_map__set_max_entries", i, vp, u32)
        fn("bpf_map__set_initial_value", i, vp, vp, sz)
        fn("bpf_map__value_size", u32, vp)
        fn("bpf_map__key_size", u32, vp)
        fn("bpf_map_lookup_elem", i, i, vp, vp)
        fn("bpf_map_update_elem", i, i, vp, vp, ctypes.c_uint64)
        fn("bpf_map_delete_elem", i, i, vp)
        fn("ring_buffer__new", vp, i, RING_SAMPLE_FN, vp, vp)
        fn("ring_buffer__poll", i, vp, i)
        fn("ring_buffer__consume", i, vp)
        fn("ring_buffer__epoll_fd", i, vp)
        fn("ring_buffer__free", None, vp)
        self._libc.vsnprintf.restype = _c_int
        self._libc.vsnprintf.argtypes = [_c_char_p, ctypes.c_size_t, _c_char_p, _c_void_p]

    def _on_print(self, level: int, fmt: bytes | None, args: int | None) -> int:
        try:
            if level > LIBBPF_INFO or fmt is None:
                return 0
            buf = ctypes.create_string_buffer(2048)
            n = self._libc.vsnprintf(buf, len(buf), fmt, args)
            if n < 0:
                return 0
            text = buf.value.decode("utf-8", "replace").rstrip("\n")
            with _MSG_LOCK:
                for line in text.splitlines():
                    _MESSAGES.append(line)
            log.debug("libbpf: %s", text)
        except Exception:  # a callback must never raise into C
            return 0
        return 0

    @property
    def version(self) -> tuple[int, int]:
        return int(self.lib.libbpf_major_version()), int(self.lib.libbpf_minor_version())

    def num_possible_cpus(self) -> int:
        n = int(self.lib.libbpf_num_possible_cpus())
        if n <= 0:
            raise BpfError(-n if n < 0 else 22, "libbpf_num_possible_cpus")
        return n


_LIB: Libbpf | None = None
_LIB_LOCK = threading.Lock()


def load_libbpf() -> Libbpf:
    """The process-wide libbpf binding; MissingCapability when libbpf.so.1 is absent."""
    global _LIB
    with _LIB_LOCK:
        if _LIB is not None:
            return _LIB
        errors = []
        for name in LIBBPF_NAMES:
            try:
                lib = Libbpf(name)
            except OSError as exc:
                errors.append(str(exc))
                continue
            except AttributeError as exc:  # a libbpf older than 1.0
                raise MissingCapability(
                    f"libbpf at {name} lacks {exc.args[0] if exc.args else 'a function'}",
                    "install libbpf 1.1 or later (Debian package libbpf1)",
                ) from exc
            _LIB = lib
            return lib
        found = ctypes.util.find_library("bpf")
        raise MissingCapability(
            "libbpf.so.1 not found" + (f" (found {found})" if found else ""),
            "install the Debian package libbpf1",
        )


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise BpfError(-ret, what)
    return ret


def _check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        err = ctypes.get_errno() or 22
        raise BpfError(err, what)
    return ptr


# ---------------------------------------------------------------------------- wrappers
class BpfLink:
    """An attachment; :meth:`destroy` detaches it (so does the process exiting)."""

    def __init__(self, lib: Libbpf, ptr: int, what: str) -> None:
        self._lib = lib
        self.ptr: int | None = ptr
        self.what = what

    @property
    def fd(self) -> int:
        if self.ptr is None:
            raise ValueError("link destroyed")
        return _check(self._lib.lib.bpf_link__fd(self.ptr), "bpf_link__fd")

    def destroy(self) -> None:
        if self.ptr is not None:
            self._lib.lib.bpf_link__destroy(self.ptr)
            self.ptr = None

    def read_iter(self, chunk: int = 1 << 16) -> bytes:
        """Run an iterator link once and return everything it wrote."""
        fd = _check(self._lib.lib.bpf_iter_create(self.fd), "bpf_iter_create")
        parts = []
        try:
            while True:
                data = os.read(fd, chunk)
                if not data:
                    break
                parts.append(data)
        finally:
            os.close(fd)
        return b"".join(parts)


class BpfMap:
    def __init__(self, lib: Libbpf, ptr: int, name: str) -> None:
        self._lib = lib
        self.ptr = ptr
        self.name = name

    @property
    def fd(self) -> int:
        return _check(self._lib.lib.bpf_map__fd(self.ptr), f"map {self.name}: fd")

    @property
    def key_size(self) -> int:
        return int(self._lib.lib.bpf_map__key_size(self.ptr))

    @property
    def value_size(self) -> int:
        return int(self._lib.lib.bpf_map__value_size(self.ptr))

    def set_max_entries(self, n: int) -> None:
        _check(
            self._lib.lib.bpf_map__set_max_entries(self.ptr, n),
            f"map {self.name}: set_max_entries({n})",
        )

    def set_initial_value(self, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        _check(
            self._lib.lib.bpf_map__set_initial_value(self.ptr, buf, len(data)),
            f"map {self.name}: set_initial_value ({len(data)} bytes)",
        )


class BpfProgram:
    def __init__(self, lib: Libbpf, ptr: int) -> None:
        self._lib = lib
        self.ptr = ptr
        raw = lib.lib.bpf_program__name(ptr)
        self.name = raw.decode() if raw else "?"
        sec = lib.lib.bpf_program__section_name(ptr)
        self.section = sec.decode() if sec else "?"

    def set_autoload(self, on: bool) -> None:
        _check(self._lib.lib.bpf_program__set_autoload(self.ptr, on), "set_autoload")

    @property
    def autoload(self) -> bool:
        return bool(self._lib.lib.bpf_program__autoload(self.ptr))

    def attach(self) -> BpfLink:
        """Attach by section (BTF tracepoints)."""
        ptr = _check_ptr(self._lib.lib.bpf_program__attach(self.ptr), f"attach {self.section}")
        return BpfLink(self._lib, ptr, self.section)

    def attach_cgroup(self, cgroup_fd: int) -> BpfLink:
        ptr = _check_ptr(
            self._lib.lib.bpf_program__attach_cgroup(self.ptr, cgroup_fd),
            f"attach {self.section} to the cgroup",
        )
        return BpfLink(self._lib, ptr, self.section)

    def attach_iter(self) -> BpfLink:
        """Attach an iterator that takes no parameters (task, task_file, ...)."""
        ptr = _check_ptr(
            self._lib.lib.bpf_program__attach_iter(self.ptr, None), f"attach {self.section}"
        )
        return BpfLink(self._lib, ptr, self.section)

    def attach_iter_map(self, map_fd: int) -> BpfLink:
        info = BpfIterLinkInfo(map_fd=map_fd)
        opts = BpfIterAttachOpts(
            sz=ctypes.sizeof(BpfIterAttachOpts),
            link_info=ctypes.cast(ctypes.pointer(info), _c_void_p),
            link_info_len=ctypes.sizeof(info),
        )
        ptr = _check_ptr(
            self._lib.lib.bpf_program__attach_iter(self.ptr, ctypes.byref(opts)),
            f"attach {self.section}",
        )
        return BpfLink(self._lib, ptr, self.section)


class BpfObject:
    """An opened (then loaded) BPF object file."""

    def __init__(self, lib: Libbpf, path: str) -> None:
        self._lib = lib
        self.path = path
        self.ptr: int | None = _check_ptr(
            lib.lib.bpf_object__open_file(os.fsencode(path), None), f"open {path}"
        )

    def _p(self) -> int:
        if self.ptr is None:
            raise ValueError("BPF object closed")
        return self.ptr

    def map(self, name: str) -> BpfMap:
        ptr = _check_ptr(
            self._lib.lib.bpf_object__find_map_by_name(self._p(), name.encode()), f"map {name}"
        )
        return BpfMap(self._lib, ptr, name)

    def program(self, name: str) -> BpfProgram:
        ptr = _check_ptr(
            self._lib.lib.bpf_object__find_program_by_name(self._p(), name.encode()),
            f"program {name}",
        )
        return BpfProgram(self._lib, ptr)

    def programs(self) -> list[BpfProgram]:
        out: list[BpfProgram] = []
        prev: int | None = None
        while True:
            ptr = self._lib.lib.bpf_object__next_program(self._p(), prev)
            if not ptr:
                return out
            out.append(BpfProgram(self._lib, ptr))
            prev = ptr

    def load(self) -> None:
        _check(self._lib.lib.bpf_object__load(self._p()), f"load {self.path}")

    def close(self) -> None:
        if self.ptr is not None:
            self._lib.lib.bpf_object__close(self.ptr)
            self.ptr = None

    # map element access by fd (valid once loaded)
    def lookup(self, map_fd: int, key: bytes, value_size: int) -> bytes | None:
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(value_size)
        ret = self._lib.lib.bpf_map_lookup_elem(map_fd, kbuf, vbuf)
        if ret < 0:
            err = ctypes.get_errno()
            if err == 2:  # ENOENT
                return None
            raise BpfError(err or -ret, "bpf_map_lookup_elem")
        return vbuf.raw

    def delete(self, map_fd: int, key: bytes) -> bool:
        kbuf = ctypes.create_string_buffer(key, len(key))
        ret = self._lib.lib.bpf_map_delete_elem(map_fd, kbuf)
        if ret < 0:
            err = ctypes.get_errno()
            if err == 2:
                return False
            raise BpfError(err or -ret, "bpf_map_delete_elem")
        return True

    def update(self, map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(value, len(value))
        ret = self._lib.lib.bpf_map_update_elem(map_fd, kbuf, vbuf, flags)
        if ret < 0:
            raise BpfError(ctypes.get_errno() or -ret, "bpf_map_update_elem")


class RingBuffer:
    """A BPF ring buffer map consumer; ``on_record(bytes)`` is called for each record."""

    def __init__(self, lib: Libbpf, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        self._lib = lib
        string_at = ctypes.string_at

        def sample(_ctx: int | None, data: int | None, size: int) -> int:
            try:
                on_record(string_at(data or 0, size))
            except Exception:  # never raise into C; count in the caller instead
                log.exception("ring buffer record handler failed")
            return 0

        self._cb = RING_SAMPLE_FN(sample)  # must outlive the ring buffer
        self.ptr: int | None = _check_ptr(
            lib.lib.ring_buffer__new(map_fd, self._cb, None, None), "ring_buffer__new"
        )

    def _p(self) -> int:
        if self.ptr is None:
            raise ValueError("ring buffer freed")
        return self.ptr

    def poll(self, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` for records and consume them; the number consumed."""
        n = self._lib.lib.ring_buffer__poll(self._p(), timeout_ms)
        if n < 0:
            if n == -4:  # EINTR
                return 0
            raise BpfError(-n, "ring_buffer__poll")
        return int(n)

    def consume(self) -> int:
        n = self._lib.lib.ring_buffer__consume(self._p())
        if n < 0:
            raise BpfError(-n, "ring_buffer__consume")
        return int(n)

    def epoll_fd(self) -> int:
        return _check(self._lib.lib.ring_buffer__epoll_fd(self._p()), "ring_buffer__epoll_fd")

    def free(self) -> None:
        if self.ptr is not None:
            self._lib.lib.ring_buffer__free(self.ptr)
            self.ptr = None


def find_object(
    name: str, env_var: str, what: str, path: str | os.PathLike[str] | None = None
) -> str:
    """A compiled BPF object: ``path``, ``$env_var``, next to the package
    (``netwarden/bpf/``), or the repository's ``build/bpf``. MissingCapability when none
    exists, saying where it looked and how to build it."""
    from pathlib import Path

    candidates: list[Path] = []
    if path is not None:
        candidates.append(Path(path))
    else:
        env = os.environ.get(env_var)
        if env:
            candidates.append(Path(env))
        pkg = Path(__file__).resolve().parent.parent
        candidates.append(pkg / "bpf" / name)
        candidates.append(pkg.parent.parent / "build" / "bpf" / name)
    for c in candidates:
        if c.is_file():
            return str(c)
    raise MissingCapability(
        f"the {what} object {name} is not built (looked in "
        + ", ".join(str(c) for c in candidates)
        + ")",
        "run scripts/build-bpf.sh (needs clang, bpftool, libbpf-dev)",
    )
