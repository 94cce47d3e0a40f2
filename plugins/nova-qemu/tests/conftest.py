"""Shared by the nova-qemu tests: a test guest (Debian's cloud kernel and a busybox
initramfs), VM specs for either driver, and a check that no QEMU and no /run folder of
the test's NOVA_HOME is left behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nova_qemu.driver import QemuDriver
from nova_qemu.testing import busybox_initramfs
from nova_qemu.vm import run_root

from nova_core.drivers.base import DriverContext
from nova_core.hostinfo.processes import find_processes


def qemu_processes(marker: str) -> list[int]:
    return [pid for pid, _ in find_processes(("qemu-system*",), marker)]


@pytest.fixture(autouse=True)
def _nothing_left(nova_home: Path) -> Iterator[None]:
    yield
    marker = str(run_root(nova_home))
    deadline = time.monotonic() + 5
    while qemu_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qemu_processes(marker) == []
    assert not run_root(nova_home).exists()


@pytest.fixture(scope="session")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_initramfs(tmp_path_factory.mktemp("guest") / "initrd.gz")


@pytest.fixture
def driver(nova_home: Path) -> QemuDriver:
    return QemuDriver("qemu", DriverContext(nova_home=nova_home))
