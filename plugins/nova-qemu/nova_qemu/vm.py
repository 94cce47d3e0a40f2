"""What the ``qemu`` and ``libvirt`` drivers share: a VM's files, its disks (linked clones
of an image or of another VM), its cloud-init seed, the accelerator choice, its serial log.

```
NOVA_HOME/drivers/DRIVER/vms/PROJECT/NAME/
  vm.json        what was created: disks (path, format, node name)
  root.qcow2     the image's linked clone (qemu-img create -b IMAGE -F FORMAT)
  seed.iso       the cloud-init NoCloud seed, when a cloud-init field is set
  OVMF_VARS.fd   the UEFI variable store, when firmware = "uefi"
  serial.log     everything the guest wrote on its serial console
/run/nova-qemu-HASH/VMID/
  console.sock (+ qemu.pid, qmp.sock for the qemu driver)   short paths: unix sockets
                                                            are limited to 107 bytes
```
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from nova_core.drivers.compute import ComputeDriver
from nova_core.drivers.models import (
    DriverOptions,
    InstanceSpec,
    Lifecycle,
    LogLine,
    LogRequest,
    RenderedDetail,
    ResourceStatus,
    VmSpec,
)
from nova_core.errors import NovaError
from nova_core.files import replace_file
from nova_core.names import home_digest
from nova_core.polling import Backoff

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")


class VmOptions(DriverOptions):
    """Keys both VM drivers add to ``[vm.NAME]``."""

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


def vms_root(nova_home: Path, driver: str) -> Path:
    """Where ``driver`` keeps its VMs' folders."""
    return nova_home / "drivers" / driver / "vms"


class VmFiles:
    """The files of one VM."""

    def __init__(self, nova_home: Path, project: str, name: str, driver: str = "qemu") -> None:
        self.root = vms_root(nova_home, driver) / project / name
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

    def disks(self) -> list[dict[str, str]]:
        """The recorded disks."""
        return list(self.read()["disks"])  # type: ignore[call-overload]

    def pid(self) -> int | None:
        """The running QEMU's PID (checked against its command line), or None."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.qmp).encode() in cmdline else None

    def cleanup_run(self) -> None:
        """Remove the VM's folder on /run (and the per-home one when it is empty)."""
        shutil.rmtree(self.run, ignore_errors=True)
        try:
            self.run.parent.rmdir()
        except OSError:
            pass


class VmDriver(ComputeDriver):
    """The part of a VM driver that does not depend on how QEMU is run."""

    def files(self, spec: InstanceSpec) -> VmFiles:
        """The VM's files."""
        return VmFiles(self.context.nova_home, spec.ref.project, spec.ref.name, self.name)

    # -- accelerator -------------------------------------------------------------------
    def _kvm_cache(self) -> Path:
        return self.context.nova_home / "drivers" / "qemu" / "kvm.json"

    def choose_accel(self, wanted: str) -> str:
        """``kvm`` or ``tcg`` for a VM that asks for ``wanted`` (the probe runs once per home)."""
        if wanted == "tcg":
            return "tcg"
        cache = self._kvm_cache()
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

    def planned_accel(self, spec: VmSpec) -> tuple[str, str | None]:
        """The accelerator ``nova plan`` shows (no probe runs), and a note when it guessed."""
        wanted = getattr(spec.options, "accel", "auto")
        if wanted != "auto":
            return wanted, None
        cache = self._kvm_cache()
        if cache.exists():
            return ("kvm" if json.loads(cache.read_text())["usable"] else "tcg"), None
        return "tcg", "auto: KVM is probed on the first start; TCG is shown"

    # -- inputs --------------------------------------------------------------------------
    def path(self, spec: VmSpec, value: str) -> Path:
        """A path from the NovaFile, relative to its folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (spec.base_dir / path).resolve()

    def base_image(self, spec: VmSpec) -> Path | None:
        """The file ``image`` names: a path, or an image in Nova's store (None: no image)."""
        if not spec.image:
            return None
        from nova_qemu.images import is_image_name, vm_image_store

        if is_image_name(spec.image):
            return vm_image_store(self.context.nova_home).path_of(spec.image)
        return self.path(spec, spec.image)

    def planned_disks(self, spec: VmSpec) -> list[dict[str, str]]:
        """Every disk the VM gets, in order: root (a linked clone), then ``disks``."""
        files = self.files(spec)
        disks = []
        root = {"node": "disk0", "path": str(files.root / "root.qcow2"), "format": "qcow2"}
        if spec.clone:  # the source's root disk is frozen when this VM is created
            disks.append({**root, "base": "", "clone": spec.clone})
        elif spec.image:
            try:
                base = str(self.base_image(spec))
            except NovaError:
                base = spec.image  # nova plan shows the name; create says what is wrong
            disks.append({**root, "base": base})
        for index, disk in enumerate(spec.disks, start=len(disks)):
            disks.append({"node": f"disk{index}", "path": str(self.path(spec, disk.path)),
                          "format": disk.format, "size": str(disk.size or "")})
        return disks

    @staticmethod
    def passthrough(spec: VmSpec) -> list[tuple[str, dict[str, str]]]:
        """(host PCI address, vfio-pci options) of each device nova-vfio reserved for the VM."""
        keep = ("x-vga", "romfile", "rombar", "multifunction")
        return [(d.address, {k: v for k, v in d.options.items() if k in keep})
                for d in spec.assigned_devices if d.kind in ("pci", "vf")]

    @staticmethod
    def passthrough_note(spec: VmSpec) -> list[RenderedDetail]:
        """For ``nova plan``: devices are chosen when the VM is created."""
        if (spec.gpu_passthrough or spec.devices) and not spec.assigned_devices:
            asked = [*(["a GPU (gpu_passthrough)"] if spec.gpu_passthrough else []), *spec.devices]
            return [RenderedDetail(title="passthrough", body="reserved and bound to vfio-pci by "
                                   f"nova-vfio when the VM is created: {', '.join(asked)}")]
        return []

    def check_inputs(self, spec: VmSpec) -> None:
        """Every file the VM needs exists; it has something to boot."""
        if shutil.which(QEMU) is None:
            raise NovaError(f"{QEMU} is not installed", hint="apt-get install qemu-system-x86")
        for label, value in (("kernel", spec.kernel), ("initrd", spec.initrd)):
            if value and not self.path(spec, value).is_file():
                raise NovaError(f"{spec.ref.key}: {label} {self.path(spec, value)} does not exist",
                                hint="fix the path")
        base = self.base_image(spec)
        if base is not None and not base.is_file():
            raise NovaError(f"{spec.ref.key}: image {base} does not exist",
                            hint="fix the path, or nova image import FILE NAME and use the name")
        if base is None and not spec.kernel and not spec.clone:
            raise NovaError(f"{spec.ref.key} has nothing to boot",
                            hint='give image = "disk.qcow2" or kernel = "vmlinuz"')
        if getattr(spec.options, "firmware", "bios") == "uefi" and not OVMF_CODE.exists():
            raise NovaError("firmware = \"uefi\" needs OVMF", hint="apt-get install ovmf")

    # -- creating the files ----------------------------------------------------------------
    def prepare(self, spec: VmSpec) -> list[dict[str, str]]:
        """Make the linked clone, missing disks, firmware vars and seed; record them.

        On failure nothing the call made is left behind."""
        files = self.files(spec)
        if files.exists():
            return files.disks()
        self.check_inputs(spec)
        disks = self.planned_disks(spec)
        made: list[Path] = []
        files.root.mkdir(parents=True, exist_ok=True)
        try:
            for disk in disks:
                path = Path(disk["path"])
                if path.exists():
                    continue
                if disk.get("clone"):
                    from nova_qemu.clones import freeze

                    disk["base"] = str(freeze(self.context.nova_home, spec.ref.project,
                                              disk["clone"]))
                if disk.get("base"):
                    base_format = image_format(Path(disk["base"]))
                    command = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", disk["base"],
                               "-F", base_format, str(path)]
                elif disk.get("size"):
                    command = ["qemu-img", "create", "-q", "-f", disk["format"], str(path),
                               disk["size"]]
                else:
                    raise NovaError(f"{spec.ref.key}: disk {path} does not exist and has no size",
                                    hint="give it a size to have it created")
                qemu_img(command)
                made.append(path)
            if getattr(spec.options, "firmware", "bios") == "uefi":
                shutil.copyfile(OVMF_VARS, files.root / "OVMF_VARS.fd")
            if wants_cloud_init(spec):
                write_seed(files.root / "seed.iso", *cloud_init_texts(spec))
            replace_file(files.meta, json.dumps({"disks": disks}, indent=1))
        except BaseException:
            for path in made:
                path.unlink(missing_ok=True)
            shutil.rmtree(files.root, ignore_errors=True)
            raise
        return disks

    def remove_files(self, spec: InstanceSpec) -> None:
        """Remove the VM's folder (its linked clone; never a base image or a disk outside)."""
        files = self.files(spec)
        files.cleanup_run()
        if files.exists():
            for disk in files.disks():
                if Path(disk["path"]).is_relative_to(files.root):
                    Path(disk["path"]).unlink(missing_ok=True)
        shutil.rmtree(files.root, ignore_errors=True)
        try:
            files.root.parent.rmdir()
        except OSError:
            pass
        from nova_qemu.clones import forget_unused_bases

        forget_unused_bases(self.context.nova_home)

    def qcow2_disks(self, spec: InstanceSpec) -> list[dict[str, str]]:
        """The disks that can hold internal snapshots, or a clear error when there are none."""
        files = self.files(spec)
        if not files.exists():
            raise NovaError(f"{spec.ref.key} does not exist")
        disks = [d for d in files.disks() if d["format"] == "qcow2"]
        if not disks:
            raise NovaError(f"{spec.ref.key} has no qcow2 disk to hold a snapshot",
                            hint='give it a disk: disks = [{ path = "data.qcow2", size = "1Gi" }]')
        return disks

    def not_running(self, spec: InstanceSpec) -> NovaError:
        """The error for an operation that needs a running VM."""
        return NovaError(f"{spec.ref.key} is not running", hint=f"nova run vm {spec.ref.name}")

    def console_socket(self, spec: InstanceSpec) -> Path:
        """The serial console's socket of a running VM (``nova console``)."""
        if self.status(spec).state not in (Lifecycle.RUNNING, Lifecycle.PAUSED):
            raise self.not_running(spec)
        return self.files(spec).console

    def stopped_status(self, spec: InstanceSpec) -> ResourceStatus:
        """``missing`` before create, else ``stopped``."""
        state = Lifecycle.STOPPED if self.files(spec).exists() else Lifecycle.MISSING
        return ResourceStatus(ref=spec.ref, state=state)

    def logs(self, spec: InstanceSpec, request: LogRequest) -> Iterator[LogLine]:
        """The serial console's output, as QEMU logged it; with ``follow``, new output
        as it comes until the VM stops."""
        import codecs

        path = self.files(spec).serial_log
        if not path.exists():
            return
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with open(path, "rb") as handle:
            text = decoder.decode(handle.read()).replace("\r", "")
            pending = ""
            if request.follow and not text.endswith("\n"):
                text, _, pending = text.rpartition("\n")  # the rest of that line comes later
            lines = _serial_lines(text)
            if request.tail is not None:
                lines = lines[-request.tail:] if request.tail else []
            for line in lines:
                yield LogLine(stream="stdout", text=line)
            backoff = Backoff()
            while request.follow:
                data = handle.read()
                if data:
                    done, _, pending = (pending + decoder.decode(data).replace("\r", "")).rpartition("\n")
                    for line in _serial_lines(done):
                        yield LogLine(stream="stdout", text=line)
                    backoff.reset()
                    continue
                if self.status(spec).state not in (Lifecycle.RUNNING, Lifecycle.PAUSED):
                    rest = pending + decoder.decode(handle.read(), final=True).replace("\r", "")
                    for line in _serial_lines(rest):
                        yield LogLine(stream="stdout", text=line)
                    return
                backoff.wait()


def _serial_lines(text: str) -> list[str]:
    """The lines of serial output worth showing (not blank)."""
    return [line for line in text.split("\n") if line.strip()]


def wants_cloud_init(spec: VmSpec) -> bool:
    """True when any cloud-init field is set."""
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


def image_info(path: Path, shared: bool = True) -> dict[str, object]:
    """``qemu-img info`` of ``path`` (``shared``: also while a VM has it open)."""
    command = ["qemu-img", "info", "--output=json", *(["-U"] if shared else []), str(path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise NovaError("qemu-img is not installed", hint="apt-get install qemu-utils") from None
    if done.returncode != 0:
        message = done.stderr.strip().removeprefix("qemu-img: ")
        raise NovaError(f"{path} is not a disk image QEMU reads: {message}")
    return dict(json.loads(done.stdout))


def image_format(path: Path) -> str:
    """qcow2, raw, vmdk, ... as QEMU detects it."""
    return str(image_info(path)["format"])


def qemu_img(command: list[str]) -> None:
    """Run a qemu-img command; its complaint becomes a NovaError."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError:
        raise NovaError("qemu-img is not installed", hint="apt-get install qemu-utils") from None
    if done.returncode != 0:
        raise NovaError(f"{' '.join(command[:2])} failed: {done.stderr.strip()}")


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` has exited (or is a zombie); False after ``timeout``."""
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
