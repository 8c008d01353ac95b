"""Block policy: whether a detected scanner is blocked, for how long, and why. Pure.

API (what ``netwarden run``, ``block`` and ``unblock`` wire)::

    pol = Policy(
        PolicyConfig(allow=(ip_network("10.0.0.0/8"),), allow_self=True, block_for=3600.0),
        own_addresses=local_addresses(),        # packed bytes or ipaddress objects
        has_established=lambda addr: ...,       # True if addr is the peer of an established
    )                                           # connection (conntrack/sock_diag lookup)
    d = pol.decide(scan_event, now)             # -> Decision
    d.event                                     # the scan event with ``allowed`` filled in
    if d.block:                                 # block d.event.scan.scanner for d.duration
        blocker.block(addr, d.duration, reason=d.reason, ports=...)   # None = no timeout
    pol.set_own_addresses(addrs)                # when the host's addresses change
    pol.refusal(addr_or_cidr)                   # why it must never be blocked, or None
    pol.check_block(addr_or_cidr)               # the same, raised as UsageError (exit 2)

The order of the checks (the first that applies gives the reason, ``block`` is False):

1. loopback (127.0.0.0/8, ::1) and unspecified addresses: always, whatever the config;
2. ``allow`` CIDRs;
3. the host's own addresses, unless ``allow_self`` is off;
   (1-3 make the event's ``allowed`` true: the scan is still logged)
4. a summary of a scanner already reported: decided when it was first reported;
5. an outbound or local scan (a local process): reported, not blocked: a source-address
   drop in prerouting cannot stop a local process, and its address is this host's;
6. the scanner is the peer of an established connection (``has_established``);
7. blocking is off (``blocking=False``, i.e. no ``--block``).

Otherwise the scanner is blocked for ``ban_for(addr, now)``: ``block_for`` for a first
offence, multiplied by ``escalation`` (default 4) for each earlier block of the same address
whose end is less than ``offence_memory`` (default 7 days) ago, capped at ``max_block_for``
(default 7 days); with ``block_for == 0`` a block has no timeout. Offences are remembered for
at most ``max_offenders`` addresses (least recent forgotten first, counted).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

from netwarden.errors import UsageError
from netwarden.events import Direction, Event, IPAddress, ScanKind

__all__ = ["Decision", "Policy", "PolicyConfig", "as_network", "network_key"]

IPNetwork = IPv4Network | IPv6Network

_LOOPBACK = (ip_network("127.0.0.0/8"), ip_network("::1/128"))


def as_network(target: str | IPAddress | IPNetwork, option: str = "address") -> IPNetwork:
    """An address or CIDR as a network (a host is a /32 or /128); IPv4-mapped IPv6 becomes
    IPv4. A CIDR with host bits set is refused (``UsageError`` naming ``option``)."""
    if isinstance(target, str):
        text = target.strip()
        try:
            if "/" in text:
                try:
                    net: IPNetwork = ip_network(text)
                except ValueError:
                    fixed = ip_network(text, strict=False)
                    raise UsageError(
                        f"has host bits set; did you mean {fixed}?", option=option, value=target
                    ) from None
            else:
                net = ip_network(ip_address(text))
        except ValueError:
            raise UsageError(
                "not an address or CIDR",
                option=option,
                value=target,
                allowed="e.g. 192.0.2.7, 2001:db8::7, 192.0.2.0/24",
            ) from None
    elif isinstance(target, IPv4Address):
        net = IPv4Network((target, 32))  # the tuple form parses no text
    elif isinstance(target, IPv6Address):
        net = IPv6Network((target, 128))
    else:
        net = target
    if isinstance(net, IPv6Network):
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            net = IPv4Network((mapped, net.prefixlen - 96))
    return net


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Settings; ``allow``, ``block_for`` and ``blocking`` are ``--allow``, ``--block-for`` and
    ``--block``; ``allow_self`` is the opposite of ``--no-allow-self``."""

    allow: tuple[IPNetwork, ...] = ()
    allow_self: bool = True
    blocking: bool = True
    #: seconds a first block lasts; 0 = until unblocked
    block_for: float = 3600.0
    escalation: float = 4.0
    max_block_for: float = 7 * 86400.0
    offence_memory: float = 7 * 86400.0
    max_offenders: int = 65536

    def __post_init__(self) -> None:
        if self.block_for < 0:
            raise UsageError("negative", option="block_for", value=self.block_for)
        if self.escalation < 1:
            raise UsageError("must be 1 or more", option="escalation", value=self.escalation)
        if self.max_offenders < 1:
            raise UsageError("must be 1 or more", option="max_offenders", value=self.max_offenders)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one ``scan`` event."""

    block: bool
    #: why: the block's reason (``blocks --json``) or why it is not blocked
    reason: str
    #: the scan event with ``allowed`` set
    event: Event
    #: seconds the block lasts, None = until unblocked (only meaningful when ``block``)
    duration: float | None = None
    #: 1 for a first block of this address, 2 for the second, ...
    offence: int = 0


class _Offender:
    __slots__ = ("count", "ends")

    def __init__(self) -> None:
        self.count = 0
        self.ends = 0.0  # when the last block ends (inf: no timeout)


def _fmt_duration(seconds: float) -> str:
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


class Policy:
    """Decides on ``scan`` events; refuses blocks of protected addresses."""

    def __init__(
        self,
        config: PolicyConfig | None = None,
        *,
        own_addresses: Iterable[IPAddress | bytes] = (),
        has_established: Callable[[IPAddress], bool] | None = None,
    ) -> None:
        self.config = config or PolicyConfig()
        self._allow = tuple(as_network(n, "allow") for n in self.config.allow)
        self._allow_ranges = tuple(
            (n.version, int(n.network_address), int(n.broadcast_address), n) for n in self._allow
        )
        self._own_ints: frozenset[tuple[int, int]] = frozenset()
        self._own: frozenset[IPAddress] = frozenset()
        self.set_own_addresses(own_addresses)
        self._has_established = has_established
        #: by (version, network as int, prefix length): cheaper to hash than a network
        self._offenders: OrderedDict[tuple[int, int, int], _Offender] = OrderedDict()
        self.offenders_evicted = 0

    def set_own_addresses(self, addrs: Iterable[IPAddress | bytes]) -> None:
        """Replace the set of this host's addresses (packed bytes or address objects)."""
        own: set[IPAddress] = set()
        for a in addrs:
            if isinstance(a, bytes):
                a = IPv4Address(a) if len(a) == 4 else IPv6Address(a)
            own.add(a)
        self._own = frozenset(own)
        self._own_ints = frozenset((a.version, int(a)) for a in own)

    # ------------------------------------------------------------------ protection
    def allowed(self, addr: IPAddress) -> str | None:
        """Why ``addr`` is allowlisted (never blocked, its scans flagged ``allowed``), or None."""
        return self.refusal(addr)

    def refusal(self, target: str | IPAddress | IPNetwork) -> str | None:
        """Why ``target`` (an address or CIDR) must not be blocked, or None if it may be."""
        net = as_network(target)
        if net.prefixlen == net.max_prefixlen:
            return self._address_refusal(net.network_address)
        if net.prefixlen == 0:
            return f"{net} is every address"
        if net.network_address.is_unspecified and net.prefixlen == net.max_prefixlen:
            return f"{net.network_address} is the unspecified address"
        for lo in _LOOPBACK:
            if lo.version == net.version and net.overlaps(lo):
                return f"{_show(net)} is loopback (never blocked)"
        for allow in self._allow:
            if allow.version == net.version and net.overlaps(allow):
                what = "is" if net.subnet_of(allow) else "overlaps"  # type: ignore[arg-type]
                return f"{_show(net)} {what} allowlisted ({allow})"
        if self.config.allow_self:
            for own in sorted(self._own, key=lambda a: (a.version, a)):
                if own.version == net.version and own in net:
                    if net.prefixlen == net.max_prefixlen:
                        return f"{own} is an address of this host"
                    return f"{net} contains {own}, an address of this host"
        return None

    def _address_refusal(self, addr: IPAddress) -> str | None:
        """:meth:`refusal` of one address (the detector's case, once per verdict): integer
        comparisons and a set lookup, no ``ipaddress`` arithmetic."""
        i = int(addr)
        v = addr.version
        if i == 0:
            return f"{addr} is the unspecified address"
        if (v == 4 and i >> 24 == 127) or (v == 6 and i == 1):
            return f"{addr} is loopback (never blocked)"
        for version, lo, hi, allow in self._allow_ranges:
            if version == v and lo <= i <= hi:
                return f"{addr} is allowlisted ({allow})"
        if self.config.allow_self and (v, i) in self._own_ints:
            return f"{addr} is an address of this host"
        return None

    def check_block(self, target: str | IPAddress | IPNetwork) -> IPNetwork:
        """The target as a network if it may be blocked; else ``UsageError`` saying why."""
        net = as_network(target)
        why = self.refusal(net)
        if why is not None:
            raise UsageError(f"refusing to block it: {why}", option="block", value=_show(net))
        return net

    # ------------------------------------------------------------------ decisions
    def decide(self, scan: Event, now: float) -> Decision:
        """Decide on a ``scan`` event. A block decision is recorded as an offence of the
        scanner (for escalation); nothing else changes state."""
        info = scan.scan
        if info is None:
            raise ValueError("Policy.decide() takes scan events")
        scanner = info.scanner
        if scanner.version == 4 or scanner.ipv4_mapped is None:
            allowed = self._address_refusal(scanner)
        else:
            allowed = self.allowed(scanner)
        event = (
            scan
            if (allowed is not None) == info.allowed
            else replace(scan, scan=replace(info, allowed=allowed is not None))
        )

        def no(reason: str) -> Decision:
            return Decision(False, reason, event)

        if allowed is not None:
            return no(allowed)
        if info.summary:
            return no("summary of a scanner already reported")
        if scan.direction in (Direction.OUT, Direction.LOCAL):
            who = f"pid {scan.pid} ({scan.comm})" if scan.pid is not None else "this host"
            return no(f"outbound scan by {who}: reported, not blocked")
        if self._has_established is not None and self._has_established(info.scanner):
            return no(f"{info.scanner} has an established connection")
        if not self.config.blocking:
            return no("blocking is off")
        duration, offence = self._offend(network_key(scanner), now)
        if info.kind is ScanKind.PORT:
            what = f"port scan: {len(info.ports)} ports"
            if scan.dst is not None:
                what += f" of {scan.dst}"
        else:
            on = f"port {info.ports[0]}" if info.ports else str(scan.proto)
            what = f"sweep: {info.targets} hosts on {on}"
        reason = f"{what} in {_fmt_duration(info.window)}"
        if offence > 1:
            reason += f"; offence {offence}"
        return Decision(True, reason, event, duration, offence)

    def ban_for(self, addr: IPAddress | IPNetwork, now: float) -> tuple[float | None, int]:
        """The block length (None = no timeout) and offence number a block at ``now`` gets."""
        return self._ban_for(network_key(addr), now)

    def _ban_for(self, key: tuple[int, int, int], now: float) -> tuple[float | None, int]:
        c = self.config
        o = self._offenders.get(key)
        earlier = 0
        if o is not None and now - o.ends < c.offence_memory:
            earlier = o.count
        if c.block_for == 0:
            return None, earlier + 1
        return min(c.block_for * c.escalation ** min(earlier, 64), c.max_block_for), earlier + 1

    def _offend(self, key: tuple[int, int, int], now: float) -> tuple[float | None, int]:
        duration, offence = self._ban_for(key, now)
        offenders = self._offenders
        o = offenders.pop(key, None) or _Offender()
        o.count = offence
        o.ends = float("inf") if duration is None else now + duration
        offenders[key] = o
        while len(offenders) > self.config.max_offenders:
            offenders.popitem(last=False)
            self.offenders_evicted += 1
        return duration, offence

    def offences(self, addr: IPAddress | IPNetwork) -> int:
        """How many blocks of ``addr`` are remembered."""
        o = self._offenders.get(network_key(addr))
        return 0 if o is None else o.count


def network_key(target: IPAddress | IPNetwork) -> tuple[int, int, int]:
    """(version, network as int, prefix length) of an address or CIDR: equal for the same
    network, cheaper to hash and compare than the network; an address needs no network
    object (building one costs microseconds)."""
    if isinstance(target, IPv4Address):
        return (4, int(target), 32)
    if isinstance(target, IPv6Address) and target.ipv4_mapped is None:
        return (6, int(target), 128)
    net = as_network(target)
    return (net.version, int(net.network_address), net.prefixlen)


def _show(net: IPNetwork) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
