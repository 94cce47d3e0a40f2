"""Fixtures for the core tests (more come from nova_core.testing's pytest plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """An empty folder to hold a NovaFile."""
    folder = tmp_path / "proj"
    folder.mkdir()
    return folder
