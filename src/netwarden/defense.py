"""Detection → policy → blocking, wired for the daemon.

Every flow and probe event goes to the scan detector; each ``scan`` event it returns goes
through the policy (allowlists, own addresses, established peers, ``--block``) and, when the
verdict is to block, to the blocker; ``scan``, ``block`` and ``unblock`` events go to the
daemon's outputs through ``emit``. Once a second :meth:`Defense.tick` emits the detector's
summaries, the blocks that expired, and the blocks added or removed by hand (``netwarden
block``/``unblock`` change ``blocks.json`` in the state dir; the daemon notices and reports
them). An unblock or an expiry clears the detector's memory of that source.

With blocking off, netwarden never touches the firewall: detection still runs and hand-made
blocks are still reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from ipaddress import ip_address, ip_network
from typing import Any

from netwarden.config import Config
from netwarden.detect.policy import Policy, PolicyConfig
from netwarden.detect.scan import DetectorConfig, ScanDetector
from netwarden.errors import NetwardenError
from netwarden.events import (
    Direction,
    Event,
    EventType,
    ProcessInfo,
    Proto,
    ScanInfo,
    ScanKind,
)

log = logging.getLogger(__name__)


class EstablishedPeers:
    """The peers of this namespace's established TCP connections, re-read by :meth:`refresh`
    (the daemon's ticker, twice a second) so a block decision never waits for /proc (reading
    /proc/net/tcp{,6} costs milliseconds on a busy host)."""

    def __init__(self) -> None:
        self.peers: frozenset[bytes] = frozenset()
        self.refresh()

    def refresh(self) -> None:
        from netwarden.hostaddrs import established_peers

        self.peers = frozenset(established_peers())

    def __call__(self, addr: Any) -> bool:
        return bool(addr.packed in self.peers)


def make_policy(
    cfg: Config,
    own_addresses: Iterable[bytes] = (),
    has_established: Callable[[Any], bool] | None = None,
) -> Policy:
    return Policy(
        PolicyConfig(
            allow=tuple(ip_network(a) for a in cfg.allow),
            allow_self=not cfg.no_allow_self,
            blocking=cfg.block,
            block_for=cfg.block_for,
        ),
        own_addresses=list(own_addresses),
        has_established=has_established or EstablishedPeers(),
    )


def block_event(block: Any, kind: EventType, scan: Event | None, now: float) -> Event:
    """A ``block``/``unblock`` event for a :class:`netwarden.act.blocker.Block`."""
    net = block.net
    addr = net.network_address
    if scan is not None and scan.scan is not None:
        info = ScanInfo(
            scanner=scan.scan.scanner,
            kind=scan.scan.kind,
            ports=scan.scan.ports,
            targets=scan.scan.targets,
            window=scan.scan.window,
            until=block.until,
            allowed=False,
            probes=scan.scan.probes,
        )
        proto, ipproto, process = scan.proto, scan.ipproto, scan.process
        direction = scan.direction
    else:
        info = ScanInfo(
            scanner=addr, kind=ScanKind.MANUAL, ports=tuple(block.ports), until=block.until
        )
        proto, ipproto, process = Proto.IP, 0, ProcessInfo()
        direction = Direction.IN  # a block is always of a remote source
    return Event(
        ts=now,
        event=kind,
        proto=proto,
        ipproto=ipproto,
        family=addr.version,
        direction=direction,
        src=addr,
        dst=None,
        process=process,
        scan=info,
    )


def xdp_scan_event(d: Any, detector: ScanDetector) -> Event:
    """A ``scan`` event for a crossing of the XDP threshold (the kernel saw the ports)."""
    proto = Proto.from_number(d.ipproto)
    return Event(
        ts=d.at,
        event=EventType.SCAN,
        proto=proto,
        ipproto=d.ipproto,
        family=d.src.version,
        src=d.src,
        dst=d.dst,
        direction=Direction.IN,
        scan=ScanInfo(
            scanner=d.src,
            kind=ScanKind.PORT,
            ports=tuple(sorted(d.ports))[:32],
            targets=1,
            window=detector.config.scan_window,
            probes=len(d.ports),
        ),
    )


class Defense:
    def __init__(
        self,
        cfg: Config,
        emit: Callable[[Event], None],
        *,
        state_dir: str,
        own_addresses: Iterable[bytes] = (),
        blocker: Any = None,
    ) -> None:
        self.emit = emit
        self.detector = ScanDetector(
            DetectorConfig(
                scan_ports=cfg.scan_ports, scan_hosts=cfg.scan_hosts, scan_window=cfg.scan_window
            )
        )
        self.established = EstablishedPeers()
        self.policy = make_policy(cfg, own_addresses, self.established)
        self.blocking = cfg.block
        if blocker is None:
            from netwarden.act.blocker import Blocker

            blocker = Blocker(state_dir, guard=self.policy.refusal)
        self.blocker = blocker
        self.scans = 0
        self.blocks_applied = 0
        self.block_errors = 0
        self._known: dict[str, Any] = {}
        if self.blocking:
            try:
                started = self.blocker.start()
            except NetwardenError as exc:
                # no nftables here: say so once, detection goes on (netwarden doctor tells more)
                log.error("blocking unavailable, detection keeps running: %s", exc)
                self.blocking = False
            else:
                for b in started.expired:
                    self.emit(block_event(b, EventType.UNBLOCK, None, b.until or 0.0))
                if started.restored:
                    log.warning("restored %d blocks from the state dir", len(started.restored))
        self.xdp: list[Any] = []
        if self.blocking and cfg.xdp:
            self._attach_xdp(cfg, own_addresses, list(self.blocker.blocks()))
        self._known = {b.addr: b for b in self._blocks()}

    def _attach_xdp(self, cfg: Config, own: Iterable[bytes], restored: list[Any]) -> None:
        """The XDP fast path on each ``--xdp`` interface: the blocked sources dropped before
        the stack, and the in-kernel threshold that blocks a scanner at its threshold probe
        (then reported here through :meth:`tick`). A failure is one line; nft still blocks."""
        from netwarden.act.xdp import MAX_SCAN_PORTS, XdpBlocker

        allow = [*cfg.allow, "127.0.0.0/8", "::1/128"]
        if not cfg.no_allow_self:
            allow += [str(ip_address(a)) for a in own]
        for iface in cfg.xdp:
            try:
                x = XdpBlocker(iface, mode=cfg.xdp_mode).attach()
                x.set_allow(allow)
                x.configure(
                    scan_ports=cfg.scan_ports if cfg.scan_ports <= MAX_SCAN_PORTS else None,
                    window=cfg.scan_window,
                    block_for=cfg.block_for or None,
                )
                x.sync(restored)
            except NetwardenError as exc:
                log.error("XDP on %s unavailable, nftables blocks alone: %s", iface, exc)
                continue
            self.xdp.append(x)

    def _blocks(self) -> list[Any]:
        try:
            return list(self.blocker.blocks())
        except (OSError, ValueError, NetwardenError) as exc:
            log.debug("cannot read blocks: %s", exc)
            return list(self._known.values())

    def blocked_count(self) -> int:
        return len(self._known)

    def feed(self, e: Event, now: float) -> None:
        if e.event not in (EventType.NEW, EventType.END, EventType.PROBE):
            return
        for scan in self.detector.feed(e, now):
            self._scan(scan, now)

    def _scan(self, scan: Event, now: float) -> None:
        decision = self.policy.decide(scan, now)
        self.scans += 1
        self.emit(decision.event)
        if not decision.block or scan.scan is None:
            return
        try:
            blk = self.blocker.block(
                scan.scan.scanner,
                decision.duration,
                reason=decision.reason,
                ports=scan.scan.ports,
                durable=False,  # fsynced by tick(): the next event need not wait for the disk
            )
        except NetwardenError as exc:
            self.block_errors += 1
            log.error("could not block %s: %s", scan.scan.scanner, exc)
            return
        self.blocks_applied += 1
        self._known[blk.addr] = blk
        for x in self.xdp:
            try:
                x.block(blk.net, blk.until)
            except NetwardenError as exc:
                log.error("XDP block of %s on %s: %s", blk.addr, x.iface, exc)
        self.emit(block_event(blk, EventType.BLOCK, decision.event, now))

    def refresh(self) -> None:
        """The slow reads, outside the pipeline's lock (the ticker calls it first)."""
        self.established.refresh()

    def tick(self, now: float) -> None:
        for x in self.xdp:
            # scanners the kernel already dropped at their threshold probe
            try:
                for d in x.poll(0):
                    self._scan(xdp_scan_event(d, self.detector), now)
                x.expire()
            except NetwardenError as exc:
                log.error("XDP on %s: %s", x.iface, exc)
        for scan in self.detector.tick(now):
            self._scan(scan, now)
        if self.blocking:
            try:
                self.blocker.sync()
                for b in self.blocker.expire():
                    self._unblocked(b, now)
            except NetwardenError as exc:
                log.error("block expiry: %s", exc)
        # blocks added or removed by hand (or expired while the file was read elsewhere)
        current = {b.addr: b for b in self._blocks()}
        for addr, b in current.items():
            if addr not in self._known:
                self._known[addr] = b
                self.emit(block_event(b, EventType.BLOCK, None, now))
        for addr in [a for a in self._known if a not in current]:
            self._unblocked(self._known[addr], now)

    def _unblocked(self, b: Any, now: float) -> None:
        if self._known.get(b.addr) != b:
            # already reported (a block that ran out between reading the file and expiring
            # it is seen by both), or an older block of an address blocked again since: the
            # block in force stays known and its scanner stays remembered
            return
        del self._known[b.addr]
        for x in self.xdp:
            try:
                x.unblock(b.net)
            except NetwardenError as exc:
                log.error("XDP unblock of %s on %s: %s", b.addr, x.iface, exc)
        self.detector.forget(b.net if b.net.num_addresses > 1 else b.net.network_address, now)
        self.emit(block_event(b, EventType.UNBLOCK, None, now))

    def set_own_addresses(self, addrs: Iterable[bytes]) -> None:
        self.policy.set_own_addresses([ip_address(a) for a in addrs])

    def close(self) -> None:
        for x in self.xdp:
            try:
                x.detach()
            except NetwardenError as exc:
                log.error("XDP detach from %s: %s", x.iface, exc)
        if self.blocking:
            try:
                self.blocker.close()
            except NetwardenError as exc:
                log.error("could not remove the firewall table: %s", exc)
