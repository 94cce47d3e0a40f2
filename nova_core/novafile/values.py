"""Parsers for the string forms in a NovaFile: ports and volume mounts."""

from __future__ import annotations

import re
from pathlib import Path

from nova_core.drivers.models import PortMapping, VolumeMount

_PORT_RE = re.compile(
    r"^(?:(?P<ip>\[[0-9a-fA-F:]+\]|\d+\.\d+\.\d+\.\d+):)?(?:(?P<host>\d+):)?(?P<target>\d+)(?:/(?P<proto>tcp|udp))?$"
)


def parse_port(text: str) -> PortMapping:
    """Parse ``8080:80``, ``127.0.0.1:8080:80/udp`` or ``80`` (same port on the host)."""
    match = _PORT_RE.match(text.strip())
    if not match:
        raise ValueError(
            f"'{text}' is not a port mapping; use 'HOST:TARGET', 'IP:HOST:TARGET' or add '/udp'"
        )
    target = int(match.group("target"))
    host = int(match.group("host") or target)
    for port in (host, target):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} in '{text}' is outside 1-65535")
    ip = match.group("ip")
    ip = ip.strip("[]") if ip else None
    return PortMapping(
        host_ip=None if ip in ("0.0.0.0", "::") else ip,  # every address, as with none
        host_port=host,
        target_port=target,
        protocol=match.group("proto") or "tcp",  # type: ignore[arg-type]
    )


def is_named_volume(source: str) -> bool:
    """``data`` is a named volume; ``./data``, ``/srv``, ``~/x`` are host paths."""
    return not (source.startswith((".", "/", "~")) or "/" in source)


def parse_volume(text: str, base_dir: Path) -> VolumeMount:
    """Parse ``SRC:TARGET[:ro|:rw]``; host paths are made absolute against ``base_dir``."""
    parts = text.split(":")
    mode = None
    if len(parts) == 3:
        mode = parts.pop()
        if mode not in ("ro", "rw"):
            raise ValueError(f"'{text}': the mode after the second ':' must be 'ro' or 'rw'")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"'{text}' is not a mount; use 'SOURCE:TARGET' or 'SOURCE:TARGET:ro'")
    source, target = parts
    if not target.startswith("/"):
        raise ValueError(f"'{text}': the target '{target}' must be an absolute path")
    if is_named_volume(source):
        return VolumeMount(type="volume", source=source, target=target, read_only=mode == "ro")
    host = Path(source).expanduser()
    if not host.is_absolute():
        host = (base_dir / host).resolve()
    return VolumeMount(type="bind", source=str(host), target=target, read_only=mode == "ro")
