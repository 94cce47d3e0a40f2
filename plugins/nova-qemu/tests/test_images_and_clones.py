"""VM disk images in Nova's store (``nova image import``) and linked clones of another VM
(``clone =``), through the real CLI with real guests under TCG. Disk contents are
written and read with qemu-io, the test guest does not write its disks itself."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

from nova_qemu.testing import MARKER, guest_kernel


def qemu_io(path: Path, command: str, writable: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["qemu-io", "-f", "qcow2", *([] if writable else ["-r", "-U"]), "-c", command, str(path)]
    return subprocess.run(args, capture_output=True, text=True)


def reads(path: Path, pattern: int) -> bool:
    done = qemu_io(path, f"read -P {pattern:#x} 0 64k")
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def backing(path: Path) -> str:
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                          capture_output=True, text=True, check=True).stdout
    return str(json.loads(info).get("full-backing-filename") or json.loads(info)["backing-filename"])


def test_an_imported_image_backs_vms_and_a_running_vm_is_cloned(run_nova, tmp_path: Path,
                                                                 initrd: Path,
                                                                 nova_home: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    assert qemu_io(base, "write -P 0xaa 0 64k", writable=True).returncode == 0
    imported = run_nova("image", "import", str(base), "tiny")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("tiny: qcow2, 64Mi virtual")
    [row] = json.loads(run_nova("image", "ls", "--json", check=True).stdout)
    assert (row["kind"], row["name"]) == ("vm", "tiny")
    assert row["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    stored = Path(row["file"])
    assert stored.stat().st_mode & 0o222 == 0  # VMs get linked clones; nobody writes the base
    twice = run_nova("image", "import", str(base), "tiny")
    assert twice.returncode == 1 and "exists already" in twice.stderr

    project = tmp_path / "proj"
    project.mkdir()
    guest = f'kernel = "{guest_kernel()}"\ninitrd = "{initrd}"\n' \
            'cmdline = "console=ttyS0 panic=-1 quiet"\nmemory = "128Mi"\naccel = "tcg"\n' \
            'stop_timeout = 1\n'
    (project / "NovaFile").write_text(f'project = "clones"\n\n[vm.src]\nimage = "tiny"\n{guest}\n'
                                      f'[vm.copy]\nclone = "src"\n{guest}')
    try:
        up = run_nova("up", cwd=project)
        assert up.returncode == 0, up.stderr
        listing = json.loads(run_nova("ls", "--json", cwd=project, check=True).stdout)
        assert sorted((i["name"], i["state"]) for i in listing) == [("copy", "running"),
                                                                    ("src", "running")]
        deadline = time.monotonic() + 60
        while MARKER not in run_nova("logs", "vm", "copy", cwd=project).stdout:
            assert time.monotonic() < deadline, "the clone never booted"
            time.sleep(0.2)
        vms = nova_home / "drivers/qemu/vms/clones"
        src_meta = json.loads((vms / "src/vm.json").read_text())["disks"][0]
        copy_meta = json.loads((vms / "copy/vm.json").read_text())["disks"][0]
        frozen = Path(copy_meta["base"])
        assert frozen.parent == nova_home / "drivers/qemu/bases" and src_meta["base"] == str(frozen)
        assert Path(src_meta["path"]).name.startswith("root-")  # src was frozen live
        assert backing(frozen) == str(stored)  # chain: overlay -> frozen -> the stored image
        assert reads(Path(copy_meta["path"]), 0xaa)
        rm = run_nova("image", "rm", "tiny")
        assert rm.returncode == 1 and "is the base of VMs" in rm.stderr
        assert run_nova("stop", "vm", "src", cwd=project).returncode == 0
        assert qemu_io(Path(src_meta["path"]), "write -P 0xbb 0 64k", writable=True).returncode == 0
        assert reads(Path(src_meta["path"]), 0xbb)
        assert reads(Path(copy_meta["path"]), 0xaa)  # each writes only its own overlay
        assert reads(stored, 0xaa)
        again = run_nova("up", cwd=project)
        assert again.returncode == 0, again.stderr
    finally:
        down = run_nova("down", cwd=project)
    assert down.returncode == 0, down.stderr
    assert not (nova_home / "drivers/qemu/bases").exists()  # no VM is built on them any more
    removed = run_nova("image", "rm", "tiny")
    assert removed.returncode == 0 and not stored.exists()


def test_image_and_clone_mistakes_are_clear(run_nova, tmp_path: Path, initrd: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "NovaFile").write_text(f'project = "badclones"\n\n[vm.a]\nimage = "nosuch"\n'
                                      f'kernel = "{guest_kernel()}"\naccel = "tcg"\n')
    up = run_nova("up", cwd=project)
    assert up.returncode == 1 and "no VM image named nosuch" in up.stderr
    assert "nova image import FILE nosuch" in up.stderr and "Traceback" not in up.stderr
    (project / "NovaFile").write_text(f'project = "badclones"\n\n[vm.a]\n'
                                      f'kernel = "{guest_kernel()}"\ninitrd = "{initrd}"\n'
                                      f'accel = "tcg"\nmemory = "128Mi"\n\n[vm.b]\nclone = "a"\n'
                                      f'kernel = "{guest_kernel()}"\naccel = "tcg"\n')
    try:
        up = run_nova("up", cwd=project)
        assert up.returncode == 1 and "vm.a has no root disk to clone" in up.stderr
    finally:
        assert run_nova("down", cwd=project).returncode == 0
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a disk\n")
    refused = run_nova("image", "import", str(bogus), "notes")
    assert refused.returncode == 1 and "no installed image kind recognises" in refused.stderr
    bad_name = run_nova("image", "import", str(bogus), "Bad Name", "--kind", "vm")
    assert bad_name.returncode == 1 and "not a valid VM image name" in bad_name.stderr
