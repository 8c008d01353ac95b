"""NftSets (raw nf_tables netlink) against the real kernel, in throw-away namespaces.

The table is created with libnftables (``nft.ruleset()``) inside the namespace and read back
with ``list table`` (JSON) there; NftSets adds and deletes elements. The last test joins two
namespaces by a veth pair and checks that a blocked source cannot connect while another
address can. Nothing here touches the root namespace's firewall: every socket is opened in
a namespace, which is deleted in ``finally`` (tests/integration/netns.py).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest

from netwarden.act import nft as render
from netwarden.act.libnftables import Nft, NftError
from netwarden.act.nftnl import NftSets
from netwarden.errors import MissingCapability, RuntimeFailure
from tests.integration.netns import Netns, VethPair

pytestmark = pytest.mark.root

ADDR4 = ip_address("192.0.2.7")
ADDR6 = ip_address("2001:db8::7")
ADDRS = [pytest.param(ADDR4, id="ipv4"), pytest.param(ADDR6, id="ipv6")]


def listed(ns: Netns, table: str = render.TABLE) -> dict[str, list[render.KernelElement]]:
    """The elements of the table in ``ns``, by set."""
    with ns.entered(), Nft() as nft:
        return render.parse_elements(nft.run_json(render.list_table(table)), table)


def element(ns: Netns, addr: IPv4Address | IPv6Address) -> render.KernelElement | None:
    """The element of ``addr`` in its set, None if absent (asserts it is there once)."""
    name = render.SETS[(addr.version, False)]
    found = [e for e in listed(ns).get(name, []) if e.net == ip_network(addr)]
    assert len(found) <= 1, found
    return found[0] if found else None


def create_table(ns: Netns, table: str = render.TABLE) -> None:
    with ns.entered(), Nft() as nft:
        nft.run(render.ruleset(table))


@pytest.fixture
def sets(ns: Netns) -> Iterator[NftSets]:
    """NftSets in ``ns``, whose table exists (empty)."""
    create_table(ns)
    with ns.entered():
        created = NftSets()
    try:
        yield created
    finally:
        created.close()


# ------------------------------------------------------------------ timeouts
@pytest.mark.parametrize("addr", ADDRS)
def test_replace_leaves_exactly_the_new_timeout(
    ns: Netns, sets: NftSets, addr: IPv4Address | IPv6Address
) -> None:
    sets.replace(addr, 60_000)
    e = element(ns, addr)
    assert e is not None
    assert e.timeout == 60.0
    assert e.expires is not None and 50.0 < e.expires <= 60.0

    sets.replace(addr, 5_000)  # shorter
    e = element(ns, addr)
    assert e is not None and e.timeout == 5.0
    assert e.expires is not None and e.expires <= 5.0

    sets.replace(addr, 120_000)  # longer
    e = element(ns, addr)
    assert e is not None and e.timeout == 120.0
    assert e.expires is not None and 110.0 < e.expires <= 120.0

    sets.replace(addr, None)  # no timeout
    e = element(ns, addr)
    assert e is not None
    assert (e.timeout, e.expires) == (None, None)

    sets.replace(addr, 30_000)  # and back to a timeout
    e = element(ns, addr)
    assert e is not None and e.timeout == 30.0

    other = render.SETS[(6 if addr.version == 4 else 4, False)]
    assert listed(ns).get(other, []) == []


def test_replace_of_a_new_address_without_timeout(ns: Netns, sets: NftSets) -> None:
    sets.replace(ADDR4, None)
    sets.replace(ADDR6, 90_000)
    e4, e6 = element(ns, ADDR4), element(ns, ADDR6)
    assert e4 is not None and e4.timeout is None
    assert e6 is not None and e6.timeout == 90.0


def test_replace_keeps_other_elements(ns: Netns, sets: NftSets) -> None:
    others = [ip_address(f"198.51.100.{i}") for i in range(1, 4)]
    for a in others:
        sets.replace(a, 600_000)
    sets.replace(ADDR4, 60_000)
    sets.replace(ADDR4, 10_000)
    nets = {e.net: e.timeout for e in listed(ns)["blocked4"]}
    assert nets == {**{ip_network(a): 600.0 for a in others}, ip_network(ADDR4): 10.0}


# ------------------------------------------------------------------ delete and errors
@pytest.mark.parametrize("addr", ADDRS)
def test_delete(ns: Netns, sets: NftSets, addr: IPv4Address | IPv6Address) -> None:
    sets.replace(addr, 60_000)
    sets.delete(addr)
    assert element(ns, addr) is None

    with pytest.raises(NftError) as info:
        sets.delete(addr)
    assert info.value.no_such_object
    assert "No such file or directory" in info.value.message
    assert info.value.command == render.delete_elements([ip_network(addr)])

    # the failed batch left no reply behind: the next calls see their own
    sets.replace(addr, 20_000)
    e = element(ns, addr)
    assert e is not None and e.timeout == 20.0
    sets.delete(addr)
    assert element(ns, addr) is None


def test_missing_table(ns: Netns) -> None:
    with ns.entered():
        sets = NftSets()
    try:
        with pytest.raises(NftError) as info:
            sets.replace(ADDR4, 60_000)
        assert info.value.no_such_object
        # each of the batch's three messages failed; the later replies were read too
        assert sets._sock is not None and sets._sock.recv(block=False) is None
        assert info.value.command == render.replace_elements(
            [render.Element(ip_network(ADDR4), 60_000)]
        )
        with pytest.raises(NftError) as info:
            sets.delete(ADDR6)
        assert info.value.no_such_object

        create_table(ns)  # the same socket works once the table is there
        sets.replace(ADDR6, 60_000)
        e = element(ns, ADDR6)
        assert e is not None and e.timeout == 60.0
    finally:
        sets.close()


def test_closed(ns: Netns) -> None:
    with ns.entered(), NftSets() as sets:
        pass
    with pytest.raises(RuntimeFailure, match="closed"):
        sets.replace(ADDR4, 1)
    sets.close()  # twice is fine


def _unprivileged_replace() -> str:
    """In a forked child: drop root, then try a replace."""
    import os

    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # every capability goes with uid 0
    try:
        with NftSets() as s:
            s.replace(ADDR4, 60_000)
    except MissingCapability as exc:
        return f"MissingCapability: {exc}"
    return "no error"


def test_without_cap_net_admin(ns: Netns) -> None:
    create_table(ns)
    result = ns.call(_unprivileged_replace)
    assert result.startswith("MissingCapability: nftables: Operation not permitted")
    assert "CAP_NET_ADMIN" in result
    assert element(ns, ADDR4) is None


def test_socket_stays_in_its_namespace(ns: Netns) -> None:
    """Created inside ``ns``, used from a thread back in the root namespace: the elements
    land in ``ns`` (a table name nobody else uses, in case they did not)."""
    table = "nwt" + secrets.token_hex(4)
    create_table(ns, table)
    with ns.entered():
        sets = NftSets(table)
    try:
        sets.replace(ADDR4, 60_000)  # this thread is in the root namespace again
        got = listed(ns, table)["blocked4"]
        assert [(e.net, e.timeout) for e in got] == [(ip_network(ADDR4), 60.0)]
    finally:
        sets.close()


# ------------------------------------------------------------------ packets
PORT = 8080


def _third(addr: str) -> str:
    """The same /24 or /64 as ``addr``, host 3 (10.X.Y.1 -> 10.X.Y.3, fd00:X:Y::1 -> ::3)."""
    return addr.rsplit(".", 1)[0] + ".3" if "." in addr else addr.rsplit(":", 1)[0] + ":3"


def connects(ns: Netns, src: str, dst: str, timeout: float = 1.0) -> bool:
    """Whether a TCP connection from ``src`` to ``dst`` (port PORT) is set up in time."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with ns.entered():
        s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.bind((src, 0))
        s.connect((dst, PORT))
        return True
    except OSError:  # socket.timeout included
        return False
    finally:
        s.close()


def test_blocked_source_is_dropped(veth: VethPair) -> None:
    a, b = veth.a, veth.b
    good4, good6 = _third(veth.b4), _third(veth.b6)
    b.ip("addr", "add", f"{good4}/{veth.prefix4}", "dev", veth.b_if)
    b.ip("addr", "add", f"{good6}/{veth.prefix6}", "dev", veth.b_if, "nodad")
    create_table(a)
    listeners = []
    with a.entered():
        sets = NftSets()
        for family, addr in ((socket.AF_INET, veth.a4), (socket.AF_INET6, veth.a6)):
            srv = socket.socket(family, socket.SOCK_STREAM)
            listeners.append(srv)
            srv.bind((addr, PORT))
            srv.listen(64)  # the kernel completes handshakes without accept()
    try:
        for bad, good, dst in ((veth.b4, good4, veth.a4), (veth.b6, good6, veth.a6)):
            assert connects(b, bad, dst)  # before the block
            sets.replace(ip_address(bad), 60_000)
            assert not connects(b, bad, dst)
            assert connects(b, good, dst)
            sets.delete(ip_address(bad))
            assert connects(b, bad, dst)
        # the drops went through the rule's counter, in the namespace's table only
        with a.entered(), Nft() as nft:
            text = nft.run(f"list chain {render.FAMILY} {render.TABLE} {render.CHAIN_DROP}")
        assert "ip saddr @blocked4 counter packets 0 " not in text
        assert "ip6 saddr @blocked6 counter packets 0 " not in text
    finally:
        sets.close()
        for srv in listeners:
            srv.close()
