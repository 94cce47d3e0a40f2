"""The ``qemu`` compute driver: QEMU run directly, controlled over QMP, no daemon.

```
NOVA_HOME/drivers/qemu/vms/PROJECT/NAME/
  vm.json        what was created: disks (path, format, node name), accel
  root.qcow2     the image's linked clone (qemu-img create -b IMAGE -F FORMAT)
  serial.log     everything the guest wrote on its serial console
/run/nova-qemu-HASH/VMID/
  qemu.pid  qmp.sock  console.sock     (short paths: unix sockets are limited to 107 bytes)
```

QEMU is started with ``-daemonize``, so it outlives ``nova``; a later ``nova`` adopts
it through its pidfile and QMP socket. The serial console is a socket (for ``nova
console``) whose output QEMU also appends to serial.log (``nova logs``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from nova_core.drivers.compute import ComputeDriver
from nova_core.drivers.models import (
    DriverOptions,
    InstanceSpec,
    Lifecycle,
    LogLine,
    LogRequest,
    RenderedDetail,
    ResourceKind,
    ResourceStatus,
    SnapshotInfo,
    VmSpec,
)
from nova_core.errors import NovaError
from nova_core.names import home_digest
from nova_qemu.qmp import Qmp, QmpError

QEMU = "qemu-system-x86_64"
MACHINES = {"q35": "q35", "pc": "pc", "microvm": "microvm"}
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")


class QemuOptions(DriverOptions):
    """Keys the qemu driver adds to ``[vm.NAME]``."""

    machine: Literal["q35", "pc", "microvm"] = "q35"
    accel: Literal["auto", "kvm", "tcg"] = Field(
        "auto", description="auto: KVM when a real boot probe passes, otherwise TCG")
    firmware: Literal["bios", "uefi"] = "bios"


def run_root(nova_home: Path) -> Path:
    """Per-NOVA_HOME folder on /run for pidfiles and sockets."""
    return Path("/run") / f"nova-qemu-{home_digest(nova_home)}"


def vm_id(project: str, name: str) -> str:
    """A short, unique folder name per (project, name)."""
    digest = hashlib.sha256("\0".join((project, name)).encode()).hexdigest()[:8]
    return f"{name[:32]}-{digest}"


class VmFiles:
    """The files of one VM."""

    def __init__(self, nova_home: Path, project: str, name: str) -> None:
        self.root = nova_home / "drivers" / "qemu" / "vms" / project / name
        self.run = run_root(nova_home) / vm_id(project, name)
        self.meta = self.root / "vm.json"
        self.serial_log = self.root / "serial.log"
        self.pidfile = self.run / "qemu.pid"
        self.qmp = self.run / "qmp.sock"
        self.console = self.run / "console.sock"

    def exists(self) -> bool:
        """True once created."""
        return self.meta.exists()

    def read(self) -> dict[str, object]:
        """The recorded metadata."""
        return json.loads(self.meta.read_text())

    def pid(self) -> int | None:
        """The running QEMU's PID (checked against its command line), or None."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.qmp).encode() in cmdline else None


class QemuDriver(ComputeDriver):
    """Runs ``[vm.NAME]`` tables with QEMU."""

    instance_kinds: ClassVar[frozenset[ResourceKind]] = frozenset({ResourceKind.VM})
    options_model: ClassVar[type[DriverOptions]] = QemuOptions

    def files(self, spec: InstanceSpec) -> VmFiles:
        """The VM's files."""
        return VmFiles(self.context.nova_home, spec.ref.project, spec.ref.name)

    # -- accelerator -------------------------------------------------------------------
    def _choose_accel(self, wanted: str) -> str:
        if wanted == "tcg":
            return "tcg"
        cache = self.context.nova_home / "drivers" / "qemu" / "kvm.json"
        if cache.exists():
            verdict = json.loads(cache.read_text())
        else:
            from nova_qemu.kvm_probe import probe_kvm

            self.context.progress("probing whether KVM runs guests on this host (once)")
            found = probe_kvm()
            verdict = {"usable": found.usable, "reason": found.reason}
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(verdict))
        if verdict["usable"]:
            return "kvm"
        if wanted == "kvm":
            raise NovaError(f"accel = \"kvm\" but KVM does not run guests here: {verdict['reason']}",
                            hint='use accel = "auto" or "tcg"')
        self.context.progress(f"KVM is not usable ({verdict['reason']}); using TCG")
        return "tcg"

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
            argv += ["-kernel", str(self._path(spec, spec.kernel))]
            if spec.initrd:
                argv += ["-initrd", str(self._path(spec, spec.initrd))]
            argv += ["-append", spec.cmdline or "console=ttyS0"]
        blk = "virtio-blk-device" if machine == "microvm" else "virtio-blk-pci"
        for disk in disks:
            node = disk["node"]
            argv += ["-blockdev", f"driver=file,filename={disk['path']},node-name={node}-file",
                     "-blockdev", f"driver={disk['format']},file={node}-file,node-name={node}",
                     "-device", f"{blk},drive={node}"]
        if _wants_cloud_init(spec):  # the NoCloud seed: a read-only disk labelled cidata
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
        if "user" in spec.networks:
            argv += ["-netdev", f"user,id=net{index}", "-device", f"{net},netdev=net{index}"]
        if spec.gpu_passthrough or spec.devices:
            raise NovaError(f"{spec.ref.key}: PCI passthrough needs nova-vfio, which is not built yet",
                            hint="remove gpu_passthrough and devices for now")
        return argv

    def _path(self, spec: VmSpec, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (spec.base_dir / path).resolve()

    def _planned_disks(self, spec: VmSpec) -> list[dict[str, str]]:
        files = self.files(spec)
        disks = []
        if spec.image:
            disks.append({"node": "disk0", "path": str(files.root / "root.qcow2"),
                          "format": "qcow2", "base": str(self._path(spec, spec.image))})
        for index, disk in enumerate(spec.disks, start=len(disks)):
            disks.append({"node": f"disk{index}", "path": str(self._path(spec, disk.path)),
                          "format": disk.format, "size": str(disk.size or "")})
        return disks

    # -- contract ----------------------------------------------------------------------
    def render(self, spec: InstanceSpec) -> list[RenderedDetail]:
        """The QEMU command line it would run."""
        assert isinstance(spec, VmSpec)
        wanted = getattr(spec.options, "accel", "auto")
        cache = self.context.nova_home / "drivers" / "qemu" / "kvm.json"
        if wanted != "auto":
            accel = wanted
        elif cache.exists():
            accel = "kvm" if json.loads(cache.read_text())["usable"] else "tcg"
        else:
            accel = "tcg"
        try:
            argv = self.argv(spec, accel, self._planned_disks(spec))
        except NovaError as error:
            return [RenderedDetail(title="error", body=error.message)]
        body = " \\\n  ".join(argv)
        note = [] if wanted != "auto" or cache.exists() else [RenderedDetail(
            title="accel", body="auto: KVM is probed on the first start; TCG is shown")]
        return [*note, RenderedDetail(title="QEMU command line", body=body, format="argv")]

    def create(self, spec: InstanceSpec) -> ResourceStatus:
        """Check the inputs, make the linked clone and missing disks, record the VM."""
        assert isinstance(spec, VmSpec)
        files = self.files(spec)
        if files.exists():
            return self.status(spec)
        if shutil.which(QEMU) is None:
            raise NovaError(f"{QEMU} is not installed", hint="apt-get install qemu-system-x86")
        for label, value in (("kernel", spec.kernel), ("initrd", spec.initrd),
                             ("image", spec.image)):
            if value and not self._path(spec, value).is_file():
                raise NovaError(f"{spec.ref.key}: {label} {self._path(spec, value)} does not exist",
                                hint="fix the path")
        if not spec.image and not spec.kernel:
            raise NovaError(f"{spec.ref.key} has nothing to boot",
                            hint='give image = "disk.qcow2" or kernel = "vmlinuz"')
        if getattr(spec.options, "firmware", "bios") == "uefi" and not OVMF_CODE.exists():
            raise NovaError("firmware = \"uefi\" needs OVMF", hint="apt-get install ovmf")
        disks = self._planned_disks(spec)
        made: list[Path] = []
        files.root.mkdir(parents=True, exist_ok=True)
        try:
            for disk in disks:
                path = Path(disk["path"])
                if path.exists():
                    continue
                if disk.get("base"):
                    base_format = _image_format(Path(disk["base"]))
                    command = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", disk["base"],
                               "-F", base_format, str(path)]
                elif disk.get("size"):
                    command = ["qemu-img", "create", "-q", "-f", disk["format"], str(path),
                               disk["size"]]
                else:
                    raise NovaError(f"{spec.ref.key}: disk {path} does not exist and has no size",
                                    hint="give it a size to have it created")
                _qemu_img(command)
                made.append(path)
            if getattr(spec.options, "firmware", "bios") == "uefi":
                shutil.copyfile(OVMF_VARS, files.root / "OVMF_VARS.fd")
            if _wants_cloud_init(spec):
                write_seed(files.root / "seed.iso", *cloud_init_texts(spec))
            tmp = files.meta.with_suffix(".tmp")
            tmp.write_text(json.dumps({"disks": disks}, indent=1))
            os.replace(tmp, files.meta)
        except BaseException:
            for path in made:
                path.unlink(missing_ok=True)
            shutil.rmtree(files.root, ignore_errors=True)
            raise
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED)

    def _disks(self, files: VmFiles) -> list[dict[str, str]]:
        return list(files.read()["disks"])  # type: ignore[arg-type]

    def start(self, spec: InstanceSpec) -> ResourceStatus:
        """Start QEMU detached; wait until QMP answers."""
        assert isinstance(spec, VmSpec)
        files = self.files(spec)
        if not files.exists():
            raise NovaError(f"{spec.ref.key} does not exist", hint="nova up creates it")
        if files.pid() is not None:
            return self.status(spec)
        accel = self._choose_accel(getattr(spec.options, "accel", "auto"))  # the probe is cached
        argv = self.argv(spec, accel, self._disks(files))
        files.run.mkdir(parents=True, exist_ok=True)
        os.chmod(files.run, 0o700)
        for stale in (files.qmp, files.console, files.pidfile):
            stale.unlink(missing_ok=True)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            self._cleanup_run(files)
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

    def _cleanup_run(self, files: VmFiles) -> None:
        shutil.rmtree(files.run, ignore_errors=True)
        try:
            files.run.parent.rmdir()
        except OSError:
            pass

    def _force_off(self, files: VmFiles) -> None:
        pid = files.pid()
        if pid is not None:
            try:
                with Qmp(files.qmp, timeout=2) as qmp:
                    qmp.execute("quit")
            except (NovaError, OSError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)
        self._cleanup_run(files)

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
                _wait_gone(pid, timeout)
            self._force_off(files)
        else:
            self._cleanup_run(files)
        return self.status(spec)

    def delete(self, spec: InstanceSpec) -> None:
        """Stop QEMU and remove the VM's files (its linked clone; never the base image)."""
        files = self.files(spec)
        self._force_off(files)
        if files.exists():
            for disk in self._disks(files):
                if Path(disk["path"]).is_relative_to(files.root):
                    Path(disk["path"]).unlink(missing_ok=True)
        shutil.rmtree(files.root, ignore_errors=True)
        try:
            files.root.parent.rmdir()
        except OSError:
            pass

    def status(self, spec: InstanceSpec) -> ResourceStatus:
        """Adopts a running QEMU through its pidfile and QMP socket."""
        files = self.files(spec)
        if not files.exists():
            return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
        pid = files.pid()
        if pid is None:
            return ResourceStatus(ref=spec.ref, state=Lifecycle.STOPPED)
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
            raise NovaError(f"{spec.ref.key} is not running", hint=f"nova run vm {spec.ref.name}")
        return files.qmp

    # -- snapshots ------------------------------------------------------------------------
    def _qcow2_nodes(self, files: VmFiles) -> list[dict[str, str]]:
        return [d for d in self._disks(files) if d["format"] == "qcow2"]

    def snapshot(self, spec: InstanceSpec, name: str) -> SnapshotInfo:
        """Disk and memory of a running VM (QMP snapshot-save); disks of a stopped one."""
        files = self.files(spec)
        if not files.exists():
            raise NovaError(f"{spec.ref.key} does not exist")
        disks = self._qcow2_nodes(files)
        if not disks:
            raise NovaError(f"{spec.ref.key} has no qcow2 disk to hold a snapshot",
                            hint='give it a disk: disks = [{ path = "data.qcow2", size = "1Gi" }]')
        memory = files.pid() is not None
        if memory:
            with Qmp(files.qmp) as qmp:
                qmp.run_job("snapshot-save", f"save-{name}", tag=name, vmstate=disks[0]["node"],
                            devices=[d["node"] for d in disks])
        else:
            for disk in disks:
                _qemu_img(["qemu-img", "snapshot", "-c", name, disk["path"]])
        return SnapshotInfo(ref=spec.ref, name=name, created_at=datetime.now(UTC), memory=memory,
                            detail="disk and memory" if memory else "disk only")

    def _has_snapshot(self, files: VmFiles, name: str) -> bool:
        disks = self._qcow2_nodes(files)
        if not disks:
            return False
        done = subprocess.run(["qemu-img", "snapshot", "-l", "-U", disks[0]["path"]],
                              capture_output=True, text=True)
        return any(line.split()[1:2] == [name] for line in done.stdout.splitlines()[2:])

    def restore_snapshot(self, spec: InstanceSpec, name: str) -> ResourceStatus:
        """Back to the snapshot: live (memory too) when running, else on the disks."""
        files = self.files(spec)
        if not files.exists() or not self._has_snapshot(files, name):
            raise NovaError(f"{spec.ref.key} has no snapshot {name}")
        disks = self._qcow2_nodes(files)
        if files.pid() is not None:
            with Qmp(files.qmp) as qmp:
                qmp.run_job("snapshot-load", f"load-{name}", tag=name, vmstate=disks[0]["node"],
                            devices=[d["node"] for d in disks])
                if qmp.execute("query-status")["status"] != "running":
                    qmp.execute("cont")
        else:
            for disk in disks:
                _qemu_img(["qemu-img", "snapshot", "-a", name, disk["path"]])
        return self.status(spec)

    def delete_snapshot(self, spec: InstanceSpec, name: str) -> None:
        """Remove the snapshot (fine if it is gone)."""
        files = self.files(spec)
        if not files.exists() or not self._has_snapshot(files, name):
            return
        disks = self._qcow2_nodes(files)
        if files.pid() is not None:
            with Qmp(files.qmp) as qmp:
                qmp.run_job("snapshot-delete", f"delete-{name}", tag=name,
                            devices=[d["node"] for d in disks])
        else:
            for disk in disks:
                _qemu_img(["qemu-img", "snapshot", "-d", name, disk["path"]])

    def logs(self, spec: InstanceSpec, request: LogRequest) -> Iterator[LogLine]:
        """The serial console's output, as QEMU logged it."""
        path = self.files(spec).serial_log
        if not path.exists():
            return
        text = path.read_bytes().decode(errors="replace").replace("\r", "")
        lines = [line for line in text.split("\n") if line.strip()]
        if request.tail is not None:
            lines = lines[-request.tail:] if request.tail else []
        for line in lines:
            yield LogLine(stream="stdout", text=line)


def _wants_cloud_init(spec: VmSpec) -> bool:
    return bool(spec.user_data or spec.meta_data or spec.ssh_authorized_keys)


def _text_or_file(spec: VmSpec, value: str) -> str:
    """A cloud-init field: the file it names (relative to the NovaFile), else the text."""
    if "\n" not in value and len(value) < 4096:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else spec.base_dir / path
        if path.is_file():
            return path.read_text()
    return value


def cloud_init_texts(spec: VmSpec) -> tuple[str, str]:
    """(user-data, meta-data) of the NoCloud seed for ``spec``."""
    meta = (f"instance-id: nova-{spec.ref.project}-{spec.ref.name}\n"
            f"local-hostname: {spec.ref.name}\n")
    if spec.meta_data:
        meta = _text_or_file(spec, spec.meta_data)
    user = _text_or_file(spec, spec.user_data) if spec.user_data else "#cloud-config\n"
    if spec.ssh_authorized_keys:
        if not user.startswith("#cloud-config"):
            raise NovaError(f"{spec.ref.key}: ssh_authorized_keys goes into a #cloud-config "
                            "user_data, but this user_data is something else (a script?)",
                            hint="put the keys under ssh_authorized_keys: in your #cloud-config")
        if "\nssh_authorized_keys:" in "\n" + user:
            raise NovaError(f"{spec.ref.key}: both user_data and ssh_authorized_keys list keys",
                            hint="keep them in one place")
        keys = "".join(f"  - {json.dumps(key)}\n" for key in spec.ssh_authorized_keys)
        user = user.rstrip("\n") + "\nssh_authorized_keys:\n" + keys
    return user, meta


def write_seed(target: Path, user_data: str, meta_data: str) -> None:
    """An ISO 9660 image with volume id ``cidata`` holding user-data and meta-data."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nova-seed-") as folder:
        (Path(folder) / "user-data").write_text(user_data)
        (Path(folder) / "meta-data").write_text(meta_data)
        try:
            done = subprocess.run(["genisoimage", "-quiet", "-output", str(target), "-volid",
                                   "cidata", "-joliet", "-rock", folder], capture_output=True,
                                  text=True)
        except FileNotFoundError:
            raise NovaError("cloud-init seeds need genisoimage", hint="apt-get install genisoimage") \
                from None
    if done.returncode != 0:
        target.unlink(missing_ok=True)
        raise NovaError(f"could not write the cloud-init seed: {done.stderr.strip()}")


def _image_format(path: Path) -> str:
    done = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise NovaError(f"{path} is not a disk image QEMU reads: {done.stderr.strip()}")
    return str(json.loads(done.stdout)["format"])


def _qemu_img(command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise NovaError("qemu-img is not installed", hint="apt-get install qemu-utils") from None
    if done.returncode != 0:
        raise NovaError(f"{' '.join(command[:2])} failed: {done.stderr.strip()}")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            if state == "Z":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.02)
    return False


__all__ = ["QemuDriver", "QemuOptions", "QmpError"]
