"""Nova's store of VM disk images: ``nova image import disk.qcow2 debian-12`` and then
``image = "debian-12"`` in a ``[vm.NAME]`` table.

```
NOVA_HOME/images/vm/
  index.json         name -> file, format, sizes, sha256, when
  NAME.qcow2|.raw    read-only: VMs get linked clones of it, never write it
```

qcow2 and raw files are copied as they are (sparse); other formats QEMU reads (vmdk,
vdi, vhdx, a qcow2 with a backing file) are converted to a standalone qcow2.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from nova_core.errors import NovaError
from nova_core.files import replace_file
from nova_core.images import ImageKind, ImageRow

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}(:[A-Za-z0-9._-]{1,64})?$")
DISK_SUFFIXES = (".qcow2", ".img", ".raw", ".iso", ".vmdk", ".vdi", ".vhdx", ".qcow")


def is_image_name(value: str) -> bool:
    """True when ``image = value`` names a stored image rather than a file."""
    return "/" not in value and not value.endswith(DISK_SUFFIXES) and bool(NAME.match(value))


@dataclass
class VmImage:
    """One stored VM image."""

    name: str
    file: str
    format: str
    size: int  # bytes on disk
    virtual_size: int
    sha256: str
    created: float

    def as_json(self) -> dict[str, object]:
        """For ``nova image ls --json``."""
        return asdict(self)


class VmImageStore:
    """The images under NOVA_HOME/images/vm."""

    def __init__(self, nova_home: Path) -> None:
        self.root = nova_home / "images" / "vm"
        self.index = self.root / "index.json"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, object]]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = json.loads(self.index.read_text()) if self.index.exists() else {}
            yield entries
            replace_file(self.index, json.dumps(entries, indent=1))

    def images(self) -> list[VmImage]:
        """Every stored image, by name."""
        if not self.index.exists():
            return []
        entries = json.loads(self.index.read_text())
        return [VmImage(**entries[name]) for name in sorted(entries)]  # type: ignore[arg-type]

    def find(self, name: str) -> VmImage | None:
        """The image called ``name``, or None."""
        return next((i for i in self.images() if i.name == name), None)

    def path_of(self, name: str) -> Path:
        """The file of image ``name``, or a clear error."""
        found = self.find(name)
        if found is None:
            known = ", ".join(i.name for i in self.images()) or "none"
            raise NovaError(f"no VM image named {name} in Nova's store (stored: {known})",
                            hint=f"nova image import FILE {name}, or give image a path")
        return Path(found.file)

    def import_file(self, source: Path, name: str,
                    progress: Callable[[int, int], None] | None = None) -> VmImage:
        """Copy or convert ``source`` into the store as ``name``."""
        from nova_qemu.vm import image_info, qemu_img

        if not NAME.match(name):
            raise NovaError(f"'{name}' is not a valid VM image name",
                            hint="use lowercase letters, digits, '.', '_' and '-' (like debian-12)")
        if not source.is_file():
            raise NovaError(f"{source} does not exist or is not a file")
        info = image_info(source)
        fmt = str(info["format"])
        keep = fmt in ("qcow2", "raw") and not info.get("backing-filename")
        target = self.root / f"{name.replace(':', '_')}.{'raw' if fmt == 'raw' and keep else 'qcow2'}"
        if self.find(name) is not None:
            raise NovaError(f"a VM image named {name} exists already",
                            hint=f"nova image rm {name} first, or choose another name")
        self.root.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        try:
            if keep:
                digest = _copy(source, partial, progress)
            else:
                qemu_img(["qemu-img", "convert", "-O", "qcow2", str(source), str(partial)])
                digest = _sha256(partial)
            partial.chmod(0o444)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        stored = image_info(target)
        image = VmImage(name=name, file=str(target), format=str(stored["format"]),
                        size=target.stat().st_blocks * 512,
                        virtual_size=int(stored["virtual-size"]),  # type: ignore[call-overload]
                        sha256=digest, created=time.time())
        with self._locked() as entries:
            entries[name] = image.as_json()
        return image

    def remove(self, name: str, in_use: set[str]) -> VmImage:
        """Remove image ``name``; refused while a VM's disk is built on it."""
        found = self.find(name)
        if found is None:
            raise NovaError(f"no VM image named {name}", hint="nova image ls lists them")
        if found.file in in_use:
            raise NovaError(f"VM image {name} is the base of VMs that exist",
                            hint="nova down (or nova rm) those VMs first")
        with self._locked() as entries:
            entries.pop(name, None)
        Path(found.file).unlink(missing_ok=True)
        return found


def vm_image_store(nova_home: Path) -> VmImageStore:
    """The VM image store of ``nova_home``."""
    return VmImageStore(nova_home)


def _copy(source: Path, target: Path, progress: Callable[[int, int], None] | None) -> str:
    """Copy keeping holes; return the sha256 of the content."""
    digest = hashlib.sha256()
    total = source.stat().st_size
    done = 0
    chunk = 4 * 2**20
    with open(source, "rb") as src, open(target, "wb") as dst:
        while block := src.read(chunk):
            digest.update(block)
            if block.count(0) == len(block):
                dst.seek(len(block), os.SEEK_CUR)  # a hole stays a hole
            else:
                dst.write(block)
            done += len(block)
            if progress:
                progress(done, total)
        dst.truncate(total)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(4 * 2**20):
            digest.update(block)
    return digest.hexdigest()




class VmImages(ImageKind):
    """Disk images for VMs, for ``nova image``."""

    kind = "vm"

    def rows(self, nova_home: Path) -> list[ImageRow]:
        """Every stored VM image."""
        from nova_core.units import format_size

        return [ImageRow(name=i.name, id=i.sha256[:12], size=i.size,
                         detail=f"{i.format}, {format_size(i.virtual_size)} virtual",
                         created=i.created, data=i.as_json())
                for i in vm_image_store(nova_home).images()]

    def claims(self, path: Path) -> bool:
        """Files QEMU recognises as a disk format, or raw files named like disks."""
        from nova_qemu.vm import image_format

        if path.name.endswith(DISK_SUFFIXES):
            return True
        try:
            return image_format(path) != "raw"
        except NovaError:
            return False

    def import_image(self, nova_home: Path, path: Path, name: str) -> str:
        """Copy (qcow2, raw) or convert (others) the disk into the store."""
        import sys

        from nova_core.units import format_size

        def progress(done: int, total: int) -> None:
            if sys.stderr.isatty() and total:
                sys.stderr.write(f"\rimporting {path.name}: {100 * done // total:3d}%")
                if done >= total:
                    sys.stderr.write("\n")

        image = vm_image_store(nova_home).import_file(path, name, progress)
        return (f"{image.name}: {image.format}, {format_size(image.virtual_size)} virtual, "
                f"sha256:{image.sha256[:12]} (use image = \"{image.name}\" in a [vm.NAME] table)")

    def find(self, nova_home: Path, name: str) -> bool:
        """True when a VM image ``name`` is stored."""
        return vm_image_store(nova_home).find(name) is not None

    def remove(self, nova_home: Path, name: str) -> str:
        """Remove it, unless a VM's disk is built on it."""
        from nova_qemu.clones import bases_in_use

        image = vm_image_store(nova_home).remove(name, bases_in_use(nova_home))
        return f"removed VM image {image.name}"


__all__ = ["VmImage", "VmImageStore", "VmImages", "is_image_name",
           "vm_image_store"]
