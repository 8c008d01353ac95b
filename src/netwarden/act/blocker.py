"""Kernel-side blocking: nftables set elements with timeouts, persisted in the state dir.

The ruleset and why it is shaped so are in :mod:`netwarden.act.nft` and docs/detection.md.
This module applies it (the table and CIDRs through libnftables; a single address, the
detector's verdicts, through raw nf_tables netlink, :mod:`netwarden.act.nftnl`, in tens of
microseconds) and keeps ``blocks.json`` (the active blocks) in the state dir, so blocks
survive a restart, clean or not, with their remaining time.

API (what ``netwarden run``, ``blocks``, ``block`` and ``unblock`` wire)::

    b = Blocker(state_dir, guard=policy.refusal)   # libnftables is loaded on first use:
                               # MissingCapability (exit 3) there if libnftables1 is missing
    started = b.start()        # daemon start: replace whatever a crashed run left, recreate the
                               # table, restore the persisted blocks with their remaining time;
                               # started.restored / .expired (ran out while we were down:
                               # emit ``unblock``) / .refused (now protected by the guard)
    blk = b.block("192.0.2.7", 3600.0, reason="port scan ...", ports=(22, 80))
                               # address or CIDR; duration None or 0 = until unblocked
    b.unblock("192.0.2.7")     # -> the Block removed, or None if it was not blocked
    b.blocks()                 # active blocks; Block.to_dict() is a ``blocks --json`` line
    b.expire()                 # call about once a second: the blocks whose time ran out (the
                               # kernel already dropped them): emit ``unblock``, forget them
    b.close()                  # clean exit: delete the table (blocks.json stays, for restart)

Rules:

- ``guard`` (e.g. :meth:`netwarden.detect.policy.Policy.refusal`) is asked before every block,
  by hand or by verdict, and before restoring one: a protected address is refused with a
  ``UsageError`` (exit 2) saying why.
- Blocking an address that is already blocked replaces its block, except that a block never
  shortens an existing one (the longer ``until`` wins; unblock first to shorten).
- A CIDR that overlaps another blocked CIDR is refused (unblock the other first). An address
  inside a blocked CIDR may be blocked on its own (it lives in the address set).
- Every change first goes to the kernel, then to ``blocks.json`` (written atomically, under
  an ``flock`` on ``blocks.lock``), so several processes (the daemon, the CLI) may share one
  state dir. A change when the table does not exist (no daemon running) creates it with every
  persisted block; the next daemon start replaces it and its clean exit removes it.
- Times are Unix seconds from ``clock`` (injected; ``time.time`` by default).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, Protocol

from netwarden.act import nft as render
from netwarden.act.libnftables import Nft, NftError, NftRunner
from netwarden.detect.policy import IPNetwork, as_network, network_key
from netwarden.errors import NetwardenError, RuntimeFailure, UsageError

__all__ = ["LOCK_FILE", "STATE_FILE", "Block", "Blocker", "SetWriter", "StartResult"]

log = logging.getLogger(__name__)


class SetWriter(Protocol):
    """What the blocker needs of :class:`netwarden.act.nftnl.NftSets`."""

    def replace(self, addr: IPv4Address | IPv6Address, timeout_ms: int | None) -> None: ...

    def close(self) -> None: ...


STATE_FILE = "blocks.json"
LOCK_FILE = "blocks.lock"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Block:
    """One active block: an address (a /32 or /128) or a CIDR."""

    net: IPNetwork
    since: float
    #: Unix seconds when it ends, None = until unblocked
    until: float | None
    reason: str = ""
    #: the ports that triggered it
    ports: tuple[int, ...] = ()
    #: (version, network as int, prefix length): compared and hashed in microseconds less
    #: than the network itself (thousands of blocks are searched on every change)
    key: tuple[int, int, int] = field(init=False, repr=False, compare=False)
    #: its line in blocks.json, rendered on first write
    line: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", network_key(self.net))

    @property
    def addr(self) -> str:
        """The address (without /32 or /128) or the CIDR, as text."""
        return render.element_text(self.net)

    def remaining(self, now: float) -> float | None:
        """Seconds left (0 when over), None without a timeout."""
        return None if self.until is None else max(0.0, self.until - now)

    def expired(self, now: float) -> bool:
        return self.until is not None and self.until <= now

    def to_dict(self) -> dict[str, Any]:
        """The ``blocks --json`` object: addr, since, until, reason, ports."""
        return {
            "addr": self.addr,
            "since": self.since,
            "until": self.until,
            "reason": self.reason,
            "ports": list(self.ports),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Block:
        until = d.get("until")
        return cls(
            net=as_network(str(d["addr"])),
            since=float(d["since"]),
            until=None if until is None else float(until),
            reason=str(d.get("reason") or ""),
            ports=tuple(int(p) for p in d.get("ports") or ()),
        )


@dataclass(frozen=True, slots=True)
class StartResult:
    """What :meth:`Blocker.start` found in ``blocks.json``."""

    restored: list[Block] = field(default_factory=list)
    #: ran out while netwarden was not running
    expired: list[Block] = field(default_factory=list)
    #: now protected (allowlist, own address): dropped, with the guard's reason
    refused: list[tuple[Block, str]] = field(default_factory=list)


def _outlasts(b: Block, until: float | None) -> bool:
    """Whether block ``b`` lasts at least until ``until`` (None: until unblocked)."""
    return b.until is None or (until is not None and b.until >= until)


def _timeout_ms(until: float | None, now: float) -> int | None:
    if until is None:
        return None
    return max(1, math.ceil((until - now) * 1000))


class Blocker:
    """Applies blocks to netwarden's nftables table and keeps them in ``blocks.json``."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        nft: NftRunner | None = None,
        sets: SetWriter | None = None,
        clock: Callable[[], float] = time.time,
        guard: Callable[[IPNetwork], str | None] | None = None,
        table: str = render.TABLE,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        self._lock_path = self.state_dir / LOCK_FILE
        self._runner: NftRunner | None = nft
        self._own_nft: Nft | None = None
        #: single addresses go through raw netlink (tens of µs, not hundreds): given, or
        #: made on first use when libnftables is ours too (a test's recorder gets none)
        self._sets: SetWriter | None = sets
        self._own_sets = nft is None and sets is None
        self._clock = clock
        self._guard = guard
        self.table = table
        self._cache: tuple[tuple[int, int, int], list[Block]] | None = None
        self._unsynced = False
        render.ruleset(table)  # validates the name

    # ------------------------------------------------------------------ state file
    @contextlib.contextmanager
    def _locked(self, durable: bool = True) -> Iterator[list[Block]]:
        """The persisted blocks, under the lock; the list as left is written back (without
        fsync when not ``durable``: :meth:`sync` does it later)."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RuntimeFailure(f"state dir {self.state_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            blocks = self._read()
            before = list(blocks)
            yield blocks
            if blocks != before:
                self._write(blocks, durable)
        finally:
            os.close(fd)

    def _read(self) -> list[Block]:
        """The blocks in the file (cached while its inode, mtime and size stay the same)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._cache = ((0, 0, -1), [])  # known to be empty (a size no file has)
            return []
        except OSError as exc:
            raise RuntimeFailure(f"{self.path}: {exc.strerror}") from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == key:
            return list(self._cache[1])  # unchanged since we last read or wrote it
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RuntimeFailure(f"{self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(text)
            items = doc["blocks"] if isinstance(doc, dict) else None
            if not isinstance(items, list):
                raise ValueError("no list of blocks")
        except (ValueError, KeyError) as exc:
            bad = self.path.with_name(f"{STATE_FILE}.bad")
            log.warning("%s: unreadable (%s); moved to %s, starting empty", self.path, exc, bad)
            with contextlib.suppress(OSError):
                os.replace(self.path, bad)
            return []
        blocks: list[Block] = []
        for item in items:
            try:
                blocks.append(Block.from_dict(item))
            except (ValueError, KeyError, TypeError, UsageError) as exc:
                log.warning("%s: skipping a bad entry %r (%s)", self.path, item, exc)
        self._cache = (key, list(blocks))
        return blocks

    @staticmethod
    def _line(b: Block) -> str:
        """A block's line in the file, rendered once (a file of thousands of blocks is
        rewritten on every change)."""
        line = b.line
        if line is None:
            line = json.dumps(b.to_dict())
            object.__setattr__(b, "line", line)
        return line

    def _write(self, blocks: list[Block], durable: bool = True) -> None:
        # one block per line: readable, and cheap to write
        head = json.dumps({"version": _VERSION, "table": f"{render.FAMILY} {self.table}"})
        rows = ",".join(f"\n {self._line(b)}" for b in blocks)
        text = f'{head[:-1]}, "blocks": [{rows}{chr(10) if rows else ""}]}}\n'
        tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
                st = os.fstat(f.fileno())
            os.replace(tmp, self.path)
            self._cache = ((st.st_ino, st.st_mtime_ns, st.st_size), list(blocks))
            self._unsynced = not durable
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise RuntimeFailure(f"{self.path}: {exc.strerror}") from None

    def sync(self) -> None:
        """fsync what a non-durable change wrote (the daemon's ticker calls it once a
        second): the file survives a crash of netwarden at once, a crash of the machine
        from here on."""
        if not self._unsynced:
            return
        self._unsynced = False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dfd = os.open(self.state_dir, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise RuntimeFailure(f"{self.path}: {exc.strerror}") from None

    # ------------------------------------------------------------------ kernel
    @property
    def _nft(self) -> NftRunner:
        """libnftables, loaded on first use (listing blocks needs only the state file)."""
        if self._runner is None:
            self._own_nft = Nft()
            self._runner = self._own_nft
        return self._runner

    def _writer(self) -> SetWriter | None:
        if self._sets is None and self._own_sets:
            from netwarden.act.nftnl import NftSets

            try:
                self._sets = NftSets(self.table)
            except NetwardenError as exc:  # no netlink socket: libnftables does it all
                log.info("raw nf_tables netlink unavailable (%s): libnftables only", exc)
                self._own_sets = False
        return self._sets

    def _apply(
        self,
        commands: Callable[[], str],
        blocks: list[Block],
        now: float,
        fast: Block | None = None,
    ) -> None:
        """Run ``commands()`` (or, for ``fast``, an address, the same change through raw
        netlink); if the table is missing, create it with ``blocks`` instead."""
        try:
            writer = self._writer() if fast is not None else None
            if writer is not None and fast is not None:
                writer.replace(fast.net.network_address, _timeout_ms(fast.until, now))
            else:
                self._nft.run(commands())
        except NftError as exc:
            if not exc.no_such_object:
                raise
            log.info("table %s %s missing: creating it", render.FAMILY, self.table)
            self._nft.run(self._start_commands(blocks, now))

    def _start_commands(self, blocks: Iterable[Block], now: float) -> str:
        elements = [
            render.Element(b.net, _timeout_ms(b.until, now)) for b in blocks if not b.expired(now)
        ]
        return render.start_commands(elements, self.table)

    def start(self) -> StartResult:
        """Replace the table (a crashed run's leftovers go) and restore the persisted blocks
        with their remaining time, in one transaction."""
        now = self._clock()
        with self._locked() as blocks:
            result = StartResult()
            keep: list[Block] = []
            for b in blocks:
                if b.expired(now):
                    result.expired.append(b)
                    continue
                why = self._guard(b.net) if self._guard is not None else None
                if why is not None:
                    log.warning("not restoring the block of %s: %s", b.addr, why)
                    result.refused.append((b, why))
                    continue
                keep.append(b)
            self._nft.run(self._start_commands(keep, now))
            self._writer()  # opened now, not on the first verdict's way
            result.restored.extend(keep)
            blocks[:] = keep
        return result

    def block(
        self,
        target: str | IPv4Address | IPv6Address | IPNetwork,
        duration: float | None = None,
        *,
        reason: str = "manual",
        ports: Iterable[int] = (),
        durable: bool = True,
    ) -> Block:
        """Block an address or CIDR for ``duration`` seconds (None or 0: until unblocked).

        Returns the block in force afterwards (the existing one if it lasts longer). With
        ``durable`` off (the detector's verdicts) ``blocks.json`` is replaced without an
        fsync, which :meth:`sync` does later: the next event need not wait for the disk.
        """
        net = as_network(target, "block")
        key = network_key(net)
        if duration is not None and (duration < 0 or math.isnan(duration)):
            raise UsageError("negative", option="--for", value=duration)
        if self._guard is not None:
            why = self._guard(net)
            if why is not None:
                raise UsageError(
                    f"refusing to block it: {why}", option="block", value=render.element_text(net)
                )
        now = self._clock()
        until = None if not duration else now + duration
        new = Block(net, now, until, reason, tuple(sorted(set(ports))))
        single = net.prefixlen == net.max_prefixlen
        # A verdict's address goes to the kernel before the state file is locked and read
        # (that costs a few hundred microseconds the scanner would have to probe in): unless
        # the blocks last read or written say a longer block is in force. The check under
        # the lock below sets the kernel right if another process blocked it for longer.
        in_kernel = False
        if single and not durable and self._cache is not None:
            seen = next((b for b in self._cache[1] if b.key == key), None)
            writer = self._writer()
            if writer is not None and (seen is None or not _outlasts(seen, until)):
                try:
                    writer.replace(net.network_address, _timeout_ms(until, now))
                    in_kernel = True
                except NftError as exc:
                    if not exc.no_such_object:
                        raise  # else: the path below creates the table
        with self._locked(durable) as blocks:
            blocks[:] = [b for b in blocks if not b.expired(now)]
            old = next((b for b in blocks if b.key == key), None)
            if old is not None and _outlasts(old, until):
                if in_kernel:  # its own timeout back
                    self._apply(
                        lambda: render.replace_elements(
                            [render.Element(old.net, _timeout_ms(old.until, now))], self.table
                        ),
                        blocks,
                        now,
                        old,
                    )
                return old
            if net.prefixlen != net.max_prefixlen:
                for b in blocks:
                    if (
                        b.key != key
                        and b.net.version == net.version
                        and b.net.prefixlen != b.net.max_prefixlen
                        and b.net.overlaps(net)
                    ):
                        raise UsageError(
                            f"overlaps the blocked {b.addr}; unblock it first",
                            option="block",
                            value=new.addr,
                        )
            rest = [b for b in blocks if b.key != key]
            if not in_kernel:
                self._apply(
                    lambda: render.replace_elements(
                        [render.Element(net, _timeout_ms(until, now))], self.table
                    ),
                    [*rest, new],
                    now,
                    new if single else None,
                )
            blocks[:] = [*rest, new]
        return new

    def unblock(self, target: str | IPv4Address | IPv6Address | IPNetwork) -> Block | None:
        """Remove a block; returns it, or None if the target was not blocked."""
        net = as_network(target, "unblock")
        key = network_key(net)
        now = self._clock()
        with self._locked() as blocks:
            old = next((b for b in blocks if b.key == key), None)
            try:
                self._nft.run(render.delete_elements([net], self.table))
                found_in_kernel = True
            except NftError as exc:
                if not exc.no_such_object:
                    raise
                found_in_kernel = False
            if old is None:
                if not found_in_kernel:
                    return None
                return Block(net, now, None, "found in the set, not in the state file")
            blocks[:] = [b for b in blocks if b.key != key]
        return None if old.expired(now) else old

    def expire(self) -> list[Block]:
        """Drop the blocks whose time ran out (the kernel already did); return them."""
        now = self._clock()
        with self._locked() as blocks:
            gone = [b for b in blocks if b.expired(now)]
            if gone:
                blocks[:] = [b for b in blocks if not b.expired(now)]
        return gone

    def blocks(self) -> list[Block]:
        """The active blocks, oldest first (from ``blocks.json``; needs neither the lock nor
        libnftables: the file is only ever replaced whole)."""
        now = self._clock()
        return sorted((b for b in self._read() if not b.expired(now)), key=lambda b: b.since)

    def get(self, target: str | IPv4Address | IPv6Address | IPNetwork) -> Block | None:
        """The active block of exactly this address or CIDR, if any."""
        net = as_network(target)
        key = network_key(net)
        return next((b for b in self.blocks() if b.key == key), None)

    def kernel_elements(self) -> dict[str, list[render.KernelElement]]:
        """The elements the kernel holds now, by set name (empty if the table is absent)."""
        try:
            doc = self._nft.run_json(render.list_table(self.table))
        except NftError as exc:
            if exc.no_such_object:
                return {}
            raise
        return render.parse_elements(doc, self.table)

    def close(self, *, remove_table: bool = True) -> None:
        """Clean exit: delete the table (``blocks.json`` stays, for the next start)."""
        try:
            if remove_table:
                self._nft.run(render.delete_table(self.table))
        finally:
            if self._own_nft is not None:
                self._own_nft.close()
                self._own_nft = self._runner = None
            if self._own_sets and self._sets is not None:
                self._sets.close()
                self._sets = None
