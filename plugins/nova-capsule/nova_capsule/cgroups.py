"""Where a capsule's cgroup lives, and removing it (runtimes leave parents behind)."""

from __future__ import annotations

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
    found = []
    if layout.mode == "v2" and layout.v2_mount:
        found.append(Path(layout.v2_mount) / PARENT / capsule_id)
    else:
        for entry in root.iterdir() if root.is_dir() else []:
            candidate = entry / PARENT / capsule_id
            if entry.is_dir() and not entry.is_symlink() and candidate.is_dir():
                found.append(candidate)
    return [path for path in found if path.is_dir()]


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
