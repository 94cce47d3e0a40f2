"""Names of projects and resources (no heavy imports: the CLI checks ``-p`` with this)."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
NAME_RULE = ("letters, digits, '.', '_' or '-', at most 63 characters, starting with a letter "
             "or digit")


@functools.lru_cache(maxsize=16)
def home_digest(nova_home: Path, length: int = 10) -> str:
    """Hex digits naming one NOVA_HOME in host-wide places (/run folders, nft tables)."""
    return hashlib.sha256(str(nova_home.resolve()).encode()).hexdigest()[:length]


def mac_address(*parts: str) -> str:
    """A stable, locally administered unicast MAC (52:54:00 like QEMU's, then a hash of ``parts``)."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def is_valid_name(name: object) -> bool:
    """True for a valid project or resource name (the whole string, no trailing newline)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None
