"""A capsule's files, its uid range, and mounting/unmounting its root filesystem.

```
NOVA_HOME/drivers/capsule/capsules/<project>/<name>/
  capsule.json   id, image, layers, uid range, restart policy
  config.json    the OCI bundle's config (the bundle is this folder)
  upper/ work/   the capsule's own writable layer (survives stop, start, reboot)
  rw.img, rw/    with a storage size: an ext4 image of that size, loop-mounted at rw/
                 while needed, holding upper/ and work/ (so the size is a hard limit)
  lower/<i>/     each image layer, idmapped to the capsule's range (mounted at start)
  ctr.log        stdout/stderr as conmon wrote them, with timestamps
  exits/<id>     the exit code conmon recorded
  snapshots/<s>/ copies of upper/
/run/nova-<hash>/capsules/<id>/
  rootfs/        the overlay (mounted at start)
  binds/<i>      each volume, bound nosuid,nodev
  userns         the capsule's user namespace, pinned while it is on Nova networks
                 (it owns the network namespace /run/netns/nova-NAME-HASH)
```

The mount points the runtime opens from inside the capsule's user namespace
live under /run, in a folder owned by the capsule's id range with mode 0700:
the capsule can traverse it, other host users cannot; NOVA_HOME stays 0700.

Image layers are idmapped (host root's files appear as the capsule's root).
Volumes are *not*: what capsule root writes there belongs to its unprivileged
host uid, so a capsule can never leave a file owned by host root (a setuid
binary, say) on the host. Nova hands a named volume's folder to the capsule's
range when it is still root's; host folders bound in must be writable by that
uid for the capsule to write there (as with podman's user namespaces).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nova_capsule import idmap

if TYPE_CHECKING:
    from nova_capsule.runtime import Runtime
from nova_core.errors import NovaError
from nova_core.files import replace_file

UID_BASE = 200_000
UID_COUNT = 65_536
UID_RANGES = 2_000


@dataclass
class CapsuleMeta:
    """What the driver remembers about a capsule between calls."""

    id: str
    image: str
    layers: list[str]
    uid_base: int
    restart: str = "no"
    runtime: str = "crun"
    restarts: int = 0
    binds: list[dict[str, object]] = field(default_factory=list)
    config_digest: str = ""


class CapsuleFiles:
    """The folder of one capsule."""

    def __init__(self, root: Path, run_dir: Path) -> None:
        self.root = root
        self.run_dir = run_dir
        self.meta_path = root / "capsule.json"
        self.rw_image = root / "rw.img"
        self.rw = root / "rw"
        self.lower = run_dir / "lower"  # the image layers' idmapped mounts, made at each start
        self.binds = run_dir / "binds"
        self.rootfs = run_dir / "rootfs"
        self.userns = run_dir / "userns"  # pinned when the capsule is on Nova networks
        self.log = root / "ctr.log"
        self.exits = root / "exits"
        self.snapshots = root / "snapshots"
        self.stopping = root / "stopping"
        self.run_id = root / "run-id"

    @property
    def sized(self) -> bool:
        """True when the writable layer lives in a fixed-size filesystem image."""
        return self.rw_image.exists()

    @property
    def layer_home(self) -> Path:
        """The folder holding upper/ and work/ (the loop-mounted rw/ when sized)."""
        return self.rw if self.sized else self.root

    @property
    def upper(self) -> Path:
        """The capsule's writable layer."""
        return self.layer_home / "upper"

    @property
    def work(self) -> Path:
        """overlayfs's work folder (same filesystem as the upper layer)."""
        return self.layer_home / "work"

    def make_sized_layer(self, size: int, owner: int) -> None:
        """Make the fixed-size ext4 image that will hold the writable layer."""
        import subprocess

        with open(self.rw_image, "wb") as image:
            image.truncate(size)  # sparse: costs only what is written
        try:
            done = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "nova-rw",
                                   "-E", f"root_owner={owner}:{owner}", str(self.rw_image)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            self.rw_image.unlink(missing_ok=True)
            raise NovaError("a storage size needs mkfs.ext4, which is not installed",
                            hint="apt-get install e2fsprogs") from None
        if done.returncode != 0:
            self.rw_image.unlink(missing_ok=True)
            raise NovaError(f"could not make the {size}-byte writable layer: "
                            f"{done.stderr.strip() or 'mkfs.ext4 failed'}",
                            hint="give a larger storage size (at least 8Mi), or install e2fsprogs")

    def mount_sized_layer(self) -> None:
        """Loop-mount the writable layer's image at rw/ (idempotent; no-op when not sized)."""
        import subprocess

        if not self.sized or idmap.is_mounted(self.rw):
            return
        self.rw.mkdir(exist_ok=True)
        try:
            done = subprocess.run(["mount", "-t", "ext4", "-o", "loop,nosuid,nodev",
                                   str(self.rw_image), str(self.rw)], capture_output=True,
                                  text=True)
        except FileNotFoundError:
            raise NovaError("mounting a sized writable layer needs mount(8)",
                            hint="apt-get install mount") from None
        if done.returncode != 0:
            raise NovaError(f"could not mount the writable layer {self.rw_image}: "
                            f"{done.stderr.strip()}", hint="check that loop devices are available")

    def exists(self) -> bool:
        """True once created."""
        return self.meta_path.exists()

    def read(self) -> CapsuleMeta:
        """The recorded metadata."""
        return CapsuleMeta(**json.loads(self.meta_path.read_text()))

    def write(self, meta: CapsuleMeta) -> None:
        """Record metadata atomically."""
        replace_file(self.meta_path, json.dumps(asdict(meta), indent=1))

    def is_latest_run(self, run_id: str) -> bool:
        """True while ``run_id`` is the capsule's last start (stopped by Nova or not)."""
        try:
            return self.exists() and self.run_id.read_text() == run_id
        except OSError:
            return False

    def is_current_run(self, run_id: str) -> bool:
        """True while ``run_id`` is the capsule's current run and Nova did not stop it."""
        return self.is_latest_run(run_id) and not self.stopping.exists()

    def record_exit(self, capsule_id: str, code: int) -> None:
        """Record the exit code of the last run, as conmon does."""
        self.exits.mkdir(exist_ok=True)
        (self.exits / capsule_id).write_text(str(code))

    def exit_code(self, capsule_id: str) -> int | None:
        """The exit code conmon recorded for the last run, if any."""
        try:
            return int((self.exits / capsule_id).read_text().strip())
        except (OSError, ValueError):
            return None

    def monitor_pid(self) -> int | None:
        """The pid of this run's conmon while it is alive, else None."""
        try:
            pid = int((self.root / "conmon.pid").read_text())
            if os.path.basename(Path(f"/proc/{pid}/exe").resolve()) == "conmon":
                return pid
        except (OSError, ValueError):
            pass
        return None

    def await_exit_code(self, capsule_id: str, timeout: float = 2.0) -> int | None:
        """The exit code of a run whose main process is gone, once its conmon records it.

        The runtime reports the capsule stopped as soon as the process has exited; conmon
        writes the code a moment later. Waits (bounded) only while that conmon lives.
        """
        deadline = time.monotonic() + timeout
        code = self.exit_code(capsule_id)
        while code is None and self.monitor_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.005)
            code = self.exit_code(capsule_id)
        return code

    # -- mounts ------------------------------------------------------------------
    def mount(self, meta: CapsuleMeta, layer_dirs: list[Path], volatile: bool = False) -> None:
        """Mount the idmapped layers, the overlay and the idmapped volumes (idempotent).

        ``volatile`` for a run whose capsule is removed after it (``nova run --rm``):
        its writable layer is never synced (:func:`idmap.mount_overlay`).
        """
        mounted = self.mount_points()
        if Path(os.path.realpath(self.rootfs)) in mounted:
            return
        self.unmount(mounted)  # whatever a crash left half-mounted
        idmap.forget_volatile(self.work)  # a throwaway run's capsule that stayed after all
        fd = idmap.user_namespace_fd(meta.uid_base, UID_COUNT)
        try:
            self.mount_sized_layer()
            lowers = []
            for index, layer in enumerate(layer_dirs):
                target = self.lower / str(index)
                target.mkdir(parents=True, exist_ok=True)
                idmap.idmapped_bind(layer, target, fd)
                lowers.append(target)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            os.chown(self.run_dir, meta.uid_base, meta.uid_base)
            os.chmod(self.run_dir, 0o700)
            for index, bind in enumerate(meta.binds):
                source = Path(str(bind["source"]))
                if not source.exists():
                    raise NovaError(f"the mount source {source} does not exist any more",
                                    hint="create it again, or change volumes")
                target = self.binds / str(index)
                self.binds.mkdir(exist_ok=True)
                if source.is_dir():
                    target.mkdir(exist_ok=True)
                elif not target.exists():
                    target.touch()
                idmap.bind_mount(source, target, bool(bind.get("read_only")))
            self.rootfs.mkdir(exist_ok=True)
            idmap.mount_overlay(list(reversed(lowers)), self.upper, self.work, self.rootfs,
                                volatile)
        except BaseException:
            self.unmount()
            raise
        finally:
            os.close(fd)

    def mount_points(self) -> list[Path]:
        """What is mounted in the capsule's folders, in the order it was mounted: the
        overlay, the layers, the binds and the sized layer, not the pinned user namespace."""
        return idmap.mounts_under([self.root, self.run_dir], leave=(self.userns,))

    def unmount(self, mounted: list[Path] | None = None) -> None:
        """Unmount everything :meth:`mount` made (fine if nothing is mounted), last mounted
        first; the loop device of a sized layer goes with it (autoclear). ``mounted``: what
        :meth:`mount_points` just returned."""
        for target in reversed(self.mount_points() if mounted is None else mounted):
            idmap.unmount(target)

    @contextmanager
    def writable_layer(self) -> Iterator[Path]:
        """The upper layer, mounted for the duration when it lives in an image."""
        mounted_here = self.sized and not idmap.is_mounted(self.rw)
        self.mount_sized_layer()
        try:
            yield self.upper
        finally:
            if mounted_here:
                idmap.unmount(self.rw)

    def remove(self) -> None:
        """Unmount and delete the folders (and the project's folder once empty): gone at
        once, their contents deleted once the command's result is out (a folder of a
        capsule with snapshots can take a while)."""
        from nova_core.afterwards import discard

        self.unmount()
        still = self.mount_points()
        if still:
            raise NovaError(f"{', '.join(map(str, still))} still mounted; not removing the "
                            f"capsule's files", hint="unmount it (umount -l PATH), then try again")
        discard(self.root, self.root.parents[2] / "trash")  # <home>/drivers/capsule/trash
        discard(self.run_dir, self.run_dir.parents[1] / "trash")  # <run root>/trash
        try:
            self.root.parent.rmdir()  # the project's folder, if this was its last capsule
        except OSError:
            pass


class UidAllocator:
    """Per-capsule host id ranges, recorded in ``uids.json`` under a lock.

    The record is replaced whole (a temporary file renamed over it), so a crash while
    writing leaves the previous record, never half of one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _edit(self):  # noqa: ANN202
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.path.with_suffix(".lock"), "a")

    def _save(self, taken: dict[str, int]) -> None:
        replace_file(self.path, json.dumps(taken, indent=1, sort_keys=True))

    def allocate(self, capsule_id: str) -> int:
        """The range of ``capsule_id`` (a new one if it has none)."""
        with self._edit() as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            taken = json.loads(self.path.read_text()) if self.path.exists() else {}
            if capsule_id in taken:
                return int(taken[capsule_id])
            used = set(taken.values())
            for index in range(UID_RANGES):
                base = UID_BASE + index * UID_COUNT
                if base not in used:
                    taken[capsule_id] = base
                    self._save(taken)
                    return base
        raise NovaError(f"all {UID_RANGES} capsule id ranges are in use")

    def release(self, capsule_id: str) -> None:
        """Give the range back."""
        with self._edit() as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            taken = json.loads(self.path.read_text()) if self.path.exists() else {}
            if taken.pop(capsule_id, None) is not None:
                self._save(taken)


def capsule_id(project: str, name: str) -> str:
    """The runtime's container id: readable, and unique per (project, name).

    Names may contain '-', so ``nova-a-b-c`` alone could be project ``a``'s ``b-c``
    or ``a-b``'s ``c``; a short hash of both parts tells them apart.
    """
    import hashlib

    digest = hashlib.sha256(f"{project}\0{name}".encode()).hexdigest()[:8]
    return f"nova-{name[:40]}-{digest}"


def capsule_files(nova_home: Path, project: str, name: str) -> CapsuleFiles:
    """The files of capsule ``project``/``name``."""
    from nova_capsule.runtime import run_root

    return CapsuleFiles(nova_home / "drivers" / "capsule" / "capsules" / project / name,
                        run_root(nova_home) / "capsules" / capsule_id(project, name))


class CapsuleLock:
    """A per-capsule lock (a flock under /run), re-entrant within one process.

    The driver holds it while it starts, stops, restores or deletes a capsule;
    the exit hook holds it while it restarts or cleans up after an exit.
    """

    _held: dict[str, tuple[int, int]] = {}

    def __init__(self, nova_home: Path, capsule: str, create: bool = True) -> None:
        from nova_capsule.runtime import run_root

        self.path = run_root(nova_home) / "locks" / f"{capsule}.lock"
        self.create = create  # False: fail (FileNotFoundError) rather than recreate the folder

    def __enter__(self) -> CapsuleLock:
        key = str(self.path)
        fd, depth = self._held.get(key, (-1, 0))
        if depth == 0:
            if self.create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._held[key] = (fd, depth + 1)
        return self

    def __exit__(self, *exc: object) -> None:
        key = str(self.path)
        fd, depth = self._held[key]
        if depth == 1:
            del self._held[key]
            os.close(fd)
        else:
            self._held[key] = (fd, depth - 1)


def teardown(runtime: Runtime, capsule: str, files: CapsuleFiles) -> None:
    """Remove the runtime's container, the capsule's mounts and its cgroup (idempotent)."""
    from nova_capsule.cgroups import remove_cgroup

    runtime.remove(capsule)
    files.unmount()
    remove_cgroup(capsule)


def exit_command(nova_home: Path, project: str, name: str, run_id: str) -> list[str]:
    """What conmon runs when the capsule's main process exits (see exit_hook)."""
    import sys

    return [sys.executable, "-m", "nova_capsule.exit_hook", str(nova_home), project, name, run_id]
