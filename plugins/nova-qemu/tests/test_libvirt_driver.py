"""The libvirt driver against a real libvirtd + virtlogd (started here without systemd,
in a private mount namespace: :class:`nova_qemu.testing.PrivateLibvirtd`), running the
same real test guest as the qemu driver's tests under TCG."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nova_qemu.domain import LibvirtDriver
from nova_qemu.testing import MARKER, PrivateLibvirtd
from nova_qemu.testing import guest_spec as vm
from nova_qemu.testing import wait_for_serial as wait_for

from nova_core.drivers.base import DriverContext
from nova_core.drivers.models import Lifecycle, LogRequest, VmSpec
from nova_core.errors import NovaError
from nova_core.testing.contracts import ComputeDriverContract


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    daemon = PrivateLibvirtd(tmp_path_factory.mktemp("libvirt")).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def driver(nova_home: Path, libvirtd: PrivateLibvirtd) -> LibvirtDriver:
    return LibvirtDriver("libvirt", DriverContext(nova_home=nova_home))


def virsh(libvirtd: PrivateLibvirtd, *args: str) -> str:
    return subprocess.run(["virsh", "-c", libvirtd.uri, *args], capture_output=True, text=True,
                          check=True).stdout


class TestLibvirtContract(ComputeDriverContract):
    @pytest.fixture
    def instance_spec(self, tmp_path: Path, initrd: Path, libvirtd: PrivateLibvirtd) -> VmSpec:
        return vm(tmp_path, initrd, "lvcontract", uri=libvirtd.uri)


def test_a_domain_nova_defines_boots_pauses_and_is_adopted(driver: LibvirtDriver, tmp_path: Path,
                                                           initrd: Path, nova_home: Path,
                                                           libvirtd: PrivateLibvirtd) -> None:
    spec = vm(tmp_path, initrd, "lv1", uri=libvirtd.uri)
    assert driver.create(spec).state is Lifecycle.CREATED
    try:
        dumped = virsh(libvirtd, "dumpxml", "qemut.lv1")
        assert "<nova:project>qemut</nova:project>" in dumped  # Nova's metadata, as libvirt keeps it
        assert "qemut.lv1" in virsh(libvirtd, "list", "--all", "--name").split()
        assert driver.start(spec).state is Lifecycle.RUNNING
        wait_for(driver, spec, MARKER)
        later = LibvirtDriver("libvirt", DriverContext(nova_home=nova_home))  # a new nova
        assert later.status(spec).state is Lifecycle.RUNNING
        assert later.pause(spec).state is Lifecycle.PAUSED
        assert virsh(libvirtd, "domstate", "qemut.lv1").strip() == "paused"
        assert later.resume(spec).state is Lifecycle.RUNNING
        assert later.stop(spec, 0.5).state is Lifecycle.STOPPED  # no ACPI daemon: destroyed
        with pytest.raises(NovaError, match="is not running"):
            later.pause(spec)
        assert driver.start(spec).state is Lifecycle.RUNNING
        wait_for(driver, spec, rf"(?s){MARKER}.*{MARKER}")  # booted a second time
    finally:
        driver.delete(spec)
    assert "qemut.lv1" not in virsh(libvirtd, "list", "--all", "--name").split()
    assert not driver.files(spec).root.exists()


def test_a_live_snapshot_through_libvirt_brings_the_guest_back(driver: LibvirtDriver,
                                                                tmp_path: Path, initrd: Path,
                                                                libvirtd: PrivateLibvirtd) -> None:
    spec = vm(tmp_path, initrd, "lvsnap", uri=libvirtd.uri)
    driver.create(spec)
    try:
        driver.start(spec)
        wait_for(driver, spec, r"tick 3\b")
        assert driver.snapshot(spec, "s1").memory
        assert "s1" in virsh(libvirtd, "snapshot-list", "qemut.lvsnap", "--name").split()
        wait_for(driver, spec, r"tick 1[2-9]\b")
        before = len(list(driver.logs(spec, LogRequest())))
        assert driver.restore_snapshot(spec, "s1").state is Lifecycle.RUNNING
        deadline = time.monotonic() + 30
        ticks: list[int] = []
        while not ticks and time.monotonic() < deadline:
            after = [line.text for line in driver.logs(spec, LogRequest())][before:]
            ticks = [int(n) for n in re.findall(r"tick (\d+)", "\n".join(after))]
            time.sleep(0.1)
        assert ticks and 3 <= ticks[0] < 12  # the counter went back to where it was saved
        driver.delete_snapshot(spec, "s1")
        with pytest.raises(NovaError, match="no snapshot s1"):
            driver.restore_snapshot(spec, "s1")
        driver.stop(spec, 0)
        assert not driver.snapshot(spec, "cold").memory  # stopped: disks only
        assert driver.restore_snapshot(spec, "cold").state is Lifecycle.STOPPED
    finally:
        driver.delete(spec)


def test_seed_console_and_refusals(driver: LibvirtDriver, tmp_path: Path, initrd: Path,
                                   libvirtd: PrivateLibvirtd) -> None:
    import socket

    spec = vm(tmp_path, initrd, "lvseed", uri=libvirtd.uri, user_data="#cloud-config\n", disks=[])
    driver.create(spec)
    try:
        driver.start(spec)
        wait_for(driver, spec, r"NOVA-SEED /dev/vda")
        with socket.socket(socket.AF_UNIX) as conn:  # what nova console connects to
            conn.connect(str(driver.console_socket(spec)))
            conn.settimeout(10)
            seen = b""
            while b"tick" not in seen:
                chunk = conn.recv(4096)
                assert chunk, seen
                seen += chunk
    finally:
        driver.delete(spec)
    foreign = vm(tmp_path, initrd, "lvforeign", uri=libvirtd.uri)
    xml = (tmp_path / "foreign.xml")
    xml.write_text("<domain type='qemu'><name>qemut.lvforeign</name><memory unit='MiB'>64"
                   "</memory><os><type arch='x86_64'>hvm</type></os></domain>")
    virsh(libvirtd, "define", str(xml))
    try:
        with pytest.raises(NovaError, match="did not define"):
            driver.create(foreign)
        assert not driver.files(foreign).root.exists()
    finally:
        virsh(libvirtd, "undefine", "qemut.lvforeign")
    micro = vm(tmp_path, initrd, "lvmicro", uri=libvirtd.uri).model_copy(
        update={"options": vm(tmp_path, initrd, uri=libvirtd.uri).options.model_copy(
            update={"machine": "microvm"})})
    with pytest.raises(NovaError, match="libvirt cannot run machine"):
        driver.create(micro)
    unreachable = vm(tmp_path, initrd, "lvnone", uri="qemu:///system?socket=/nonexistent/sock")
    with pytest.raises(NovaError, match="cannot reach libvirt"):
        driver.create(unreachable)
    assert not driver.files(unreachable).root.exists()
