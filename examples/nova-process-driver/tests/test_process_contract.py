"""The example driver passes the core's contract suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from nova_process.driver import ProcessDriver

from nova_core.drivers.base import DriverContext
from nova_core.drivers.models import ContainerSpec, ResourceKind, ResourceRef
from nova_core.testing.contracts import ComputeDriverContract


class TestProcessDriverContract(ComputeDriverContract):
    @pytest.fixture
    def driver(self, nova_home: Path) -> ProcessDriver:
        return ProcessDriver("process", DriverContext(nova_home=nova_home))

    @pytest.fixture
    def instance_spec(self, tmp_path: Path) -> ContainerSpec:
        ref = ResourceRef(project="contract", kind=ResourceKind.CONTAINER, name="sleeper")
        return ContainerSpec(ref=ref, driver="process", base_dir=tmp_path,
                             command=["sh", "-c", "echo hello; exec sleep 30"])
