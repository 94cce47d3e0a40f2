"""Which cgroup layout the host uses: v1, v2 (unified) or hybrid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CgroupLayout:
    """The cgroup layout.

    :param mode: ``v2``, ``v1``, ``hybrid`` (v1 controllers plus a cgroup2 mount
        with few or no controllers), or ``none``.
    :param v1_controllers: controllers mounted as cgroup v1.
    :param v2_mount: where cgroup2 is mounted, if anywhere.
    :param v2_controllers: controllers enabled in cgroup2.
    """

    mode: str
    v1_controllers: tuple[str, ...]
    v2_mount: str | None
    v2_controllers: tuple[str, ...]


def read_cgroup_layout(mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupLayout:
    """Read the layout from ``mountinfo`` (a parameter so tests can give their own)."""
    v1: list[str] = []
    v2_mount: str | None = None
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, options = rfields[0], rfields[2]
        if fstype == "cgroup2" and v2_mount is None:
            v2_mount = fields[4]
        elif fstype == "cgroup":
            v1.extend(o for o in options.split(",") if o not in ("rw", "ro", "nosuid", "nodev",
                                                                  "noexec", "relatime") and
                      not o.startswith("name="))
    v2_controllers: tuple[str, ...] = ()
    if v2_mount:
        controllers = Path(v2_mount) / "cgroup.controllers"
        try:
            v2_controllers = tuple(controllers.read_text().split())
        except OSError:
            v2_controllers = ()
    if v1 and v2_mount:
        mode = "hybrid"
    elif v1:
        mode = "v1"
    elif v2_mount:
        mode = "v2"
    else:
        mode = "none"
    return CgroupLayout(mode, tuple(sorted(set(v1))), v2_mount, v2_controllers)
