"""Host device nodes in capsules: ``devices = ["/dev/dri/renderD128"]`` and ``gpu = true``.

Each node becomes an OCI ``linux.devices`` entry (type, major, minor, mode, taken from
the host node) plus a device cgroup rule that allows it. ``gpu = true`` uses the
vendor's CDI specification when one is installed (JSON, or YAML when PyYAML is
present, in /etc/cdi or /var/run/cdi; ``NOVA_CDI_SPEC_DIRS`` overrides, colon
separated): the device nodes, environment and mounts of every device of each kind
ending in ``/gpu``. Without one it passes the DRM nodes, ``/dev/dri/card*`` and
``/dev/dri/renderD*``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova_core.errors import NovaError

CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


@dataclass
class DeviceEdits:
    """What the devices add to a capsule's OCI config."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[dict[str, Any]] = field(default_factory=list)

    def add_node(self, host_path: str, path: str | None = None, key: str = "devices") -> None:
        """The host node ``host_path``, seen in the capsule as ``path``."""
        try:
            info = os.stat(host_path)
        except OSError:
            raise NovaError(f"{key}: {host_path} does not exist on this host",
                            hint="check the path (ls -l /dev)") from None
        if stat.S_ISCHR(info.st_mode):
            kind = "c"
        elif stat.S_ISBLK(info.st_mode):
            kind = "b"
        else:
            raise NovaError(f"{key}: {host_path} is not a device node",
                            hint="give character or block devices under /dev; use volumes for files")
        major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
        self.nodes.append({"path": path or host_path, "type": kind, "major": major,
                           "minor": minor, "fileMode": info.st_mode & 0o777, "uid": 0, "gid": 0})
        self.rules.append({"allow": True, "type": kind, "major": major, "minor": minor,
                           "access": "rwm"})


def _cdi_specs() -> list[dict[str, Any]]:
    dirs = os.environ.get("NOVA_CDI_SPEC_DIRS")
    specs = []
    for folder in (dirs.split(":") if dirs else CDI_DIRS):
        path = Path(folder)
        if not path.is_dir():
            continue
        for item in sorted(path.iterdir()):
            if item.suffix == ".json":
                specs.append(json.loads(item.read_text()))
            elif item.suffix in (".yaml", ".yml"):
                try:
                    import yaml  # type: ignore[import-untyped]
                except ImportError:
                    continue  # a YAML spec needs PyYAML; the DRM nodes are the fallback
                specs.append(yaml.safe_load(item.read_text()))
    return specs


def _apply_cdi(edits: DeviceEdits, container_edits: dict[str, Any]) -> None:
    for node in container_edits.get("deviceNodes", []):
        edits.add_node(node.get("hostPath") or node["path"], node["path"], key="gpu (CDI)")
    for entry in container_edits.get("env", []):
        name, _, value = entry.partition("=")
        edits.env[name] = value
    for mount in container_edits.get("mounts", []):
        edits.mounts.append({"destination": mount["containerPath"], "type": "bind",
                             "source": mount["hostPath"],
                             "options": mount.get("options", ["rbind", "ro"])})


def device_edits(devices: list[str], gpu: bool) -> DeviceEdits:
    """The OCI edits for a capsule's ``devices`` and ``gpu``."""
    edits = DeviceEdits()
    for entry in devices:
        host_path, _, path = entry.partition(":")
        if not host_path.startswith("/dev/"):
            raise NovaError(f"devices: '{entry}' is not a device node under /dev",
                            hint='write it like "/dev/dri/renderD128" (or HOST:CONTAINER)')
        edits.add_node(host_path, path or None)
    if gpu:
        found = False
        for spec in _cdi_specs():
            if not str(spec.get("kind", "")).endswith("/gpu"):
                continue
            found = True
            _apply_cdi(edits, spec.get("containerEdits", {}))
            for device in spec.get("devices", []):
                _apply_cdi(edits, device.get("containerEdits", {}))
        if not found:
            drm = sorted(Path("/dev/dri").glob("card*")) + sorted(Path("/dev/dri").glob("renderD*")) \
                if Path("/dev/dri").is_dir() else []
            if not drm:
                raise NovaError("gpu = true but this host has no GPU: no CDI spec for a */gpu "
                                "kind in /etc/cdi or /var/run/cdi and no /dev/dri nodes",
                                hint="install the vendor's driver (and its CDI spec, e.g. "
                                     "nvidia-ctk cdi generate), or remove gpu = true")
            for node in drm:
                edits.add_node(str(node), key="gpu")
    return edits
