"""Fixtures for nova-capsule's tests: a real local registry with a busybox image."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nova_capsule.testing import (
    LocalRegistry,
    busybox_layer,
    capsule_leftovers,
    image_config,
    push_image,
)


@pytest.fixture(autouse=True)
def _nothing_leaks(nova_home: Path) -> Iterator[None]:
    """No mount, cgroup, conmon or runtime process of the test's NOVA_HOME outlives it."""
    yield
    deadline = time.monotonic() + 5
    while capsule_leftovers(nova_home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert capsule_leftovers(nova_home) == []


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """Debian's docker-registry on 127.0.0.1, with busybox:1 (and busybox:multi behind an index)."""
    local = LocalRegistry(tmp_path_factory.mktemp("registry")).start()
    try:
        layer = busybox_layer()
        config = image_config(["/bin/sh"], layers=[layer])
        push_image(local.address, "test/busybox", "1", [layer], config)
        push_image(local.address, "test/busybox", "multi", [layer], config, platform_index=True)
        yield local
    finally:
        local.stop()


@pytest.fixture
def capsule_home(nova_home: Path, registry: LocalRegistry) -> Path:
    """A NOVA_HOME whose default registry is the local one (nova_home removes its /run folder)."""
    nova_home.mkdir(parents=True, exist_ok=True)
    (nova_home / "config.toml").write_text(
        f'[images]\ndefault_registry = "{registry.address}"\n')
    return nova_home
