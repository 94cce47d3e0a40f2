"""Helpers shared by the core tests (fixtures live in conftest.py and nova_core.testing)."""

from __future__ import annotations

import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_novafile(folder: Path, text: str, name: str = "NovaFile") -> Path:
    """Write a dedented NovaFile into ``folder``."""
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path
