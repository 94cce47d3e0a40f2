"""Every test here must leave the host's links, namespaces, nft ruleset and dnsmasq
processes exactly as it found them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nova_bridge.testing import host_unchanged


@pytest.fixture(autouse=True)
def _host_unchanged() -> Iterator[None]:
    with host_unchanged():
        yield
