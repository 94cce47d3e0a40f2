"""The ``sriov`` network driver: ``[network.X] sriov = "enp6s0"`` gives each VM a VF.

A VM on such a network gets a free virtual function of the physical function that
drives ``enp6s0`` instead of a tap: the VF goes to vfio-pci for the VM (through the same
ledger as ``devices = ["vf:..."]``, so one VF has one holder), and its MAC address
(stable per VM), VLAN (``vlan``, optional) and spoof check are set on the PF, so the guest
is on the PF's LAN with that MAC, confined to that VLAN. Addresses come from the LAN
(its DHCP server), not from Nova; there is no NAT, so ``ports`` make no sense here.

```
NOVA_HOME/drivers/sriov/PROJECT/NAME.json   the network: PF interface and address, VLAN
NOVA_HOME/drivers/vfio/devices.json         VF -> holder, original driver, network, MAC
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from nova_core.drivers.base import DriverContext
from nova_core.drivers.models import (
    DriverOptions,
    InstanceSpec,
    Lifecycle,
    NetworkAttachment,
    NetworkSpec,
    RenderedDetail,
    ResourceKind,
    ResourceSpec,
    ResourceStatus,
)
from nova_core.drivers.network import NetworkDriver
from nova_core.errors import NovaError
from nova_core.files import replace_file
from nova_core.names import mac_address
from nova_vfio.driver import SriovDriver
from nova_vfio.netlink import NO_MAC
from nova_vfio.sysfs import PciDevice

#: NovaFile keys of a network that an SR-IOV network cannot honour (the LAN decides them).
LAN_KEYS = ("subnet", "gateway", "dns", "mtu", "interfaces")


class SriovNetworkOptions(DriverOptions):
    """Keys the sriov network driver adds to ``[network.NAME]``."""

    sriov: str = Field(min_length=1, description="the physical function's network interface")
    vlan: int = Field(0, ge=0, le=4094, description="802.1Q VLAN the VFs are confined to (0: none)")


class SriovNetworkDriver(NetworkDriver):
    """VMs on the network get an SR-IOV VF of the ``sriov`` interface instead of a tap."""

    options_model: ClassVar[type[DriverOptions]] = SriovNetworkOptions

    def __init__(self, name: str, context: DriverContext, root: Path | None = None) -> None:
        super().__init__(name, context)
        self.vfs = SriovDriver("sriov", context, root)

    # -- helpers -------------------------------------------------------------------
    def _path(self, spec: NetworkSpec) -> Path:
        return self.context.nova_home / "drivers" / "sriov" / spec.ref.project / f"{spec.ref.name}.json"

    @staticmethod
    def _key(spec: NetworkSpec) -> str:
        return f"{spec.ref.project}/{spec.ref.name}"

    def _options(self, spec: NetworkSpec) -> SriovNetworkOptions:
        options = spec.options
        assert isinstance(options, SriovNetworkOptions)
        return options

    def _check(self, spec: NetworkSpec) -> PciDevice:
        """The PF, once the spec asks for nothing the LAN decides; or a clear error."""
        asked = [key for key in LAN_KEYS if getattr(spec, key)]
        if asked:
            raise NovaError(f"network {spec.ref.name}: {', '.join(asked)} cannot be set on an "
                            "SR-IOV network: its VMs are on the LAN of the physical function, "
                            "which gives their addresses", hint="remove those keys, or use a "
                            "bridge network with interfaces = [...] for a Nova-managed subnet")
        interface = self._options(spec).sriov
        pf = self.vfs.physical_function(interface)
        if not pf.vfs:
            raise NovaError(f"network {spec.ref.name}: {interface} ({pf.address}) has no VFs",
                            hint=f"nova device vfs {pf.address} --count N (it supports up to "
                                 f"{pf.sriov_total})")
        return pf

    def _held(self, spec: NetworkSpec) -> dict[str, dict[str, str | None]]:
        """Ledger entries of the VFs this network handed out: address -> entry."""
        key = self._key(spec)
        return {a: e for a, e in self.vfs.ledger.read().items() if e.get("network") == key}

    def _free(self, pf: PciDevice) -> list[PciDevice]:
        held = self.vfs.ledger.read()
        devices = [self.vfs.host.device(a) for a in pf.vfs if a not in held]
        return [d for d in devices if self.vfs.host.host_use(d) is None]

    # -- contract ------------------------------------------------------------------
    def render(self, spec: ResourceSpec) -> list[RenderedDetail]:
        """Which PF serves the VMs, how many VFs are free, the VLAN (reads sysfs only)."""
        assert isinstance(spec, NetworkSpec)
        try:
            pf = self._check(spec)
        except NovaError as error:
            return [RenderedDetail(title="error", body=error.message)]
        options = self._options(spec)
        return [RenderedDetail(title="SR-IOV", body=(
            f"VMs get a VF of {options.sriov} ({pf.address}, {pf.vendor} {pf.name}): "
            f"{len(self._free(pf))} of {len(pf.vfs)} free; MAC set on the PF per VM, "
            + (f"VLAN {options.vlan}" if options.vlan else "no VLAN")
            + ", spoof check on; addresses from the LAN"))]

    def create(self, spec: NetworkSpec) -> ResourceStatus:
        """Check the PF and its VFs, and record the network (nothing changes on the host)."""
        pf = self._check(spec)
        path = self._path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, json.dumps({"interface": self._options(spec).sriov, "pf": pf.address,
                                       "vlan": self._options(spec).vlan}))
        return self.status(spec)

    def delete(self, spec: NetworkSpec) -> None:
        """Give back any VF still handed out (a crash) and forget the network."""
        for address, entry in self._held(spec).items():
            self._release(address, entry)
        self._path(spec).unlink(missing_ok=True)

    def status(self, spec: NetworkSpec) -> ResourceStatus:
        """Created while recorded; failed when its PF or VFs went away."""
        path = self._path(spec)
        if not path.exists():
            return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
        recorded = json.loads(path.read_text())
        data = {"pf": recorded["pf"], "interface": recorded["interface"]}
        try:
            pf = self.vfs.physical_function(recorded["interface"])
        except NovaError as error:
            return ResourceStatus(ref=spec.ref, state=Lifecycle.FAILED, detail=error.message,
                                  data=data)
        data["vfs"] = f"{len(self._free(pf))} free of {len(pf.vfs)}"
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED, data=data)

    def attach(self, spec: NetworkSpec, instance: InstanceSpec) -> NetworkAttachment:
        """Bind a free VF to vfio-pci for the VM and set its MAC and VLAN on the PF."""
        name = spec.ref.name
        if instance.ref.kind is not ResourceKind.VM:
            raise NovaError(f"{instance.ref.key}: network {name} gives VMs SR-IOV virtual "
                            "functions; a capsule cannot join it",
                            hint="attach the capsule to a bridge network")
        if instance.ports:
            raise NovaError(f"{instance.ref.key}: ports cannot be published on SR-IOV network "
                            f"{name}: the VM is on the LAN itself, reachable at its own address",
                            hint="remove ports (or attach the VM to a bridge network too)")
        pf = self._check(spec)
        options = self._options(spec)
        holder = str(instance.ref)
        mine = [a for a, e in self._held(spec).items() if e.get("holder") == holder]
        if mine:  # attached before a crash: keep that VF
            vf = self.vfs.host.device(mine[0])
        else:
            free = self._free(pf)
            if not free:
                users = sorted({str(e.get("holder")) for a, e in self.vfs.ledger.read().items()
                                if a in pf.vfs})
                raise NovaError(f"{instance.ref.key}: every VF of {options.sriov} is in use"
                                + (f" (by {', '.join(users)})" if users else ""),
                                hint=f"nova device vfs {pf.address} --count N makes more (up to "
                                     f"{pf.sriov_total})")
            vf = free[0]
        index = pf.vfs.index(vf.address)
        mac = mac_address(str(self.context.nova_home), instance.ref.project, instance.ref.name, name)
        note = {"network": self._key(spec), "pf": pf.address, "vf": str(index), "mac": mac,
                "vlan": str(options.vlan)}
        self.vfs.take([vf], holder, self.context.force, note)
        try:
            self.vfs.host.set_vf_link(pf, index, mac, options.vlan)
        except BaseException:
            self._release(vf.address, {"pf": pf.address, "vf": str(index)})
            raise
        return NetworkAttachment(network=name, driver=self.name, instance=instance.ref,
                                 endpoint="vf", mac=mac,
                                 details={"address": vf.address, "mac": mac, "pf": pf.address,
                                          "interface": options.sriov, "vf": str(index),
                                          "vlan": str(options.vlan)})

    def _release(self, address: str, entry: dict[str, str | None]) -> None:
        """Clear the VF's MAC and VLAN on its PF and give it back to its driver."""
        try:
            pf = self.vfs.host.device(str(entry.get("pf")))
            self.vfs.host.set_vf_link(pf, int(str(entry.get("vf"))), NO_MAC, 0)
        except (NovaError, ValueError):
            pass  # the PF or its VFs are gone: nothing left to clear
        self.vfs.give_back([address])

    def detach(self, spec: NetworkSpec, attachment: NetworkAttachment) -> None:
        """Give back the VF the instance holds on this network (also for a pending one)."""
        holder = str(attachment.instance)
        for address, entry in self._held(spec).items():
            if entry.get("holder") == holder:
                self._release(address, entry)

    def inspect(self, spec: NetworkSpec) -> dict[str, object]:
        """The VFs handed out: address, VF index, holder, MAC, VLAN."""
        return {"vfs": [{"address": a, "vf": e.get("vf"), "holder": e.get("holder"),
                         "mac": e.get("mac"), "vlan": e.get("vlan")}
                        for a, e in sorted(self._held(spec).items())]}


__all__ = ["SriovNetworkDriver", "SriovNetworkOptions"]
