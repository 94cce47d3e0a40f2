"""Linked clones of another VM (``clone = "other-vm"``).

A qcow2 overlay must sit on a file nobody writes any more, so cloning a VM first
*freezes* its root disk: the source gets a fresh, empty overlay on top of its current
disk, and the current disk, read-only from then on, gets a second name (a hard link)
``NOVA_HOME/drivers/qemu/bases/ID.qcow2``. The clone's overlay is built on that name,
so it outlives the source. Both VMs keep what the source had; each writes only to its
own overlay. A source the qemu driver runs is frozen live (QMP
``blockdev-snapshot-sync``); a stopped one with ``qemu-img``.

``bases/chains.json`` records each frozen file's own base; a frozen file is removed
when no VM's disk and no other frozen file is built on it any more.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from nova_core.errors import NovaError
from nova_core.files import replace_file


def bases_dir(nova_home: Path) -> Path:
    """Where frozen disks live."""
    return nova_home / "drivers" / "qemu" / "bases"


def _source_folder(nova_home: Path, project: str, source: str) -> Path:
    for meta in sorted((nova_home / "drivers").glob(f"*/vms/{project}/{source}/vm.json")):
        return meta.parent
    raise NovaError(f"vm.{source} is not created yet, so there is nothing to clone",
                    hint=f"nova up creates vm.{source} first (clone = makes it a dependency)")


def _chains(nova_home: Path) -> dict[str, str]:
    path = bases_dir(nova_home) / "chains.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_json(path: Path, value: object) -> None:
    replace_file(path, json.dumps(value, indent=1))


def freeze(nova_home: Path, project: str, source: str) -> Path:
    """Freeze vm ``source``'s root disk (see the module docstring); return the frozen file."""
    from nova_qemu.qmp import Qmp
    from nova_qemu.vm import VmFiles, image_info, qemu_img

    folder = _source_folder(nova_home, project, source)
    meta = json.loads((folder / "vm.json").read_text())
    roots = [d for d in meta["disks"] if d.get("base")]
    if not roots:
        raise NovaError(f"vm.{source} has no root disk to clone (it boots a kernel without image)",
                        hint=f"give vm.{source} an image, or give this VM its own")
    root = roots[0]
    current = Path(root["path"])
    info = image_info(current)
    if info.get("snapshots"):
        names = ", ".join(str(s["name"]) for s in info["snapshots"])  # type: ignore[union-attr]
        raise NovaError(f"vm.{source} has snapshots ({names}) in its root disk; a clone would "
                        "freeze them where they cannot be restored",
                        hint=f"nova snapshot rm vm {source} NAME first, or clone another VM")
    tag = uuid.uuid4().hex[:12]
    frozen = bases_dir(nova_home) / f"{tag}.qcow2"
    overlay = folder / f"root-{tag}.qcow2"
    driver = folder.parents[2].name
    live = VmFiles(nova_home, project, source, driver) if driver == "qemu" else None
    frozen.parent.mkdir(parents=True, exist_ok=True)
    if live is not None and live.pid() is not None:
        with Qmp(live.qmp) as qmp:  # QEMU switches to the new overlay; the old file is read-only
            qmp.execute("blockdev-snapshot-sync", **{
                "node-name": root["node"], "snapshot-file": str(overlay),
                "snapshot-node-name": f"disk0-{tag}", "format": "qcow2"})
        root["node"] = f"disk0-{tag}"
    else:
        try:
            image_info(current, shared=False)  # takes the write lock: fails while a QEMU has it
        except NovaError as error:
            if "lock" in error.message:
                raise NovaError(f"vm.{source} is running; the {driver} driver can clone it only "
                                "while it is stopped", hint=f"nova stop vm {source}, then run "
                                                            "this again") from None
            raise
        qemu_img(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(current), "-F", "qcow2",
                  str(overlay)])
    os.link(current, frozen)
    current.chmod(0o444)
    chains = _chains(nova_home)
    chains[str(frozen)] = root["base"]
    _write_json(frozen.parent / "chains.json", chains)
    root["path"], root["base"] = str(overlay), str(frozen)
    _write_json(folder / "vm.json", meta)
    return frozen


def _vm_bases(nova_home: Path) -> set[str]:
    """The files the recorded VMs' disks are built on (images, frozen disks)."""
    return {disk["base"] for meta in (nova_home / "drivers").glob("*/vms/*/*/vm.json")
            for disk in json.loads(meta.read_text())["disks"] if disk.get("base")}


def bases_in_use(nova_home: Path) -> set[str]:
    """Every file a VM's disk or a frozen disk is built on (never to be removed)."""
    return _vm_bases(nova_home) | set(_chains(nova_home).values())


def forget_unused_bases(nova_home: Path) -> list[Path]:
    """Remove frozen files no VM disk and no other frozen file is built on; return them."""
    folder = bases_dir(nova_home)
    if not folder.is_dir():
        return []
    chains = _chains(nova_home)
    wanted: set[str] = set()
    for base in _vm_bases(nova_home):
        while base and base not in wanted:
            wanted.add(base)
            base = chains.get(base)
    removed = [Path(path) for path in chains if path not in wanted]
    for path in removed:
        path.unlink(missing_ok=True)
        del chains[str(path)]
    if chains:
        _write_json(folder / "chains.json", chains)
    else:
        (folder / "chains.json").unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass
    return removed
