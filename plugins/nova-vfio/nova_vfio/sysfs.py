"""PCI devices as sysfs shows them, and the writes that move them between drivers.

Everything is read under ``root`` (``/`` on a real host; a synthetic tree in tests, see
:mod:`nova_vfio.testing`):

```
ROOT/sys/bus/pci/devices/0000:01:00.0/
    vendor device class          0x10de / 0x2204 / 0x030000
    driver -> ../../../bus/pci/drivers/nvidia        (absent when unbound)
    iommu_group -> ../../../kernel/iommu_groups/13
    driver_override              "(null)" or a driver name
    boot_vga                     1 for the GPU the firmware used for the console
    sriov_totalvfs sriov_numvfs  SR-IOV physical functions only
    virtfn0 -> ../0000:03:02.0   a PF's VFs; a VF has physfn -> ../0000:03:00.0
    net/enp6s0/                  network interfaces the function drives
ROOT/sys/bus/pci/drivers/NAME/{bind,unbind}   ROOT/sys/bus/pci/drivers_probe
ROOT/sys/kernel/iommu_groups/N/devices/ADDR
ROOT/usr/share/misc/pci.ids (or usr/share/hwdata/pci.ids): vendor and device names
ROOT/proc/net/route: which interface carries the default route
```
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from nova_core.errors import NovaError

ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
SHORT_ADDRESS = re.compile(r"^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
CLASS_NAMES = {0x01: "storage", 0x02: "network", 0x03: "display", 0x04: "multimedia",
               0x06: "bridge", 0x0C: "serial bus"}
VFIO = "vfio-pci"


def normalise(address: str) -> str:
    """``01:00.0`` -> ``0000:01:00.0``; a clear error for anything else."""
    value = address.strip().lower()
    if SHORT_ADDRESS.match(value):
        value = "0000:" + value
    if not ADDRESS.match(value):
        raise NovaError(f"'{address}' is not a PCI address",
                        hint="write it like 0000:01:00.0 (nova device ls lists them)")
    return value


@dataclass
class PciDevice:
    """One PCI function."""

    address: str
    vendor_id: str
    device_id: str
    class_code: int
    vendor: str
    name: str
    driver: str | None
    group: str | None
    boot_vga: bool = False
    sriov_total: int | None = None
    sriov_current: int | None = None
    physfn: str | None = None
    vfs: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)

    @property
    def slot(self) -> str:
        """Domain, bus and device: the functions of one card share it."""
        return self.address.rsplit(".", 1)[0]

    @property
    def is_gpu(self) -> bool:
        """Display controllers (class 0x03)."""
        return self.class_code >> 16 == 0x03

    @property
    def is_bridge(self) -> bool:
        """PCI bridges (class 0x06): they may share a group without being handed over."""
        return self.class_code >> 16 == 0x06

    @property
    def class_name(self) -> str:
        """A word for the class."""
        return CLASS_NAMES.get(self.class_code >> 16, f"class {self.class_code >> 8:04x}")

    def as_json(self) -> dict[str, object]:
        """JSON-ready, with the derived fields."""
        return {**asdict(self), "class": f"0x{self.class_code:06x}", "class_name": self.class_name,
                "is_gpu": self.is_gpu}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class PciHost:
    """The PCI devices under ``root`` and the sysfs writes that rebind them."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root
        self.sys = root / "sys"
        self.devices_dir = self.sys / "bus" / "pci" / "devices"
        self.drivers_dir = self.sys / "bus" / "pci" / "drivers"

    # -- reading -------------------------------------------------------------------------
    @cached_property
    def _names(self) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
        vendors: dict[str, str] = {}
        devices: dict[tuple[str, str], str] = {}
        for candidate in ("usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids"):
            path = self.root / candidate
            if not path.is_file():
                continue
            vendor = None
            for line in path.read_text(errors="replace").splitlines():
                if not line or line.startswith("#"):
                    continue
                if line.startswith("C "):
                    break  # the class list follows the vendors
                if not line.startswith("\t"):
                    vendor, _, label = line.partition("  ")
                    vendors[vendor] = label.strip()
                elif not line.startswith("\t\t") and vendor:
                    dev, _, label = line.strip().partition("  ")
                    devices[(vendor, dev)] = label.strip()
            break
        return vendors, devices

    def device(self, address: str) -> PciDevice:
        """One device, or a clear error."""
        address = normalise(address)
        folder = self.devices_dir / address
        if not folder.exists():
            raise NovaError(f"no PCI device {address} on this host", hint="nova device ls lists them")
        vendor_id = (_read(folder / "vendor") or "0x0000")[2:]
        device_id = (_read(folder / "device") or "0x0000")[2:]
        vendors, names = self._names
        driver_link = folder / "driver"
        group_link = folder / "iommu_group"
        total = _read(folder / "sriov_totalvfs")
        current = _read(folder / "sriov_numvfs")
        physfn = folder / "physfn"
        vfs = sorted((int(p.name[6:]), p.resolve().name) for p in folder.glob("virtfn*"))
        return PciDevice(
            address=address, vendor_id=vendor_id, device_id=device_id,
            class_code=int(_read(folder / "class") or "0", 16),
            vendor=vendors.get(vendor_id, f"vendor {vendor_id}"),
            name=names.get((vendor_id, device_id), f"device {device_id}"),
            driver=driver_link.resolve().name if driver_link.exists() else None,
            group=group_link.resolve().name if group_link.exists() else None,
            boot_vga=_read(folder / "boot_vga") == "1",
            sriov_total=int(total) if total else None,
            sriov_current=int(current) if current else None,
            physfn=physfn.resolve().name if physfn.exists() else None,
            vfs=[name for _, name in vfs],
            interfaces=sorted(p.name for p in (folder / "net").iterdir())
            if (folder / "net").is_dir() else [])

    def devices(self) -> list[PciDevice]:
        """Every PCI function, by address."""
        if not self.devices_dir.is_dir():
            return []
        return [self.device(p.name) for p in sorted(self.devices_dir.iterdir())
                if ADDRESS.match(p.name)]

    def group_members(self, device: PciDevice) -> list[PciDevice]:
        """Every function in ``device``'s IOMMU group (itself included)."""
        if device.group is None:
            return [device]
        folder = self.sys / "kernel" / "iommu_groups" / device.group / "devices"
        return [self.device(p.name) for p in sorted(folder.iterdir())] if folder.is_dir() else [device]

    def companions(self, device: PciDevice) -> list[PciDevice]:
        """The other functions of the same card (a GPU's HDMI/DP audio, USB-C controller)."""
        return [d for d in self.devices() if d.slot == device.slot and d.address != device.address]

    def strangers(self, device: PciDevice) -> list[str]:
        """Addresses in ``device``'s group that are neither its card's functions nor bridges."""
        if device.is_bridge:
            return []
        return [m.address for m in self.group_members(device)
                if m.slot != device.slot and not m.is_bridge]

    def isolated(self, device: PciDevice) -> bool:
        """True when its group holds only its own card's functions and bridges."""
        return not self.strangers(device)

    def iommu_groups(self) -> int:
        """How many IOMMU groups the kernel made (0: no IOMMU)."""
        folder = self.sys / "kernel" / "iommu_groups"
        return len(list(folder.iterdir())) if folder.is_dir() else 0

    def default_route_interfaces(self) -> set[str]:
        """Interfaces that carry an IPv4 default route."""
        text = _read(self.root / "proc" / "net" / "route") or ""
        found = set()
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "00000000":
                found.add(fields[0])
        return found

    def endpoints(self, device: PciDevice) -> list[PciDevice]:
        """What must move to vfio-pci together: the group's members except bridges."""
        return [m for m in self.group_members(device) if not m.is_bridge]

    def host_use(self, device: PciDevice) -> str | None:
        """Why taking ``device`` from the host would hurt it, or None."""
        if device.boot_vga and device.driver not in (None, VFIO):
            return f"{device.address} drives the host's console (boot_vga)"
        routed = set(device.interfaces) & self.default_route_interfaces()
        if routed and device.driver not in (None, VFIO):
            return (f"{device.address} carries the host's default route "
                    f"({', '.join(sorted(routed))})")
        return None

    # -- writing ---------------------------------------------------------------------------
    @cached_property
    def _emulator(self) -> object | None:
        """The test fixture's kernel emulation, for a synthetic tree only (never for /)."""
        if self.root == Path("/") or not (self.root / ".nova-emulated-kernel").exists():
            return None
        from nova_vfio.testing import KernelEmulator

        return KernelEmulator(self.root)

    def _write(self, path: Path, value: str) -> None:
        try:
            path.write_text(value)
            if self._emulator is not None:
                self._emulator.react(path, value)  # type: ignore[attr-defined]
        except OSError as error:
            raise NovaError(f"could not write {value.strip() or 'an empty line'} to {path}: "
                            f"{error.strerror}", hint="run as root") from None

    def ensure_vfio(self) -> None:
        """Load vfio-pci when its driver folder is missing (real hosts only)."""
        if (self.drivers_dir / VFIO).exists():
            return
        if self.root == Path("/"):
            subprocess.run(["modprobe", VFIO], capture_output=True)
        if not (self.drivers_dir / VFIO).exists():
            raise NovaError("the vfio-pci driver is not available",
                            hint="modprobe vfio-pci (and boot with the IOMMU enabled)")

    def rebind(self, device: PciDevice, target: str | None) -> None:
        """Move ``device`` to driver ``target`` (None: whatever the kernel picks, or none).

        The kernel's way: driver_override, unbind from the current driver, then probe.
        """
        folder = self.devices_dir / device.address
        self._write(folder / "driver_override", f"{target or ''}\n")
        if device.driver is not None and device.driver != target:
            self._write(self.drivers_dir / device.driver / "unbind", device.address)
        current = self.device(device.address).driver
        if target is None or current != target:
            self._write(self.sys / "bus" / "pci" / "drivers_probe", device.address)

    def bind_original(self, device: PciDevice, original: str | None) -> None:
        """Give ``device`` back to ``original`` (None: leave it unbound)."""
        folder = self.devices_dir / device.address
        self._write(folder / "driver_override", "\n")
        if device.driver is not None:
            self._write(self.drivers_dir / device.driver / "unbind", device.address)
        if original is not None:
            bind = self.drivers_dir / original / "bind"
            if bind.exists():
                self._write(bind, device.address)
            else:
                self._write(self.sys / "bus" / "pci" / "drivers_probe", device.address)

    def set_vf_link(self, pf: PciDevice, index: int, mac: str, vlan: int) -> None:
        """Set VF ``index``'s MAC and VLAN (0: none) through ``pf``'s network interface."""
        if not pf.interfaces:
            raise NovaError(f"{pf.address} drives no network interface, so its VFs cannot be "
                            "configured", hint="bind it to its network driver again")
        if self._emulator is not None:
            try:
                self._emulator.set_vf_link(pf.address, index, mac, vlan)  # type: ignore[attr-defined]
            except OSError as error:
                raise NovaError(f"{pf.interfaces[0]} did not accept the settings of its VF "
                                f"{index}: {error.strerror}") from None
            return
        from nova_vfio.netlink import set_vf

        set_vf(pf.interfaces[0], index, mac, vlan)

    def set_vfs(self, device: PciDevice, count: int) -> None:
        """Create ``count`` VFs on physical function ``device`` (0 removes them)."""
        if device.sriov_total is None:
            raise NovaError(f"{device.address} is not SR-IOV capable (no sriov_totalvfs)")
        if not 0 <= count <= device.sriov_total:
            raise NovaError(f"{device.address} supports 0 to {device.sriov_total} VFs, not {count}")
        folder = self.devices_dir / device.address
        if device.sriov_current:  # the kernel refuses to change a non-zero count directly
            self._write(folder / "sriov_numvfs", "0")
        if count:
            self._write(folder / "sriov_numvfs", str(count))
