"""Shared helpers for the core tests (fixtures come from nova_core.testing)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """An empty folder to hold a NovaFile."""
    folder = tmp_path / "proj"
    folder.mkdir()
    return folder


def write_novafile(folder: Path, text: str, name: str = "NovaFile") -> Path:
    """Write a dedented NovaFile into ``folder``."""
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path
