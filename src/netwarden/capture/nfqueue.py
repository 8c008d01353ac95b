"""Hold: keep a new connection's first packet in an NFQUEUE until its owner is known.

A short-lived sender is often gone before a conntrack event can be read. Holding its TCP SYN
in the kernel (``iptables -j NFQUEUE``; nft's ``queue`` statement is not in every kernel) keeps
``connect()`` waiting, so sock_diag and /proc still show the process; then the packet is
accepted. The queue is fail-open: ``--queue-bypass`` lets packets through when nothing listens
and NFQA_CFG_F_FAIL_OPEN when the queue is full. With NFQA_CFG_F_UID_GID the socket's
uid/gid come with the packet, and with NFQA_CFG_F_CONNTRACK its conntrack id, which lets the
conntrack backend match the owner to its NEW event.

Rules live in a chain of our own (``NETWARDEN_HOLD`` in the filter table, IPv4 and IPv6),
jumped to from OUTPUT, and are removed on close; :func:`cleanup` removes a crashed run's.
UDP can be held too (``udp=True``) but ``sendto()`` does not wait for the verdict, so it
helps little there.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, Self

from netwarden.capture.netlink_socket import NetlinkError, NetlinkSocket, Overrun
from netwarden.closing import Closing
from netwarden.errors import MissingCapability, RuntimeFailure
from netwarden.events import Attribution, Direction, Event, EventType, ProcessInfo, Proto, Source
from netwarden.wire.netlink import (
    NETLINK_NETFILTER,
    NF_ACCEPT,
    NFQ_PACKET_TYPE,
    NFQA_CFG_F_CONNTRACK,
    NFQA_CFG_F_FAIL_OPEN,
    NFQA_CFG_F_GSO,
    NFQA_CFG_F_UID_GID,
    NFQNL_CFG_CMD_BIND,
    NFQNL_CFG_CMD_UNBIND,
    NFQNL_COPY_PACKET,
    NLMSG_ERROR,
    FiveTuple,
    decode_nfq_packet,
    five_tuple,
    nfq_cmd,
    nfq_params,
    nfq_verdict,
    nlmsg_error,
    split_messages,
)

if TYPE_CHECKING:
    from netwarden.capture.sockdiag import OwnerLookup

log = logging.getLogger(__name__)

DEFAULT_QUEUE = 4725
CHAIN = "NETWARDEN_HOLD"
TABLE = "filter"
#: the iptables tables a hold's OUTPUT jump goes in, one hold per table while they last: a
#: queue's verdict (ACCEPT) ends the packet's way through its table, so a second hold in the
#: same table would never see it; each table is its own hook (mangle -150, filter 0,
#: security 50), passed in turn
HOLD_TABLES = ("filter", "mangle", "security")
_TOOLS = {4: "iptables", 6: "ip6tables"}


# --------------------------------------------------------------------------- rules
def _run(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    path = shutil.which(tool)
    if path is None:
        raise MissingCapability(f"the {tool} command is missing", "install the iptables package")
    proc = subprocess.run(
        [path, "-w", "5", *args], capture_output=True, text=True, timeout=30, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeFailure(f"{tool} {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def rule_specs(queue: int, *, tcp: bool = True, udp: bool = False) -> list[list[str]]:
    """The rules of our chain: new TCP SYNs (and new UDP flows) to ``queue``, fail-open."""
    target = ["-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
    specs = []
    if tcp:
        specs.append(["-p", "tcp", "--syn", *target])
    if udp:
        specs.append(["-p", "udp", "-m", "conntrack", "--ctstate", "NEW", *target])
    return specs


def _chain_exists(tool: str, chain: str = CHAIN, table: str = TABLE) -> bool:
    return _run(tool, "-t", table, "-S", chain, check=False).returncode == 0


def _remove_chain(tool: str, chain: str = CHAIN, table: str = TABLE) -> bool:
    """Remove every jump to ``chain`` from OUTPUT, then the chain. Whether it existed."""
    if shutil.which(tool) is None or not _chain_exists(tool, chain, table):
        return False
    for _ in range(64):
        if _run(tool, "-t", table, "-D", "OUTPUT", "-j", chain, check=False).returncode != 0:
            break
    _run(tool, "-t", table, "-F", chain, check=False)
    _run(tool, "-t", table, "-X", chain, check=False)
    return True


def _hold_chains(tool: str, table: str = TABLE) -> list[str]:
    """Every hold chain (``NETWARDEN_HOLD`` and ``NETWARDEN_HOLD_<queue>``) in ``table``."""
    if shutil.which(tool) is None:
        return []
    lines = _run(tool, "-t", table, "-S", check=False).stdout.splitlines()
    names = [ln.split()[1] for ln in lines if ln.startswith("-N ") and len(ln.split()) == 2]
    return [n for n in names if n == CHAIN or n.startswith(CHAIN + "_")]


def cleanup(chain: str | None = None) -> int:
    """Remove what crashed runs left: ``chain``, or every hold chain, and the jumps to it,
    in every table a hold uses, IPv4 and IPv6 (while no other hold runs: it removes theirs
    too). Returns how many chains were removed."""
    removed = 0
    for tool in _TOOLS.values():
        for table in HOLD_TABLES:
            for name in [chain] if chain is not None else _hold_chains(tool, table):
                removed += _remove_chain(tool, name, table)
    return removed


def _nft_table_exists(family: int, table: str = TABLE) -> bool | None:
    """Whether iptables-nft's ``table`` exists (None: not an nft-based iptables)."""
    nft = shutil.which("nft")
    tool = shutil.which(_TOOLS[family])
    if nft is None or tool is None:
        return None
    ver = subprocess.run([tool, "-V"], capture_output=True, text=True, check=False).stdout
    if "nf_tables" not in ver:
        return None
    fam = "ip" if family == 4 else "ip6"
    proc = subprocess.run(
        [nft, "list", "table", fam, table], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


def _drop_empty_table(family: int, table: str = TABLE) -> None:
    """Delete iptables-nft's ``table`` if it holds nothing but accepting policies."""
    rules = _run(_TOOLS[family], "-t", table, "-S", check=False).stdout.split("\n")
    if any(r and not (r.startswith("-P ") and r.endswith(" ACCEPT")) for r in rules):
        return
    fam = "ip" if family == 4 else "ip6"
    nft = shutil.which("nft")
    if nft is not None:
        subprocess.run([nft, "delete", "table", fam, table], capture_output=True, check=False)


# --------------------------------------------------------------------------- held packets
@dataclass(frozen=True, slots=True)
class HeldPacket:
    """A held packet and the owner found while it waited."""

    ts: float
    family: int  # 4 or 6
    ipproto: int
    src: bytes
    sport: int | None
    dst: bytes
    dport: int | None
    ct_id: int | None
    uid: int | None
    gid: int | None
    process: ProcessInfo | None
    attribution: Attribution
    held: float  # seconds between reading the packet and the verdict

    def to_event(
        self, *, local_addrs: frozenset[bytes] = frozenset(), netns: int | None = None
    ) -> Event:
        """A ``new`` event (``source`` conntrack, ``attribution`` hold when found)."""
        addr = IPv4Address if self.family == 4 else IPv6Address
        return Event(
            ts=self.ts,
            event=EventType.NEW,
            proto=Proto.from_number(self.ipproto),
            ipproto=self.ipproto,
            family=self.family,
            src=addr(self.src),
            dst=addr(self.dst),
            sport=self.sport,
            dport=self.dport,
            flow=None if self.ct_id is None else f"ct-{self.ct_id:08x}",
            direction=Direction.LOCAL if self.dst in local_addrs else Direction.OUT,
            netns=netns,
            process=self.process if self.process is not None else ProcessInfo(),
            attribution=self.attribution,
            source=Source.CONNTRACK,
        )


Owner = tuple[ProcessInfo | None, Attribution]


class Hold(Closing):
    """Hold new outgoing TCP SYNs (and optionally UDP) until their owner is found.

    ``queue``: the NFQUEUE number; ``owners``: the lookup to run while a packet waits
    (default: sock_diag + bounded /proc search); ``match``: only packets it accepts are
    looked up (others pass at once); ``install_rules``: add (and later remove) the iptables
    rules, else the caller queues packets to ``queue`` itself.
    """

    def __init__(
        self,
        queue: int | None = None,
        *,
        tcp: bool = True,
        udp: bool = False,
        ipv6: bool = True,
        owners: OwnerLookup | None = None,
        match: Callable[[FiveTuple], bool] | None = None,
        install_rules: bool = True,
        maxlen: int = 1024,
        rcvbuf: int = 4 << 20,
        keep: int = 16384,
        local_addrs: Iterable[bytes] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: None: the first free queue from DEFAULT_QUEUE on (so several holds can run at once,
        #: each with its own chain NETWARDEN_HOLD_<queue>)
        self.queue = DEFAULT_QUEUE if queue is None else queue
        self._pick_queue = queue is None
        self.tcp = tcp
        self.udp = udp
        self.ipv6 = ipv6
        self._owners = owners
        self.match = match
        self.install_rules = install_rules
        self.maxlen = maxlen
        self.rcvbuf = rcvbuf
        self.keep = keep
        self.local_addrs = frozenset(local_addrs)
        self.clock = clock
        self.netns: int | None = None
        self._nl: NetlinkSocket | None = None
        self._rules: list[int] = []  # families whose chain we added
        self._created_table: dict[int, bool] = {}
        #: the iptables table our chain is in (see HOLD_TABLES), chosen when it is added
        self.table = TABLE
        self._started = False
        self._closed = False
        self._stopping = False
        self._by_ct: OrderedDict[int, Owner] = OrderedDict()
        self._by_tuple: OrderedDict[tuple[int, bytes, int | None, bytes, int | None], Owner] = (
            OrderedDict()
        )
        self.with_conntrack = False
        self._ready: deque[HeldPacket] = deque()
        self._iterating = False
        # counters
        self.packets = 0
        self.attributed = 0
        self.unmatched = 0
        self.malformed = 0
        self.verdict_errors = 0
        self.overruns = 0
        self.held_seconds = 0.0
        self.max_held = 0.0

    # ------------------------------------------------------------------ life cycle
    @property
    def owners(self) -> OwnerLookup:
        if self._owners is None:
            from netwarden.capture.sockdiag import OwnerLookup

            self._owners = OwnerLookup()
        return self._owners

    def start(self) -> None:
        """Bind the queue, then add the rules (never the other way round: a rule before a
        listener would only be bypassed, but a listener first loses nothing)."""
        if self._started:
            return
        self._started = True
        if os.geteuid() != 0:
            raise MissingCapability("holding packets needs root (CAP_NET_ADMIN)", "run as root")
        try:
            st = os.stat("/proc/thread-self/ns/net")
            self.netns = st.st_ino
        except OSError:
            pass
        try:
            _ = self.owners  # ready before the first packet waits
            self._bind()
            if self.install_rules:
                self._add_rules()
        except BaseException:
            self.close()
            raise

    @property
    def chain(self) -> str:
        """This hold's own iptables chain."""
        return f"{CHAIN}_{self.queue}"

    def _bind(self) -> None:
        nl = NetlinkSocket(NETLINK_NETFILTER, rcvbuf=self.rcvbuf)
        self._nl = nl
        tries = 64 if self._pick_queue else 1
        for attempt in range(tries):
            try:
                seq = nl.next_seq()
                nl.request(nfq_cmd(seq, self.queue, NFQNL_CFG_CMD_BIND), seq, what="nfqueue bind")
                break
            except NetlinkError as exc:
                if exc.errno not in (1, 16):  # EPERM (another socket owns it), EBUSY
                    raise
                if attempt + 1 == tries:
                    raise RuntimeFailure(
                        f"NFQUEUE {self.queue} is bound by another program; choose another number"
                    ) from exc
                self.queue += 1  # taken (another trap?): the next one
        flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_UID_GID | NFQA_CFG_F_GSO
        # conntrack attributes need CONFIG_NETFILTER_NETLINK_GLUE_CT: without them the
        # conntrack backend matches held packets by their 5-tuple instead of the ct id
        for extra in (NFQA_CFG_F_CONNTRACK, 0):
            seq = nl.next_seq()
            req = nfq_params(
                seq,
                self.queue,
                copy_mode=NFQNL_COPY_PACKET,
                copy_range=128,
                flags=flags | extra,
                maxlen=self.maxlen,
            )
            try:
                nl.request(req, seq, what="nfqueue config")
            except NetlinkError as exc:
                if extra and exc.errno == 95:  # EOPNOTSUPP
                    continue
                raise
            self.with_conntrack = bool(extra)
            break

    def _add_rules(self) -> None:
        families = (4, 6) if self.ipv6 else (4,)
        for fam in families:  # a crashed run's leftovers on this queue
            for table in HOLD_TABLES:
                _remove_chain(_TOOLS[fam], self.chain, table)
        # a table no other hold uses (all taken: the first; then only the hold whose jump
        # comes first there sees each packet, the others learn of it from conntrack)
        if shutil.which(_TOOLS[4]) is not None:
            self.table = next(
                (t for t in HOLD_TABLES if not _hold_chains(_TOOLS[4], t)), HOLD_TABLES[0]
            )
        for fam in families:
            tool = _TOOLS[fam]
            if shutil.which(tool) is None:
                if fam == 4:
                    raise MissingCapability(
                        "the iptables command is missing", "install the iptables package"
                    )
                log.warning("hold: %s is missing: IPv6 connections are not held", tool)
                continue
            existed = _nft_table_exists(fam, self.table)
            self._created_table[fam] = existed is False
            _run(tool, "-t", self.table, "-N", self.chain)
            self._rules.append(fam)
            for spec in rule_specs(self.queue, tcp=self.tcp, udp=self.udp):
                _run(tool, "-t", self.table, "-A", self.chain, *spec)
            _run(tool, "-t", self.table, "-I", "OUTPUT", "1", "-j", self.chain)

    def _remove_rules(self) -> None:
        for fam in self._rules:
            try:
                _remove_chain(_TOOLS[fam], self.chain, self.table)
                if self._created_table.get(fam):
                    _drop_empty_table(fam, self.table)
            except Exception as exc:
                log.warning("hold: removing the %s rules failed: %s", _TOOLS[fam], exc)
        self._rules.clear()

    def fileno(self) -> int:
        self.start()
        assert self._nl is not None
        return self._nl.fileno()

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        """Remove the rules first (packets then flow freely), then unbind the queue."""
        if self._closed:
            return
        self._closed = True
        self._remove_rules()
        nl = self._nl
        if nl is not None:
            try:
                self._drain_all()  # accept anything still waiting
                seq = nl.next_seq()
                nl.request(nfq_cmd(seq, self.queue, NFQNL_CFG_CMD_UNBIND), seq, what="unbind")
            except (OSError, RuntimeFailure):
                pass
            nl.close()
        if self._owners is not None:
            self._owners.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def summary(self) -> dict[str, Any]:
        return {
            "held": self.packets,
            "attributed": self.attributed,
            "unmatched": self.unmatched,
            "malformed": self.malformed,
            "verdict_errors": self.verdict_errors,
            "enobufs": self.overruns,
            "mean_hold_us": round(1e6 * self.held_seconds / self.packets, 1) if self.packets else 0,
            "max_hold_us": round(1e6 * self.max_held, 1),
        }

    # ------------------------------------------------------------------ packets
    def take(
        self,
        ct_id: int | None,
        proto: int,
        src: bytes,
        sport: int | None,
        dst: bytes,
        dport: int | None,
    ) -> Owner | None:
        """The owner found for the held first packet of a flow (once): by conntrack id
        when the kernel gave it, else by the original direction's 5-tuple."""
        key = (proto, src, sport, dst, dport)
        found = self._by_tuple.pop(key, None)
        if ct_id is not None:
            by_ct = self._by_ct.pop(ct_id, None)
            if by_ct is not None:
                return by_ct
        return found

    def process(self, limit: int = 1024) -> list[HeldPacket]:
        """Handle every packet waiting now (up to ``limit``): look up, accept. Non-blocking."""
        nl = self._nl
        out: list[HeldPacket] = []
        if nl is None:
            return out
        for _ in range(limit):
            try:
                data = nl.recv(block=False)
            except Overrun:
                # packets were dropped from our socket; the kernel still holds them
                # until a verdict, and fail-open only covers a full queue: count it
                self.overruns += 1
                continue
            if data is None:
                break
            msgs, _ok = split_messages(data)
            for m in msgs:
                if m.type == NFQ_PACKET_TYPE:
                    held = self._handle(m)
                    if held is not None:
                        out.append(held)
                elif m.type == NLMSG_ERROR and nlmsg_error(m.payload):
                    self.verdict_errors += 1
        if self._iterating:
            self._ready.extend(out)
        return out

    def _drain_all(self) -> None:
        for _ in range(64):
            if not self.process():
                break

    def _handle(self, m: Any) -> HeldPacket | None:
        t0 = time.perf_counter()
        pkt = decode_nfq_packet(m)
        if pkt is None:
            self.malformed += 1
            return None
        assert self._nl is not None
        try:
            tup = five_tuple(pkt.payload)
            if tup is None:
                self.malformed += 1
                return None
            if self.match is not None and not self.match(tup):
                self.unmatched += 1
                return None
            ct_id = None if pkt.ct is None else pkt.ct.ct_id
            process, how = self.owners.owner(
                tup.family,
                tup.proto,
                tup.src,
                tup.sport,
                tup.dst,
                tup.dport,
                uid=pkt.uid,
                gid=pkt.gid,
                found=Attribution.HOLD,
            )
        finally:
            # whatever happened, the packet goes on (the send re-injects it: its cost is
            # the packet's way through the stack, not part of the hold)
            held = time.perf_counter() - t0
            try:
                self._nl.send(nfq_verdict(self._nl.next_seq(), pkt.queue, pkt.packet_id, NF_ACCEPT))
            except OSError:
                self.verdict_errors += 1
        self.packets += 1
        self.held_seconds += held
        self.max_held = max(self.max_held, held)
        if how is Attribution.HOLD:
            self.attributed += 1
        if ct_id is not None:
            self._by_ct[ct_id] = (process, how)
            if len(self._by_ct) > self.keep:
                self._by_ct.popitem(last=False)
        key = (tup.proto, tup.src, tup.sport, tup.dst, tup.dport)
        self._by_tuple[key] = (process, how)
        if len(self._by_tuple) > self.keep:
            self._by_tuple.popitem(last=False)
        return HeldPacket(
            ts=pkt.timestamp or self.clock(),
            family=tup.family,
            ipproto=tup.proto,
            src=tup.src,
            sport=tup.sport,
            dst=tup.dst,
            dport=tup.dport,
            ct_id=ct_id,
            uid=pkt.uid,
            gid=pkt.gid,
            process=process,
            attribution=how,
            held=held,
        )

    def __iter__(self) -> Iterator[Event]:
        """Held packets as ``new`` events, for ``trap``; ``stop()`` ends the iteration."""
        self.start()
        assert self._nl is not None
        self._iterating = True
        while not self._stopping:
            if self._nl.wait(0.2):
                self.process()
            while self._ready:
                yield self._ready.popleft().to_event(local_addrs=self.local_addrs, netns=self.netns)
