"""A synthetic sysfs tree for nova-vfio's tests, and an emulation of the kernel's answers.

There is no passthrough hardware on the machines Nova is built on, so the tests run
against a tree shaped exactly like real sysfs (see :mod:`nova_vfio.sysfs` for the
paths) built from realistic layouts:

* ``0000:00:02.0`` an Intel iGPU that drives the host's console (``boot_vga`` 1), group 0;
* ``0000:01:00.0`` an NVIDIA GPU and ``0000:01:00.1`` its HDMI audio, in group 13 with
  their root port ``0000:00:01.0`` (a bridge): an isolated group;
* ``0000:02:00.0`` an AMD GPU sharing group 14 with an unrelated NVMe drive ``0000:03:00.0``;
* ``0000:04:00.0`` an Intel E810 NIC (``enp6s0``), SR-IOV capable with 8 VFs;
* ``0000:05:00.0`` the host's own NIC (``eno1``), which carries the default route.

Emulated, not real: in real sysfs the kernel reacts to writes. Here
:class:`KernelEmulator` does, after every write nova-vfio makes (it is used when the
tree holds the file ``.nova-emulated-kernel``): ``driver_override`` is stored;
``drivers/D/unbind`` removes the ``driver`` link; ``drivers/D/bind`` and
``drivers_probe`` bind the device (to the override if set, else to the driver recorded
in the fixture-only file ``.native_driver``); ``sriov_numvfs`` creates or removes VF
folders with ``physfn``/``virtfnN`` links and a group each, refusing (EBUSY) a change
from one non-zero count to another, as the kernel does.

VF settings (``ip link set PF vf N mac ... vlan ...``) go to the PF's driver over
netlink, which has nothing to answer here: :meth:`KernelEmulator.set_vf_link` records
them in the fixture-only file ``.vf_links.json`` of the PF's folder instead, refusing a
VF index the PF does not have (EINVAL), as the kernel does.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

MARKER = ".nova-emulated-kernel"
PCI_IDS = """\
# a few lines in the format of /usr/share/misc/pci.ids
1002  Advanced Micro Devices, Inc. [AMD/ATI]
\t73bf  Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]
10de  NVIDIA Corporation
\t1aef  GA102 High Definition Audio Controller
\t2204  GA102 [GeForce RTX 3090]
144d  Samsung Electronics Co Ltd
\ta808  NVMe SSD Controller SM981/PM981/PM983
8086  Intel Corporation
\t1592  Ethernet Controller E810-C for QSFP
\t1889  Ethernet Adaptive Virtual Function
\t15b8  Ethernet Connection (2) I219-V
\t1901  6th-10th Gen Core Processor PCIe Controller (x16)
\t3e92  CoffeeLake-S GT2 [UHD Graphics 630]
C 00  Unclassified device
"""
# address: (vendor, device, class, native driver, group, extra files)
LAYOUT: dict[str, tuple[str, str, str, str, str, dict[str, str]]] = {
    "0000:00:01.0": ("8086", "1901", "0x060400", "pcieport", "13", {}),
    "0000:00:02.0": ("8086", "3e92", "0x030000", "i915", "0", {"boot_vga": "1"}),
    "0000:01:00.0": ("10de", "2204", "0x030000", "nouveau", "13", {"boot_vga": "0"}),
    "0000:01:00.1": ("10de", "1aef", "0x040300", "snd_hda_intel", "13", {}),
    "0000:02:00.0": ("1002", "73bf", "0x030000", "amdgpu", "14", {"boot_vga": "0"}),
    "0000:03:00.0": ("144d", "a808", "0x010802", "nvme", "14", {}),
    "0000:04:00.0": ("8086", "1592", "0x020000", "ice", "15",
                     {"sriov_totalvfs": "8", "sriov_numvfs": "0"}),
    "0000:05:00.0": ("8086", "15b8", "0x020000", "e1000e", "16", {}),
}
INTERFACES = {"0000:04:00.0": "enp6s0", "0000:05:00.0": "eno1"}
VF_DEVICE, VF_DRIVER = "1889", "iavf"


def vf_address(index: int) -> str:
    """Where VF ``index`` of the E810 appears (first VF offset 8, stride 1)."""
    function = 8 + index
    return f"0000:04:{function // 8:02x}.{function % 8}"


def build_sysfs(root: Path) -> Path:
    """Write the synthetic tree under ``root`` and return ``root``."""
    sys_ = root / "sys"
    devices = sys_ / "bus" / "pci" / "devices"
    drivers = sys_ / "bus" / "pci" / "drivers"
    devices.mkdir(parents=True)
    (sys_ / "bus" / "pci" / "drivers_probe").write_text("")
    for name in {d[3] for d in LAYOUT.values()} | {"vfio-pci", VF_DRIVER}:
        (drivers / name).mkdir(parents=True, exist_ok=True)
        (drivers / name / "bind").write_text("")
        (drivers / name / "unbind").write_text("")
    for address, (vendor, device, klass, driver, group, extra) in LAYOUT.items():
        _add_device(root, address, vendor, device, klass, driver, group, extra)
    for address, name in INTERFACES.items():
        (devices / address / "net" / name).mkdir(parents=True)
    (root / "proc" / "net").mkdir(parents=True)
    (root / "proc" / "net" / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eno1\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eno1\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n")
    (root / "usr" / "share" / "misc").mkdir(parents=True)
    (root / "usr" / "share" / "misc" / "pci.ids").write_text(PCI_IDS)
    (root / MARKER).write_text("nova_vfio.testing.KernelEmulator\n")
    return root


def _add_device(root: Path, address: str, vendor: str, device: str, klass: str, driver: str,
                group: str, extra: dict[str, str]) -> Path:
    sys_ = root / "sys"
    folder = sys_ / "bus" / "pci" / "devices" / address
    folder.mkdir(parents=True)
    for name, value in (("vendor", f"0x{vendor}"), ("device", f"0x{device}"), ("class", klass),
                        ("driver_override", "(null)"), *extra.items()):
        (folder / name).write_text(value + "\n")
    (folder / ".native_driver").write_text(driver)
    group_dir = sys_ / "kernel" / "iommu_groups" / group / "devices"
    group_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(folder, group_dir / address)
    os.symlink(group_dir.parent, folder / "iommu_group")
    _link_driver(root, address, driver)
    return folder


def _link_driver(root: Path, address: str, driver: str) -> None:
    drivers = root / "sys" / "bus" / "pci" / "drivers"
    folder = root / "sys" / "bus" / "pci" / "devices" / address
    os.symlink(drivers / driver, folder / "driver")
    os.symlink(folder, drivers / driver / address)


def driver_of(root: Path, address: str) -> str | None:
    """The driver the emulated device at ``address`` is bound to (None if unbound)."""
    link = root / "sys" / "bus" / "pci" / "devices" / address / "driver"
    return link.resolve().name if link.is_symlink() else None


def vf_links(root: Path, pf_address: str) -> dict[str, dict[str, object]]:
    """The VF settings :class:`KernelEmulator` recorded for a PF: index -> mac, vlan, spoofchk."""
    path = root / "sys" / "bus" / "pci" / "devices" / pf_address / ".vf_links.json"
    return json.loads(path.read_text()) if path.exists() else {}


class KernelEmulator:
    """What the kernel does after a write to sysfs (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.devices = root / "sys" / "bus" / "pci" / "devices"
        self.drivers = root / "sys" / "bus" / "pci" / "drivers"

    def react(self, path: Path, value: str) -> None:
        """Apply the kernel's reaction to ``value`` written at ``path``."""
        value = value.strip()
        if path.name == "unbind":
            link = self.devices / value / "driver"
            if link.is_symlink() and link.resolve().name == path.parent.name:
                link.unlink()
                (path.parent / value).unlink(missing_ok=True)
        elif path.name == "bind":
            self._bind(value, path.parent.name)
        elif path.name == "drivers_probe":
            override = (self.devices / value / "driver_override").read_text().strip()
            native = (self.devices / value / ".native_driver").read_text().strip()
            self._bind(value, override if override not in ("", "(null)") else native)
        elif path.name == "driver_override" and not value:
            path.write_text("(null)\n")
        elif path.name == "sriov_numvfs":
            self._set_vfs(path.parent, int(value or "0"))

    def set_vf_link(self, pf_address: str, index: int, mac: str, vlan: int) -> None:
        """What the PF's driver does with ``ip link set PF vf INDEX mac MAC vlan VLAN``."""
        folder = self.devices / pf_address
        if not (folder / f"virtfn{index}").is_symlink():
            raise OSError(errno.EINVAL, "Invalid argument")
        links = vf_links(self.root, pf_address)
        links[str(index)] = {"mac": mac, "vlan": vlan, "spoofchk": mac != "00:00:00:00:00:00"}
        (folder / ".vf_links.json").write_text(json.dumps(links))

    def _bind(self, address: str, driver: str) -> None:
        folder = self.devices / address
        override = (folder / "driver_override").read_text().strip()
        if (folder / "driver").is_symlink() or not (self.drivers / driver).is_dir():
            return
        if override not in ("", "(null)") and override != driver:
            raise OSError(errno.EINVAL, "driver_override names another driver")
        _link_driver(self.root, address, driver)

    def _set_vfs(self, pf: Path, count: int) -> None:
        current = [p for p in pf.glob("virtfn*")]
        if current and count:
            (pf / "sriov_numvfs").write_text(f"{len(current)}\n")
            raise OSError(errno.EBUSY, "Device or resource busy")
        for link in current:
            vf = link.resolve()
            driver = vf / "driver"
            if driver.is_symlink():
                (driver.resolve() / vf.name).unlink(missing_ok=True)
            group = (vf / "iommu_group").resolve()
            for entry in vf.iterdir():
                if entry.is_symlink() or entry.is_file():
                    entry.unlink()
            vf.rmdir()
            (group / "devices" / vf.name).unlink()
            (group / "devices").rmdir()
            group.rmdir()
            link.unlink()
        for index in range(count):
            address = vf_address(index)
            group = str(100 + index)
            folder = _add_device(self.root, address, "8086", VF_DEVICE, "0x020000", VF_DRIVER,
                                 group, {})
            os.symlink(pf, folder / "physfn")
            os.symlink(folder, pf / f"virtfn{index}")
        (pf / ".vf_links.json").unlink(missing_ok=True)  # VFs come back unconfigured
        (pf / "sriov_numvfs").write_text(f"{count}\n")
