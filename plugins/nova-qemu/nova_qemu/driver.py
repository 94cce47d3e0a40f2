from __future__ import annotations

import os
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

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
from nova_qemu.qmp import Qmp, QmpError
from nova_qemu.vm import (
    OVMF_CODE,
    QEMU,
    VmDriver,
    VmFiles,
    VmOptions,
    qemu_img,
    wait_gone,
    wants_cloud_init,
)

MACHINES = {"q35": "q35", "pc": "pc", "microvm": "microvm"}


class QemuOptions(VmOptions):
    """Keys the qemu driver adds to ``[vm.NAME]`` (the shared ones: machine, accel, firmware)."""


class QemuDriver(VmDriver):
    """Runs ``[vm.NAME]`` tables with QEMU."""

    instance_kinds: ClassVar[frozenset[ResourceKind]] = frozenset({ResourceKind.VM})
    options_model: ClassVar[type[DriverOptions]] = QemuOptions

    # -- the command line --------------------------------------------------------------
    def argv(self, spec: VmSpec, accel: str, disks: list[dict[str, str]],
             qemu: str = QEMU) -> list[str]:
        """The exact QEMU command line for ``spec`` (``nova plan`` shows it)."""
        options = spec.options
        machine = getattr(options, "machine", "q35")
        files = self.files(spec)
        memory = (spec.memory or 256 * 2**20) // 2**20
        argv = [qemu, "-name", f"{spec.ref.project}.{spec.ref.name}", "-nodefaults",
                "-no-user-config", "-machine", MACHINES[machine], "-accel", accel,
                "-cpu", "host" if accel == "kvm" else "max", "-smp", str(int(spec.cpu or 1)),
                "-m", f"{memory}M", "-display", "none", "-daemonize",
                "-pidfile", str(files.pidfile), "-qmp", f"unix:{files.qmp},server=on,wait=off",
                "-chardev", f"socket,id=console,path={files.console},server=on,wait=off,"
                            f"logfile={files.serial_log},logappend=on",
                "-serial", "chardev:console"]
        if getattr(options, "firmware", "bios") == "uefi":
            argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,file={files.root / 'OVMF_VARS.fd'}"]
        if spec.kernel:
            argv += ["-kernel", str(self.path(spec, spec.kernel))]
            if spec.initrd:
                argv += ["-initrd", str(self.path(spec, spec.initrd))]
            argv += ["-append", spec.cmdline or "console=ttyS0"]
        blk = "virtio-blk-device" if machine == "microvm" else "virtio-blk-pci"
        for disk in disks:
            node = disk["node"]
            argv += ["-blockdev", f"driver=file,filename={disk['path']},node-name={node}-file",
                     "-blockdev", f"driver={disk['format']},file={node}-file,node-name={node}",
                     "-device", f"{blk},drive={node}"]
        if wants_cloud_init(spec):  # the NoCloud seed: a read-only disk labelled cidata
            seed = files.root / "seed.iso"
            argv += ["-blockdev", f"driver=file,filename={seed},node-name=seed-file,read-only=on",
                     "-blockdev", "driver=raw,file=seed-file,node-name=seed,read-only=on",
                     "-device", f"{blk},drive=seed"]
        net = "virtio-net-device" if machine == "microvm" else "virtio-net-pci"
        index = 0
        for attachment in spec.attachments:
            if attachment.endpoint == "tap":
                argv += ["-netdev", f"tap,id=net{index},ifname={attachment.details['tap']},"
                                    "script=no,downscript=no",
                         "-device", f"{net},netdev=net{index},mac={attachment.details['mac']}"]
                index += 1
            elif attachment.endpoint == "vf":  # an SR-IOV VF; its MAC is set on the PF
                argv += ["-device", f"vfio-pci,host={attachment.details['address']}"]
        if "user" in spec.networks:
            argv += ["-netdev", f"user,id=net{index}", "-device", f"{net},netdev=net{index}"]
        for address, options in self.passthrough(spec):  # reserved by nova-vfio
            extra = "".join(f",{key}={value}" for key, value in options.items())
            argv += ["-device", f"vfio-pci,host={address}{extra}"]
        return argv

    # -- contract ----------------------------------------------------------------------
    def render(self, spec: InstanceSpec) -> list[RenderedDetail]:
        """The QEMU command line it would run."""
        assert isinstance(spec, VmSpec)
        accel, note = self.planned_accel(spec)
        try:
            argv = self.argv(spec, accel, self.planned_disks(spec))
        except NovaError as error:
            return [RenderedDetail(title="error", body=error.message)]
        body = " \\\n  ".join(argv)
        notes = [RenderedDetail(title="accel", body=note)] if note else []
        notes += self.passthrough_note(spec)
        return [*notes, RenderedDetail(title="QEMU command line", body=body, format="argv")]

    def create(self, spec: InstanceSpec) -> ResourceStatus:
        """Check the inputs, make the linked clone and missing disks, record the VM."""
        assert isinstance(spec, VmSpec)
        if self.files(spec).exists():
            return self.status(spec)
        self.prepare(spec)
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED)

    def start(self, spec: InstanceSpec) -> ResourceStatus:
        """Start QEMU detached; wait until QMP answers."""
        assert isinstance(spec, VmSpec)
        files = self.files(spec)
        if not files.exists():
            raise NovaError(f"{spec.ref.key} does not exist", hint="nova up creates it")
        if files.pid() is not None:
            return self.status(spec)
        accel = self.choose_accel(getattr(spec.options, "accel", "auto"))  # the probe is cached
        argv = self.argv(spec, accel, files.disks())
        files.run.mkdir(parents=True, exist_ok=True)
        os.chmod(files.run, 0o700)
        for stale in (files.qmp, files.console, files.pidfile):
            stale.unlink(missing_ok=True)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            files.cleanup_run()
            said = done.stderr.strip().splitlines()
            raise NovaError(f"{spec.ref.key}: QEMU did not start: {said[-1] if said else 'no message'}",
                            hint="nova plan shows the command line")
        try:
            with Qmp(files.qmp):
                pass
        except NovaError:
            self._force_off(files)
            raise
        return self.status(spec)

    def _force_off(self, files: VmFiles) -> None:
        pid = files.pid()
        if pid is not None:
            try:
                with Qmp(files.qmp, timeout=2) as qmp:
                    qmp.execute("quit")
            except (NovaError, OSError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10)
        files.cleanup_run()

    def stop(self, spec: InstanceSpec, timeout: float) -> ResourceStatus:
        """ACPI power button, then ``quit`` after ``timeout``."""
        files = self.files(spec)
        pid = files.pid()
        if pid is not None:
            if timeout > 0:
                try:
                    with Qmp(files.qmp, timeout=5) as qmp:
                        status = qmp.execute("query-status")["status"]
                        if status == "paused":
                            qmp.execute("cont")
                        qmp.execute("system_powerdown")
                except NovaError:
                    pass
                wait_gone(pid, timeout)
            self._force_off(files)
        else:
            files.cleanup_run()
        return self.status(spec)

    def delete(self, spec: InstanceSpec) -> None:
        """Stop QEMU and remove the VM's files (its linked clone; never the base image)."""
        self._force_off(self.files(spec))
        self.remove_files(spec)

    def status(self, spec: InstanceSpec) -> ResourceStatus:
        """Adopts a running QEMU through its pidfile and QMP socket."""
        files = self.files(spec)
        pid = files.pid()
        if pid is None:
            return self.stopped_status(spec)
        try:
            with Qmp(files.qmp, timeout=3) as qmp:
                status = qmp.execute("query-status")["status"]
        except NovaError as error:
            return ResourceStatus(ref=spec.ref, state=Lifecycle.FAILED, detail=error.message,
                                  data={"pid": str(pid)})
        state = {"running": Lifecycle.RUNNING, "paused": Lifecycle.PAUSED,
                 "suspended": Lifecycle.PAUSED}.get(status, Lifecycle.RUNNING)
        return ResourceStatus(ref=spec.ref, state=state, data={"pid": str(pid)},
                              detail="" if status == "running" else status)

    def pause(self, spec: InstanceSpec) -> ResourceStatus:
        """Freeze the guest's CPUs."""
        with Qmp(self._running_qmp(spec)) as qmp:
            qmp.execute("stop")
        return self.status(spec)

    def resume(self, spec: InstanceSpec) -> ResourceStatus:
        """Let a paused guest run again."""
        with Qmp(self._running_qmp(spec)) as qmp:
            qmp.execute("cont")
        return self.status(spec)

    def _running_qmp(self, spec: InstanceSpec) -> Path:
        files = self.files(spec)
        if files.pid() is None:
            raise self.not_running(spec)
        return files.qmp

    # -- snapshots ------------------------------------------------------------------------
    def snapshot(self, spec: InstanceSpec, name: str) -> SnapshotInfo:
        """Disk and memory of a running VM (QMP snapshot-save); disks of a stopped one."""
        files = self.files(spec)
        disks = self.qcow2_disks(spec)
        memory = files.pid() is not None
        if memory:
            with Qmp(files.qmp) as qmp:
                qmp.run_job("snapshot-save", f"save-{name}", tag=name, vmstate=disks[0]["node"],
                            devices=[d["node"] for d in disks])
        else:
            for disk in disks:
                qemu_img(["qemu-img", "snapshot", "-c", name, disk["path"]])
        return SnapshotInfo(ref=spec.ref, name=name, created_at=datetime.now(UTC), memory=memory,
                            detail="disk and memory" if memory else "disk only")

    def _has_snapshot(self, spec: InstanceSpec, name: str) -> bool:
        if not self.files(spec).exists():
            return False
        disks = self.qcow2_disks(spec)
        done = subprocess.run(["qemu-img", "snapshot", "-l", "-U", disks[0]["path"]],
                              capture_output=True, text=True)
        return any(line.split()[1:2] == [name] for line in done.stdout.splitlines()[2:])

    def restore_snapshot(self, spec: InstanceSpec, name: str) -> ResourceStatus:
        """Back to the snapshot: live (memory too) when running, else on the disks."""
        files = self.files(spec)
        if not self._has_snapshot(spec, name):
            raise NovaError(f"{spec.ref.key} has no snapshot {name}")
        disks = self.qcow2_disks(spec)
        if files.pid() is not None:
            with Qmp(files.qmp) as qmp:
                qmp.run_job("snapshot-load", f"load-{name}", tag=name, vmstate=disks[0]["node"],
                            devices=[d["node"] for d in disks])
                if qmp.execute("query-status")["status"] != "running":
                    qmp.execute("cont")
        else:
            for disk in disks:
                qemu_img(["qemu-img", "snapshot", "-a", name, disk["path"]])
        return self.status(spec)

    def delete_snapshot(self, spec: InstanceSpec, name: str) -> None:
        """Remove the snapshot (fine if it is gone)."""
        files = self.files(spec)
        if not self._has_snapshot(spec, name):
            return
        disks = self.qcow2_disks(spec)
        if files.pid() is not None:
            with Qmp(files.qmp) as qmp:
                qmp.run_job("snapshot-delete", f"delete-{name}", tag=name,
                            devices=[d["node"] for d in disks])
        else:
            for disk in disks:
                qemu_img(["qemu-img", "snapshot", "-d", name, disk["path"]])


__all__ = ["QemuDriver", "QemuOptions", "QmpError"]
