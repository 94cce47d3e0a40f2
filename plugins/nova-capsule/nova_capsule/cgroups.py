"""Where a capsule's cgroup lives, and removing it (runtimes leave parents behind)."""

from __future__ import annotations

import _thread
import functools
import os
from pathlib import Path

from nova_core.hostinfo.cgroups import CgroupLayout, read_cgroup_layout

PARENT = "nova"


@functools.cache
def host_cgroup_layout() -> CgroupLayout:
    """The host's cgroup layout, read once per process (it is set up at boot)."""
    return read_cgroup_layout()


def cgroup_path(capsule_id: str) -> str:
    """The absolute cgroupsPath for the OCI config: ``/nova/<id>``."""
    return f"/{PARENT}/{capsule_id}"


def cgroup_dirs(capsule_id: str, root: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """Every folder the capsule's cgroup has: one per v1 controller, or one in v2."""
    layout = host_cgroup_layout()
    if layout.mode == "v2" and layout.v2_mount:
        candidates = [os.path.join(layout.v2_mount, PARENT, capsule_id)]
    else:
        candidates = [os.path.join(folder, PARENT, capsule_id) for folder in _hierarchies(root)]
    return [Path(path) for path in candidates if os.path.isdir(path)]


@functools.lru_cache(maxsize=4)
def _hierarchies(root: Path) -> tuple[str, ...]:
    """The folders under ``root`` of the mounted hierarchies (not the symlinks such as
    cpu -> cpu,cpuacct), listed once per process: they are set up at boot."""
    try:
        with os.scandir(root) as entries:
            return tuple(sorted(entry.path for entry in entries
                                if entry.is_dir(follow_symlinks=False)))
    except OSError:
        return ()


def read_host_facts() -> None:
    """Read the layout and the v1 hierarchies now (both cached per process), so that the
    children a warm helper forks inherit them (about 0.5 ms each command)."""
    if host_cgroup_layout().mode != "v2":
        _hierarchies(Path("/sys/fs/cgroup"))


def remove_cgroup(capsule_id: str) -> None:
    """Remove the capsule's cgroup folders (children first); they must be empty of tasks."""
    for path in cgroup_dirs(capsule_id):
        for current, dirs, _files in os.walk(path, topdown=False):
            for name in dirs:
                try:
                    os.rmdir(os.path.join(current, name))
                except OSError:
                    pass
        try:
            os.rmdir(path)
        except OSError:
            pass


def prime_migration(procs: Path | None = None) -> _thread.LockType | None:
    """Give the runtime's cgroup migration a head start, in a background thread.

    Every write to a ``cgroup.procs`` file takes the kernel's global
    ``cgroup_threadgroup_rwsem`` for writing. Unless the hierarchy is mounted with
    ``favordynmods``, the first writer after a quiet spell first waits for a whole RCU
    grace period (13-20 ms on the test hosts), and writers within the grace period after
    that one do not wait. The runtime's move of the capsule's first process into its
    cgroup is such a first writer, on the critical path of every start.

    So, while Nova still prepares a capsule, this thread moves this process into the
    cgroup it is in already (a no-op move; a refusal such as v2's EBUSY comes after the
    wait and does as well): the grace period then passes during Nova's own work, and the
    runtime's write a few milliseconds later does not wait (about 14 ms off ``nova run
    --rm`` of /bin/true). Nothing depends on it: a failure is ignored, and a start
    that misses the window only waits as it would have.

    :param procs: the file to write to; by default this process's own cgroup's
    :returns: a lock held until the write is done (None when this process's cgroup is
        not found)
    """
    target = procs or own_procs_file(pid=os.getpid())
    if target is None:
        return None
    done = _thread.allocate_lock()
    done.acquire()

    def move() -> None:  # a bare thread: threading's start() waits until it runs
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        except OSError:
            pass
        finally:
            done.release()

    _thread.start_new_thread(move, ())
    return done


@functools.lru_cache(maxsize=4)
def own_procs_file(cgroup_root: Path = Path("/sys/fs/cgroup"), pid: int = 0) -> Path | None:
    """The ``cgroup.procs`` of this process's own cgroup in one mounted hierarchy (v1
    hierarchies under ``cgroup_root``, else the cgroup2 mount). Looked up once per
    process (``pid``: a forked child looks again)."""
    layout = host_cgroup_layout()
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and layout.mode == "v2" and layout.v2_mount:
            folder = Path(layout.v2_mount)
        elif controllers and not controllers.startswith("name="):
            folder = cgroup_root / controllers
        else:
            continue
        candidate = folder / path.lstrip("/") / "cgroup.procs"
        if candidate.exists():
            return candidate
    return None
