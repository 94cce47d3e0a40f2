"""nova-capsule's settings, from ``NOVA_HOME/config.toml`` and the environment.

```toml
[images]
default_registry = "registry.example.org"   # what "busybox" and bolt:// resolve to
insecure_registries = ["10.0.0.5:5000"]      # spoken to over HTTP (loopback always is)
```

``NOVA_DEFAULT_REGISTRY`` overrides ``default_registry``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from nova_capsule.reference import DOCKER_HUB
from nova_core.errors import NovaError


@dataclass(frozen=True)
class ImageSettings:
    """Where images come from."""

    default_registry: str = DOCKER_HUB
    insecure_registries: tuple[str, ...] = field(default_factory=tuple)


def load_settings(nova_home: Path) -> ImageSettings:
    """Read the settings; a broken config file is a clear error."""
    path = nova_home / "config.toml"
    data: dict = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text()).get("images", {})
        except tomllib.TOMLDecodeError as error:
            raise NovaError(f"{path}: invalid TOML: {error}") from error
    default = os.environ.get("NOVA_DEFAULT_REGISTRY") or data.get("default_registry") or DOCKER_HUB
    insecure = data.get("insecure_registries", [])
    if not isinstance(default, str) or not isinstance(insecure, list):
        raise NovaError(f"{path}: [images] default_registry must be a string and "
                        "insecure_registries a list of host:port strings")
    return ImageSettings(default_registry=default, insecure_registries=tuple(map(str, insecure)))
