"""The ``vfio`` and ``sriov`` device drivers: host PCI devices handed to VMs.

A device goes to a VM together with every endpoint of its IOMMU group (the kernel can
only isolate whole groups); each is moved to vfio-pci through ``driver_override`` +
unbind + probe, and its original driver is recorded in a ledger so that release (or
removing the VM) gives it back.

```
NOVA_HOME/drivers/vfio/devices.json   address -> {holder, original driver}
```

``devices`` entries may carry QEMU vfio-pci options after the address:
``"0000:01:00.0,x-vga=on,romfile=/srv/gpu.rom"``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nova_core.drivers.base import DriverContext
from nova_core.drivers.device import DeviceDriver
from nova_core.drivers.models import (
    DeviceAssignment,
    DeviceClaim,
    DeviceInfo,
    RenderedDetail,
    ResourceRef,
    ResourceSpec,
)
from nova_core.errors import NovaError
from nova_core.files import replace_file
from nova_vfio.sysfs import VFIO, PciDevice, PciHost, normalise

MANUAL = "(bound by hand)"
OPTIONS = {"x-vga", "romfile", "rombar", "multifunction"}


def sysfs_root() -> Path:
    """``/``, or the synthetic tree NOVA_SYSFS_ROOT names (tests)."""
    return Path(os.environ.get("NOVA_SYSFS_ROOT", "/"))


class Ledger:
    """Who holds which device, and the driver it had before (one flock)."""

    def __init__(self, nova_home: Path) -> None:
        self.path = nova_home / "drivers" / "vfio" / "devices.json"

    def read(self) -> dict[str, dict[str, str | None]]:
        """The entries, without locking."""
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    @contextmanager
    def edit(self) -> Iterator[dict[str, dict[str, str | None]]]:
        """The entries, locked; written back when the block ends without error."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self.read()
            yield entries
            replace_file(self.path, json.dumps(entries, indent=1, sort_keys=True))


def parse_entry(entry: str) -> tuple[str, dict[str, str]]:
    """``ADDR[,key=value...]`` -> (address, vfio-pci options)."""
    address, *rest = entry.split(",")
    options = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key not in OPTIONS:
            raise NovaError(f"'{item}' in devices entry '{entry}' is not a vfio-pci option",
                            hint=f"options: {', '.join(sorted(OPTIONS))} (as key=value)")
        options[key] = value
    return normalise(address), options


class PassthroughBase(DeviceDriver):
    """What both drivers share: the host's devices, the ledger, binding and release."""

    def __init__(self, name: str, context: DriverContext, root: Path | None = None) -> None:
        super().__init__(name, context)
        self.host = PciHost(root or sysfs_root())
        self.ledger = Ledger(context.nova_home)

    def render(self, spec: ResourceSpec) -> list[RenderedDetail]:
        """Devices are chosen when the VM is created; nothing to show before."""
        return []

    def physical_function(self, interface: str) -> PciDevice:
        """The SR-IOV capable PCI function driving network interface ``interface``."""
        pfs = [d for d in self.host.devices() if interface in d.interfaces]
        if not pfs:
            raise NovaError(f"no PCI network interface named {interface}",
                            hint="nova device ls shows which devices drive which interfaces")
        if pfs[0].sriov_total is None:
            raise NovaError(f"{interface} ({pfs[0].address}) is not SR-IOV capable")
        return pfs[0]

    def list_devices(self) -> list[DeviceInfo]:
        """Every PCI function, with its holder."""
        held = self.ledger.read()
        return [DeviceInfo(address=d.address, description=f"{d.vendor} {d.name}",
                           driver=d.driver, group=d.group, is_gpu=d.is_gpu,
                           reserved_by=(held.get(d.address) or {}).get("holder"))
                for d in self.host.devices()]

    def take(self, devices: list[PciDevice], holder: str, force: bool,
             note: dict[str, str] | None = None) -> None:
        """Move ``devices`` and their groups' endpoints to vfio-pci for ``holder``.

        ``note``: more fields for their ledger entries (the network a VF serves, say).
        """
        with self.ledger.edit() as held:
            moving: dict[str, PciDevice] = {}
            for device in devices:
                if self.host.iommu_groups() == 0 or device.group is None:
                    raise NovaError(f"{device.address} has no IOMMU group: passthrough needs the "
                                    "IOMMU", hint="boot with intel_iommu=on iommu=pt (Intel) or "
                                    "amd_iommu=on (AMD) and enable VT-d/AMD-Vi; nova doctor checks")
                for member in self.host.endpoints(device):
                    moving[member.address] = member
            for member in moving.values():
                owner = (held.get(member.address) or {}).get("holder")
                if owner not in (None, holder):
                    raise NovaError(f"{member.address} is held by {owner}",
                                    hint="stop and remove that VM first, or choose another device"
                                    if owner != MANUAL else f"nova device release {member.address}")
                why = self.host.host_use(member)
                if why and not force:
                    raise NovaError(f"refusing to take {member.address} from the host: {why}",
                                    hint="--force (nova up --force) if you mean it")
            self.host.ensure_vfio()
            done: list[tuple[PciDevice, str | None]] = []
            try:
                for member in moving.values():
                    if member.address in held:
                        continue  # already ours for this holder
                    original = member.driver if member.driver != VFIO else None
                    self.host.rebind(member, VFIO)
                    done.append((member, original))
                    held[member.address] = {"holder": holder, "original": original,
                                            **(note or {})}
            except BaseException:
                for member, original in reversed(done):
                    self.host.bind_original(self.host.device(member.address), original)
                    held.pop(member.address, None)
                raise

    def give_back(self, addresses: list[str]) -> None:
        """Return ``addresses`` to their original drivers and forget them."""
        with self.ledger.edit() as held:
            for address in addresses:
                entry = held.pop(address, None)
                if entry is None:
                    continue
                try:
                    device = self.host.device(address)
                except NovaError:
                    continue  # gone (a VF whose PF dropped its VFs)
                self.host.bind_original(device, entry.get("original"))

    def release(self, holder: ResourceRef) -> None:
        """Give back everything ``holder`` holds."""
        name = str(holder)
        self.give_back([a for a, e in self.ledger.read().items() if e.get("holder") == name])


class VfioDriver(PassthroughBase):
    """PCI functions by address, and ``gpu_passthrough = true``."""

    def _pick_gpu(self, holder: str) -> list[PciDevice]:
        held = self.ledger.read()
        reasons = []
        for gpu in (d for d in self.host.devices() if d.is_gpu):
            owner = (held.get(gpu.address) or {}).get("holder")
            if owner == holder:
                return [gpu, *self.host.companions(gpu)]
            if owner is not None:
                reasons.append(f"{gpu.address} is held by {owner}")
            elif why := self.host.host_use(gpu):
                reasons.append(f"{gpu.address}: {why}")
            elif others := self.host.strangers(gpu):
                reasons.append(f"{gpu.address} shares IOMMU group {gpu.group} with "
                               f"{', '.join(others)}")
            else:
                return [gpu, *self.host.companions(gpu)]
        raise NovaError("gpu_passthrough = true but no GPU can be passed through"
                        + (": " + "; ".join(reasons) if reasons else ": this host has none"),
                        hint="nova device ls --gpu shows GPUs and their groups")

    def reserve(self, claim: DeviceClaim) -> list[DeviceAssignment]:
        """Bind the asked devices (and a GPU with its companions) to vfio-pci for the VM."""
        holder = str(claim.holder)
        chosen: dict[str, tuple[PciDevice, dict[str, str]]] = {}
        for entry in claim.addresses:
            address, options = parse_entry(entry)
            device = self.host.device(address)
            others = self.host.strangers(device)
            if others and not self.context.force:
                raise NovaError(f"{address} shares IOMMU group {device.group} with "
                                f"{', '.join(others)}, which would be taken from the host too",
                                hint="pass those too, move the card to another slot, or "
                                     "enable ACS; --force takes the whole group")
            chosen[address] = (device, options)
        if claim.gpu:
            gpu, *companions = self._pick_gpu(holder)
            chosen.setdefault(gpu.address, (gpu, {}))
            for device in companions:
                chosen.setdefault(device.address, (device, {}))
        self.take([d for d, _ in chosen.values()], holder, self.context.force)
        assignments = []
        for address, (device, options) in chosen.items():
            if any(d.slot == device.slot and d.address != address for d, _ in chosen.values()) \
                    and address.endswith(".0"):
                options = {"multifunction": "on", **options}
            if device.is_gpu:
                options = {"gpu": "1", **options}
            assignments.append(DeviceAssignment(address=address, driver=self.name, kind="pci",
                                                options=options))
        return assignments


class SriovDriver(PassthroughBase):
    """SR-IOV virtual functions: ``devices = ["vf:enp6s0/2"]`` (interface / VF index)."""

    def _vf(self, entry: str) -> PciDevice:
        spec = entry.removeprefix("vf:")
        interface, sep, index = spec.partition("/")
        if not sep or not index.isdigit():
            raise NovaError(f"'{entry}' is not a VF: write vf:INTERFACE/INDEX, like vf:enp6s0/2")
        pf = self.physical_function(interface)
        if int(index) >= len(pf.vfs):
            raise NovaError(f"{interface} has {len(pf.vfs)} VFs, so there is no VF {index}",
                            hint=f"nova device vfs {pf.address} --count {int(index) + 1}")
        return self.host.device(pf.vfs[int(index)])

    def reserve(self, claim: DeviceClaim) -> list[DeviceAssignment]:
        """Bind each asked VF to vfio-pci for the VM."""
        vfs = [self._vf(entry) for entry in claim.addresses]
        self.take(vfs, str(claim.holder), self.context.force)
        return [DeviceAssignment(address=vf.address, driver=self.name, kind="vf",
                                 options={"pf": vf.physfn or ""}) for vf in vfs]


__all__ = ["Ledger", "SriovDriver", "VfioDriver", "parse_entry", "sysfs_root"]
