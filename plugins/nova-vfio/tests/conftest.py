"""Fixtures shared by nova-vfio's tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cli_on_emulated_host(root: Path, fake_distribution, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """``nova`` commands of the test see the emulated sysfs (the test module's ``root``
    fixture) and can run VMs with the in-memory ``fake`` compute driver."""
    monkeypatch.setenv("NOVA_SYSFS_ROOT", str(root))
    fake_distribution("nova-fake-compute", {
        "nova_core.compute": {"fake": "nova_core.testing.fakes:FakeComputeDriver"}})
