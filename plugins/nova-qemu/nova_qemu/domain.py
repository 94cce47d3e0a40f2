"""The ``libvirt`` compute driver: the same VMs as the ``qemu`` driver, defined and run
through libvirt-python against a libvirtd (``qemu:///system`` unless ``uri`` says otherwise).

Each VM is a persistent domain named ``PROJECT.NAME`` whose XML carries Nova's metadata
(``<nova:instance>`` in :data:`NS`), so Nova never touches a domain it did not define and
``virsh list`` shows Nova's VMs beside the others. Disks, the cloud-init seed and the
serial log are the files :mod:`nova_qemu.vm` describes; the serial console is a unix
socket, so ``nova console`` works the same for both drivers.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import Field

from nova_core.drivers.models import (
    DriverOptions,
    InstanceSpec,
    Lifecycle,
    RenderedDetail,
    ResourceKind,
    ResourceStatus,
    SnapshotInfo,
    VmSpec,
)
from nova_core.errors import NovaError
from nova_core.names import home_digest
from nova_qemu.vm import OVMF_CODE, VmDriver, VmOptions, wants_cloud_init

NS = "https://nova.dev/xmlns/libvirt/instance/1"
EMULATOR = "/usr/bin/qemu-system-x86_64"
DEFAULT_URI = "qemu:///system"


class LibvirtOptions(VmOptions):
    """Keys the libvirt driver adds to ``[vm.NAME]``."""

    uri: str = Field(DEFAULT_URI, description="libvirt connection URI")


def domain_name(spec: InstanceSpec) -> str:
    """The domain's name in libvirt."""
    return f"{spec.ref.project}.{spec.ref.name}"


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise NovaError("driver = \"libvirt\" needs libvirt-python",
                        hint="pip install 'nova-qemu[libvirt]' (it builds against libvirt-dev)") \
            from None
    libvirt.registerErrorHandler(lambda *_: None, None)  # errors are exceptions, not stderr noise
    return libvirt


def _said(error: Exception) -> str:
    get = getattr(error, "get_error_message", None)
    return str(get() if get else error)


def _pci_address(parent: ET.Element, address: str, **extra: str) -> None:
    """``<address domain= bus= slot= function=/>`` for ``0000:01:00.0`` (plus ``extra``)."""
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    ET.SubElement(parent, "address", **extra, domain=f"0x{domain}", bus=f"0x{bus}",
                  slot=f"0x{slot}", function=f"0x{function}")


class LibvirtDriver(VmDriver):
    """Runs ``[vm.NAME]`` tables with ``driver = "libvirt"`` as libvirt domains."""

    instance_kinds: ClassVar[frozenset[ResourceKind]] = frozenset({ResourceKind.VM})
    options_model: ClassVar[type[DriverOptions]] = LibvirtOptions

    # -- connection ----------------------------------------------------------------------
    @contextmanager
    def _connect(self, spec: InstanceSpec) -> Iterator[Any]:
        libvirt = _libvirt()
        uri = getattr(spec.options, "uri", DEFAULT_URI)
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as error:
            raise NovaError(f"cannot reach libvirt at {uri}: {_said(error)}",
                            hint="start libvirtd (see docs/vms.md), or set uri in the VM's table") \
                from None
        try:
            yield conn
        except libvirt.libvirtError as error:
            raise NovaError(f"{spec.ref.key}: libvirt: {_said(error)}") from None
        finally:
            conn.close()

    def _domain(self, conn: Any, spec: InstanceSpec) -> Any | None:
        """Nova's domain for ``spec``; None when absent; an error when the name is taken."""
        libvirt = _libvirt()
        try:
            domain = conn.lookupByName(domain_name(spec))
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        try:
            mine = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS)
        except libvirt.libvirtError:
            mine = ""
        if f"<home>{home_digest(self.context.nova_home)}</home>" not in mine.replace(
                "nova:", ""):
            raise NovaError(f"libvirt already has a domain named {domain_name(spec)} that this "
                            "Nova did not define", hint="rename the VM, or undefine that domain")
        return domain

    # -- the domain XML --------------------------------------------------------------------
    def domain_xml(self, spec: VmSpec, accel: str, disks: list[dict[str, str]],
                   uuid: str | None = None) -> str:
        """The exact domain XML for ``spec`` (``nova plan`` shows it); ``uuid`` to redefine."""
        machine = getattr(spec.options, "machine", "q35")
        if machine == "microvm":
            raise NovaError(f"{spec.ref.key}: libvirt cannot run machine = \"microvm\"",
                            hint='use machine = "q35" or "pc", or driver = "qemu"')
        files = self.files(spec)
        ET.register_namespace("nova", NS)
        root = ET.Element("domain", type="kvm" if accel == "kvm" else "qemu")
        ET.SubElement(root, "name").text = domain_name(spec)
        if uuid:
            ET.SubElement(root, "uuid").text = uuid
        meta = ET.SubElement(ET.SubElement(root, "metadata"), f"{{{NS}}}instance")
        for key, value in (("project", spec.ref.project), ("name", spec.ref.name),
                           ("home", home_digest(self.context.nova_home))):
            ET.SubElement(meta, f"{{{NS}}}{key}").text = value
        memory = (spec.memory or 256 * 2**20) // 2**20
        ET.SubElement(root, "memory", unit="MiB").text = str(memory)
        ET.SubElement(root, "vcpu").text = str(int(spec.cpu or 1))
        os_ = ET.SubElement(root, "os")
        ET.SubElement(os_, "type", arch="x86_64", machine=machine).text = "hvm"
        if getattr(spec.options, "firmware", "bios") == "uefi":
            ET.SubElement(os_, "loader", readonly="yes", type="pflash").text = str(OVMF_CODE)
            ET.SubElement(os_, "nvram").text = str(files.root / "OVMF_VARS.fd")
        if spec.kernel:
            ET.SubElement(os_, "kernel").text = str(self.path(spec, spec.kernel))
            if spec.initrd:
                ET.SubElement(os_, "initrd").text = str(self.path(spec, spec.initrd))
            ET.SubElement(os_, "cmdline").text = spec.cmdline or "console=ttyS0"
        ET.SubElement(ET.SubElement(root, "features"), "acpi")
        ET.SubElement(root, "cpu", mode="host-passthrough" if accel == "kvm" else "maximum")
        for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"),
                              ("on_crash", "destroy")):
            ET.SubElement(root, event).text = action
        devices = ET.SubElement(root, "devices")
        ET.SubElement(devices, "emulator").text = EMULATOR
        targets = iter(f"vd{chr(ord('a') + i)}" for i in range(26))
        for disk in disks:
            element = ET.SubElement(devices, "disk", type="file", device="disk")
            if disk["format"] != "qcow2":
                element.set("snapshot", "no")  # internal snapshots live in qcow2 disks only
            ET.SubElement(element, "driver", name="qemu", type=disk["format"])
            ET.SubElement(element, "source", file=disk["path"])
            ET.SubElement(element, "target", dev=next(targets), bus="virtio")
        if wants_cloud_init(spec):
            element = ET.SubElement(devices, "disk", type="file", device="disk")
            ET.SubElement(element, "driver", name="qemu", type="raw")
            ET.SubElement(element, "source", file=str(files.root / "seed.iso"))
            ET.SubElement(element, "target", dev=next(targets), bus="virtio")
            ET.SubElement(element, "readonly")
        for attachment in spec.attachments:
            if attachment.endpoint == "tap":
                nic = ET.SubElement(devices, "interface", type="ethernet")
                ET.SubElement(nic, "mac", address=attachment.details["mac"])
                ET.SubElement(nic, "target", dev=attachment.details["tap"], managed="no")
                ET.SubElement(nic, "model", type="virtio")
            elif attachment.endpoint == "vf":  # an SR-IOV VF: libvirt sets MAC and VLAN too
                nic = ET.SubElement(devices, "interface", type="hostdev", managed="no")
                ET.SubElement(nic, "mac", address=attachment.details["mac"])
                _pci_address(ET.SubElement(nic, "source"), attachment.details["address"], type="pci")
                if attachment.details.get("vlan", "0") != "0":
                    ET.SubElement(ET.SubElement(nic, "vlan"), "tag", id=attachment.details["vlan"])
        if "user" in spec.networks:
            nic = ET.SubElement(devices, "interface", type="user")
            ET.SubElement(nic, "model", type="virtio")
        for address, options in self.passthrough(spec):  # reserved by nova-vfio
            hostdev = ET.SubElement(devices, "hostdev", mode="subsystem", type="pci", managed="no")
            _pci_address(ET.SubElement(hostdev, "source"), address)
            if "romfile" in options or options.get("rombar") == "off":
                rom = ET.SubElement(hostdev, "rom")
                if "romfile" in options:
                    rom.set("file", options["romfile"])
                if options.get("rombar") == "off":
                    rom.set("bar", "off")
        serial = ET.SubElement(devices, "serial", type="unix")
        ET.SubElement(serial, "source", mode="bind", path=str(files.console))
        ET.SubElement(serial, "log", file=str(files.serial_log), append="on")
        ET.SubElement(serial, "target", port="0")
        ET.SubElement(devices, "controller", type="usb", model="none")
        ET.SubElement(devices, "memballoon", model="none")
        ET.indent(root)
        return ET.tostring(root, encoding="unicode") + "\n"

    # -- contract ----------------------------------------------------------------------
    def render(self, spec: InstanceSpec) -> list[RenderedDetail]:
        """The domain XML it would define."""
        assert isinstance(spec, VmSpec)
        accel, note = self.planned_accel(spec)
        try:
            xml = self.domain_xml(spec, accel, self.planned_disks(spec))
        except NovaError as error:
            return [RenderedDetail(title="error", body=error.message)]
        notes = [RenderedDetail(title="accel", body=note)] if note else []
        notes += self.passthrough_note(spec)
        return [*notes, RenderedDetail(title="libvirt domain XML", body=xml, format="xml")]

    def create(self, spec: InstanceSpec) -> ResourceStatus:
        """Make the disks and seed, then define the domain (again, if it was undefined)."""
        assert isinstance(spec, VmSpec)
        self.domain_xml(spec, "tcg", self.planned_disks(spec))  # refuses what libvirt cannot run
        with self._connect(spec) as conn:
            if self._domain(conn, spec) is not None:
                return self.status(spec)
            fresh = not self.files(spec).exists()
            disks = self.prepare(spec)
            try:
                accel = self.choose_accel(getattr(spec.options, "accel", "auto"))
                conn.defineXML(self.domain_xml(spec, accel, disks))
            except BaseException:
                if fresh:
                    self.remove_files(spec)
                raise
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED)

    def start(self, spec: InstanceSpec) -> ResourceStatus:
        """Start the domain; libvirt runs QEMU and keeps it running without Nova."""
        files = self.files(spec)
        with self._connect(spec) as conn:
            domain = self._domain(conn, spec)
            if domain is None:
                raise NovaError(f"{spec.ref.key} is not defined in libvirt", hint="nova up creates it")
            if not domain.isActive():
                assert isinstance(spec, VmSpec)
                accel = self.choose_accel(getattr(spec.options, "accel", "auto"))
                domain = conn.defineXML(self.domain_xml(spec, accel, files.disks(),
                                                        domain.UUIDString()))  # disks may move
                files.run.mkdir(parents=True, exist_ok=True)
                files.run.chmod(0o700)
                files.console.unlink(missing_ok=True)
                try:
                    domain.create()
                except _libvirt().libvirtError as error:
                    files.cleanup_run()
                    raise NovaError(f"{spec.ref.key}: libvirt could not start it: {_said(error)}",
                                    hint="nova plan shows the domain XML") from None
        return self.status(spec)

    def stop(self, spec: InstanceSpec, timeout: float) -> ResourceStatus:
        """ACPI shutdown, then destroy after ``timeout``."""
        libvirt = _libvirt()
        with self._connect(spec) as conn:
            domain = self._domain(conn, spec)
            if domain is not None and domain.isActive():
                if timeout > 0:
                    try:
                        if domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                            domain.resume()
                        domain.shutdown()
                    except libvirt.libvirtError:
                        pass
                    deadline = time.monotonic() + timeout
                    while domain.isActive() and time.monotonic() < deadline:
                        time.sleep(0.05)
                if domain.isActive():
                    try:
                        domain.destroy()
                    except libvirt.libvirtError:
                        if domain.isActive():
                            raise
        self.files(spec).cleanup_run()
        return self.status(spec)

    def delete(self, spec: InstanceSpec) -> None:
        """Destroy and undefine the domain (with its snapshots), then remove the files."""
        libvirt = _libvirt()
        with self._connect(spec) as conn:
            domain = self._domain(conn, spec)
            if domain is not None:
                if domain.isActive():
                    domain.destroy()
                domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                     | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                                     | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        self.remove_files(spec)

    def status(self, spec: InstanceSpec) -> ResourceStatus:
        """The domain's state as libvirt reports it."""
        libvirt = _libvirt()
        with self._connect(spec) as conn:
            domain = self._domain(conn, spec)
            if domain is None:
                return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
            state, reason = domain.state()
        if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED,
                     libvirt.VIR_DOMAIN_SHUTDOWN):
            return ResourceStatus(ref=spec.ref, state=Lifecycle.RUNNING,
                                  data={"domain": domain_name(spec)})
        if state in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
            return ResourceStatus(ref=spec.ref, state=Lifecycle.PAUSED,
                                  data={"domain": domain_name(spec)})
        if state == libvirt.VIR_DOMAIN_CRASHED:
            return ResourceStatus(ref=spec.ref, state=Lifecycle.FAILED, detail="the guest crashed")
        detail = {libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "QEMU crashed",
                  libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "QEMU failed to start",
                  libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "the guest shut down",
                  libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: ""}.get(reason, "")
        return ResourceStatus(ref=spec.ref, state=Lifecycle.STOPPED, detail=detail)

    def _active(self, conn: Any, spec: InstanceSpec) -> Any:
        domain = self._domain(conn, spec)
        if domain is None or not domain.isActive():
            raise self.not_running(spec)
        return domain

    def pause(self, spec: InstanceSpec) -> ResourceStatus:
        """Freeze the guest's CPUs."""
        with self._connect(spec) as conn:
            self._active(conn, spec).suspend()
        return self.status(spec)

    def resume(self, spec: InstanceSpec) -> ResourceStatus:
        """Let a paused guest run again."""
        with self._connect(spec) as conn:
            self._active(conn, spec).resume()
        return self.status(spec)

    # -- snapshots: libvirt's own (internal, in the qcow2 disks) -------------------------------
    def _defined(self, conn: Any, spec: InstanceSpec) -> Any:
        domain = self._domain(conn, spec)
        if domain is None:
            raise NovaError(f"{spec.ref.key} does not exist")
        return domain

    def snapshot(self, spec: InstanceSpec, name: str) -> SnapshotInfo:
        """Disk and memory of a running VM; disks of a stopped one."""
        self.qcow2_disks(spec)
        body = ET.Element("domainsnapshot")
        ET.SubElement(body, "name").text = name
        with self._connect(spec) as conn:
            domain = self._defined(conn, spec)
            memory = bool(domain.isActive())
            domain.snapshotCreateXML(ET.tostring(body, encoding="unicode"), 0)
        return SnapshotInfo(ref=spec.ref, name=name, created_at=datetime.now(UTC), memory=memory,
                            detail="disk and memory" if memory else "disk only")

    def _snapshot(self, conn: Any, spec: InstanceSpec, name: str) -> Any | None:
        domain = self._domain(conn, spec)
        if domain is None or name not in domain.snapshotListNames():
            return None
        return domain.snapshotLookupByName(name)

    def restore_snapshot(self, spec: InstanceSpec, name: str) -> ResourceStatus:
        """Revert to the snapshot (a running one comes back running, memory and all)."""
        with self._connect(spec) as conn:
            snap = self._snapshot(conn, spec, name)
            if snap is None:
                raise NovaError(f"{spec.ref.key} has no snapshot {name}")
            files = self.files(spec)
            files.run.mkdir(parents=True, exist_ok=True)  # a running snapshot starts QEMU
            snap.getDomain().revertToSnapshot(snap, 0)
        status = self.status(spec)
        if status.state is Lifecycle.STOPPED:
            files.cleanup_run()
        return status

    def delete_snapshot(self, spec: InstanceSpec, name: str) -> None:
        """Remove the snapshot (fine if it is gone)."""
        with self._connect(spec) as conn:
            snap = self._snapshot(conn, spec, name)
            if snap is not None:
                snap.delete(0)


__all__ = ["LibvirtDriver", "LibvirtOptions", "domain_name"]
