"""The vfio and sriov device drivers and ``nova device``, against the synthetic sysfs tree
of :mod:`nova_vfio.testing` (there is no passthrough hardware on these machines: the
tree has the layout of real sysfs, and the kernel's reactions to writes are emulated by
that fixture, as its docstring describes), plus read-only checks of this machine's /sys.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nova_vfio.driver import Ledger, SriovDriver, VfioDriver, parse_entry
from nova_vfio.hooks import gpu_checks
from nova_vfio.sysfs import PciHost
from nova_vfio.testing import build_sysfs, driver_of

from nova_core.drivers.base import DriverContext
from nova_core.drivers.models import DeviceClaim, ResourceKind, ResourceRef
from nova_core.errors import NovaError

GPU, AUDIO, AMD, NVME, IGPU, NIC, HOSTNIC = ("0000:01:00.0", "0000:01:00.1", "0000:02:00.0",
                                             "0000:03:00.0", "0000:00:02.0", "0000:04:00.0",
                                             "0000:05:00.0")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return build_sysfs(tmp_path / "host")


def vm(name: str) -> ResourceRef:
    return ResourceRef(project="p", kind=ResourceKind.VM, name=name)


def vfio(root: Path, nova_home: Path, force: bool = False) -> VfioDriver:
    return VfioDriver("vfio", DriverContext(nova_home=nova_home, force=force), root)


def test_inventory_names_groups_companions_and_sriov(root: Path) -> None:
    host = PciHost(root)
    gpu = host.device("01:00.0")
    assert (gpu.vendor, gpu.name, gpu.driver, gpu.group) == (
        "NVIDIA Corporation", "GA102 [GeForce RTX 3090]", "nouveau", "13")
    assert gpu.is_gpu and [c.address for c in host.companions(gpu)] == [AUDIO]
    assert host.isolated(gpu)  # its group holds its own audio and a bridge only
    assert not host.isolated(host.device(AMD))  # shares group 14 with an NVMe drive
    nic = host.device(NIC)
    assert (nic.sriov_total, nic.sriov_current, nic.interfaces) == (8, 0, ["enp6s0"])
    assert host.host_use(host.device(IGPU)) == f"{IGPU} drives the host's console (boot_vga)"
    assert "default route (eno1)" in (host.host_use(host.device(HOSTNIC)) or "")
    checks = {c.name: c for c in gpu_checks(root)}
    assert checks[f"GPU {GPU}"].status == "ok"
    assert checks[f"GPU {AMD}"].status == "warn" and NVME in checks[f"GPU {AMD}"].summary


def test_gpu_passthrough_takes_an_isolated_gpu_with_its_audio_and_gives_them_back(
        root: Path, nova_home: Path) -> None:
    driver = vfio(root, nova_home)
    assigned = driver.reserve(DeviceClaim(holder=vm("g1"), gpu=True))
    assert [(a.address, a.options) for a in assigned] == [
        (GPU, {"gpu": "1", "multifunction": "on"}), (AUDIO, {})]
    assert driver_of(root, GPU) == driver_of(root, AUDIO) == "vfio-pci"
    assert (root / "sys/bus/pci/devices" / GPU / "driver_override").read_text() == "vfio-pci\n"
    assert Ledger(nova_home).read()[GPU] == {"holder": "p/vm.g1", "original": "nouveau"}
    assert {d.address: d.reserved_by for d in driver.list_devices()}[AUDIO] == "p/vm.g1"
    with pytest.raises(NovaError) as caught:  # nothing else qualifies, and it says why
        driver.reserve(DeviceClaim(holder=vm("g2"), gpu=True))
    message = caught.value.message
    assert f"{GPU} is held by p/vm.g1" in message and "host's console" in message
    assert f"{AMD} shares IOMMU group 14 with {NVME}" in message
    with pytest.raises(NovaError, match=f"{GPU} is held by p/vm.g1"):
        driver.reserve(DeviceClaim(holder=vm("g2"), addresses=[GPU]))
    driver.release(vm("g1"))
    assert (driver_of(root, GPU), driver_of(root, AUDIO)) == ("nouveau", "snd_hda_intel")
    assert (root / "sys/bus/pci/devices" / GPU / "driver_override").read_text() == "(null)\n"
    assert Ledger(nova_home).read() == {}


def test_refusals_and_force(root: Path, nova_home: Path) -> None:
    driver = vfio(root, nova_home)
    with pytest.raises(NovaError, match=f"shares IOMMU group 14 with {NVME}"):
        driver.reserve(DeviceClaim(holder=vm("a"), addresses=[AMD]))
    with pytest.raises(NovaError, match="carries the host's default route"):
        driver.reserve(DeviceClaim(holder=vm("a"), addresses=[HOSTNIC]))
    with pytest.raises(NovaError, match="drives the host's console"):
        driver.reserve(DeviceClaim(holder=vm("a"), addresses=[IGPU]))
    assert driver_of(root, AMD) == "amdgpu" and driver_of(root, NVME) == "nvme"
    assert Ledger(nova_home).read() == {}  # a refusal binds nothing
    forced = vfio(root, nova_home, force=True)
    forced.reserve(DeviceClaim(holder=vm("a"), addresses=[f"{AMD},romfile=/srv/navi.rom"]))
    assert driver_of(root, AMD) == driver_of(root, NVME) == "vfio-pci"  # the whole group
    forced.release(vm("a"))
    assert driver_of(root, AMD) == "amdgpu" and driver_of(root, NVME) == "nvme"
    for entry, message in (("zz:00.0", "is not a PCI address"),
                           (f"{GPU},bogus=1", "is not a vfio-pci option"),
                           ("0000:09:00.0", "no PCI device 0000:09:00.0")):
        with pytest.raises(NovaError, match=message):
            driver.reserve(DeviceClaim(holder=vm("a"), addresses=[entry]))
    assert parse_entry("01:00.0,x-vga=on") == (GPU, {"x-vga": "on"})


def test_sriov_vfs_are_made_assigned_and_released(root: Path, nova_home: Path) -> None:
    host = PciHost(root)
    sriov = SriovDriver("sriov", DriverContext(nova_home=nova_home), root)
    with pytest.raises(NovaError) as caught:
        sriov.reserve(DeviceClaim(holder=vm("n"), addresses=["vf:enp6s0/2"]))
    assert caught.value.hint == f"nova device vfs {NIC} --count 3"
    host.set_vfs(host.device(NIC), 4)
    host.set_vfs(host.device(NIC), 3)  # via 0: the kernel refuses 4 -> 3 directly
    nic = host.device(NIC)
    assert nic.sriov_current == 3 and nic.vfs == ["0000:04:01.0", "0000:04:01.1", "0000:04:01.2"]
    [assigned] = sriov.reserve(DeviceClaim(holder=vm("n"), addresses=["vf:enp6s0/2"]))
    assert (assigned.address, assigned.kind, assigned.options) == ("0000:04:01.2", "vf",
                                                                  {"pf": NIC})
    assert driver_of(root, "0000:04:01.2") == "vfio-pci" and driver_of(root, NIC) == "ice"
    sriov.release(vm("n"))
    assert driver_of(root, "0000:04:01.2") == "iavf"
    for entry, message in (("vf:enp9s0/0", "no PCI network interface named enp9s0"),
                           ("vf:eno1/0", "is not SR-IOV capable"), ("vf:enp6s0", "vf:INTERFACE/INDEX")):
        with pytest.raises(NovaError, match=message):
            sriov.reserve(DeviceClaim(holder=vm("n"), addresses=[entry]))
    with pytest.raises(NovaError, match="supports 0 to 8 VFs, not 9"):
        host.set_vfs(host.device(NIC), 9)


def test_nova_device_cli_and_vms_through_the_engine(root: Path, run_nova, nova_home: Path,
                                                   tmp_path: Path, cli_on_emulated_host) -> None:  # noqa: ANN001
    listing = json.loads(run_nova("device", "ls", "--json", "--gpu", check=True).stdout)
    assert [d["address"] for d in listing] == [IGPU, GPU, AMD]
    assert listing[1]["companions"] == [AUDIO] and listing[2]["group_isolated"] is False
    bound = run_nova("device", "bind", "01:00.0")
    assert bound.returncode == 0 and f"{GPU}, {AUDIO}" in bound.stdout
    assert driver_of(root, AUDIO) == "vfio-pci"
    released = run_nova("device", "release", GPU)
    assert released.returncode == 0 and f"{GPU} -> nouveau" in released.stdout
    refused = run_nova("device", "bind", IGPU)
    assert refused.returncode == 1 and "host's console" in refused.stderr
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    vfs = run_nova("device", "vfs", NIC, "--count", "2")
    assert vfs.returncode == 0 and "2 VFs" in vfs.stdout

    project = tmp_path / "proj"
    project.mkdir()
    (project / "NovaFile").write_text('project = "pt"\n\n[vm.g1]\ndriver = "fake"\n'
                                      'gpu_passthrough = true\n\n[vm.n1]\ndriver = "fake"\n'
                                      'devices = ["vf:enp6s0/1"]\n\n[vm.g2]\ndriver = "fake"\n'
                                      f'devices = ["{AUDIO}"]\ndepends_on = ["g1", "n1"]\n')
    up = run_nova("up", cwd=project)  # the audio function's group holds vm.g1's GPU
    assert up.returncode == 1 and f"vm.g2: create failed: {GPU} is held by pt/vm.g1" in up.stderr
    held = {d["address"]: d["reserved_by"] for d in
            json.loads(run_nova("device", "ls", "--json", check=True).stdout)}
    assert held[GPU] == held[AUDIO] == "pt/vm.g1" and held["0000:04:01.1"] == "pt/vm.n1"
    busy = run_nova("device", "vfs", NIC, "--count", "0")
    assert busy.returncode == 1 and "0000:04:01.1" in busy.stderr
    not_yours = run_nova("device", "release", GPU)
    assert not_yours.returncode == 1 and "held by pt/vm.g1" in not_yours.stderr
    assert run_nova("down", cwd=project).returncode == 0
    assert driver_of(root, GPU) == "nouveau" and driver_of(root, "0000:04:01.1") == "iavf"
    assert Ledger(nova_home).read() == {}


def test_this_machines_real_sys_is_read_without_crashing(run_nova) -> None:
    host = PciHost(Path("/"))
    devices = host.devices()
    assert all(d.address.count(":") == 2 for d in devices)
    listing = run_nova("device", "ls", "--json")
    assert listing.returncode == 0, listing.stderr
    assert len(json.loads(listing.stdout)) == len(devices)
    doctor = run_nova("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    groups = Path("/sys/kernel/iommu_groups")
    assert (checks["IOMMU groups"]["status"] == "ok") == (groups.is_dir() and any(groups.iterdir()))
