"""This namespace's addresses, read and watched through rtnetlink."""

from __future__ import annotations

import time
from ipaddress import ip_address

import pytest

from tests.integration.netns import netns

pytestmark = pytest.mark.root


def test_addresses_read_and_changes_noticed() -> None:
    from netwarden.hostaddrs import AddressWatcher, local_addresses

    with netns() as ns, ns.entered():
        w = AddressWatcher()
        assert ip_address("127.0.0.1").packed in local_addresses()
        assert not w.changed()
        ns.ip("addr", "add", "192.0.2.77/32", "dev", "lo")
        ns.ip("addr", "add", "2001:db8::77/128", "dev", "lo", "nodad")
        deadline = time.monotonic() + 5
        seen = False
        while not seen and time.monotonic() < deadline:
            seen = w.changed()
            time.sleep(0.02)
        assert seen
        addrs = local_addresses()
        w.close()
    assert ip_address("192.0.2.77").packed in addrs
    assert ip_address("2001:db8::77").packed in addrs
