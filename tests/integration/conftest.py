"""Fixtures for integration tests: fresh network namespaces (see tests/integration/netns.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.netns import Netns, VethPair, netns, veth_pair


@pytest.fixture
def ns() -> Iterator[Netns]:
    """A fresh network namespace with lo up; skips the test without root or ip netns."""
    with netns() as created:
        yield created


@pytest.fixture
def veth() -> Iterator[VethPair]:
    """Namespaces a and b joined by a veth pair with IPv4 and IPv6 addresses."""
    with veth_pair() as pair:
        yield pair
