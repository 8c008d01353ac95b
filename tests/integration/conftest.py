"""Fixtures for integration tests: fresh network namespaces (see tests/integration/netns.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.ebpf_helpers import Collector, Started, build_object, collecting, starting
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


# the eBPF tests' fixtures (tests/integration/ebpf_helpers.py)
@pytest.fixture(scope="session")
def bpf_object() -> Path:
    return build_object()


@pytest.fixture
def collectors(bpf_object: Path) -> Iterator[Callable[..., Collector]]:
    with collecting(bpf_object) as make:
        yield make


@pytest.fixture
def procs() -> Iterator[Callable[..., Started]]:
    with starting() as start:
        yield start
