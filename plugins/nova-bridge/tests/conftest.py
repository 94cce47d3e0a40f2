"""Every test here must leave the host's links, namespaces, nft ruleset and dnsmasq
processes exactly as it found them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from nova_bridge.testing import host_snapshot


@pytest.fixture(autouse=True)
def _host_unchanged() -> Iterator[None]:
    before = host_snapshot()
    yield
    deadline = time.monotonic() + 3  # veth and namespace teardown finishes asynchronously
    while host_snapshot() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_snapshot() == before
