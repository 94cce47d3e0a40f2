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
    layer_tar,
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
    """Debian's docker-registry on 127.0.0.1, with busybox:1 (and busybox:multi behind an index)
    and a two-layer image, layered:1."""
    local = LocalRegistry(tmp_path_factory.mktemp("registry")).start()
    try:
        layer = busybox_layer()
        config = image_config(["/bin/sh"], layers=[layer])
        push_image(local.address, "test/busybox", "1", [layer], config)
        push_image(local.address, "test/busybox", "multi", [layer], config, platform_index=True)
        # two layers: the second deletes a file and hides a folder's files (whiteouts, an
        # opaque folder) of the first; the config names a user
        lower = busybox_layer({"etc/secret": b"s", "root/old": b"old", "etc/motd": b"lower"})
        upper = layer_tar([("etc", None), ("etc/.wh.secret", b""), ("etc/motd", b"upper"),
                           ("root", None), ("root/.wh..wh..opq", b""), ("root/new", b"new")])
        push_image(local.address, "test/layered", "1", [lower, upper],
                   image_config(["/bin/sh"], layers=[lower, upper], user="nobody:nogroup"))
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
