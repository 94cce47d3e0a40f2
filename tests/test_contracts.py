"""The fake drivers and the built-in ``local`` storage driver honour the contract suites."""

from __future__ import annotations

from pathlib import Path

import pytest

from nova_core.builtin.local_storage import LocalVolumeDriver
from nova_core.drivers.base import DriverContext
from nova_core.drivers.models import (
    ContainerSpec,
    NetworkSpec,
    ResourceKind,
    ResourceRef,
    VmSpec,
    VolumeSpec,
)
from nova_core.testing.contracts import (
    ComputeDriverContract,
    NetworkDriverContract,
    StorageDriverContract,
)
from nova_core.testing.fakes import FakeComputeDriver, FakeNetworkDriver, FakeStorageDriver


def ref(kind: ResourceKind, name: str) -> ResourceRef:
    return ResourceRef(project="contract", kind=kind, name=name)


class TestFakeComputeWithVm(ComputeDriverContract):
    @pytest.fixture
    def driver(self, nova_home: Path) -> FakeComputeDriver:
        return FakeComputeDriver("fake", DriverContext(nova_home=nova_home))

    @pytest.fixture
    def instance_spec(self, tmp_path: Path) -> VmSpec:
        return VmSpec(ref=ref(ResourceKind.VM, "v1"), driver="fake", base_dir=tmp_path)


class TestFakeComputeWithContainer(TestFakeComputeWithVm):
    @pytest.fixture
    def instance_spec(self, tmp_path: Path) -> ContainerSpec:
        return ContainerSpec(ref=ref(ResourceKind.CONTAINER, "c1"), driver="fake",
                             base_dir=tmp_path, image="busybox")


class TestFakeNetwork(NetworkDriverContract):
    @pytest.fixture
    def network_driver(self, nova_home: Path) -> FakeNetworkDriver:
        return FakeNetworkDriver("fake", DriverContext(nova_home=nova_home))

    @pytest.fixture
    def network_spec(self, tmp_path: Path) -> NetworkSpec:
        return NetworkSpec(ref=ref(ResourceKind.NETWORK, "n1"), driver="fake", base_dir=tmp_path,
                           subnet="10.77.0.0/29")

    @pytest.fixture
    def instance_spec(self, tmp_path: Path) -> ContainerSpec:
        return ContainerSpec(ref=ref(ResourceKind.CONTAINER, "c1"), driver="fake",
                             base_dir=tmp_path, image="busybox")


class TestFakeStorage(StorageDriverContract):
    @pytest.fixture
    def storage_driver(self, nova_home: Path) -> FakeStorageDriver:
        return FakeStorageDriver("fake", DriverContext(nova_home=nova_home))

    @pytest.fixture
    def volume_spec(self, tmp_path: Path) -> VolumeSpec:
        return VolumeSpec(ref=ref(ResourceKind.VOLUME, "v1"), driver="fake", base_dir=tmp_path)


class TestLocalStorage(StorageDriverContract):
    @pytest.fixture
    def storage_driver(self, nova_home: Path) -> LocalVolumeDriver:
        return LocalVolumeDriver("local", DriverContext(nova_home=nova_home))

    @pytest.fixture
    def volume_spec(self, tmp_path: Path) -> VolumeSpec:
        return VolumeSpec(ref=ref(ResourceKind.VOLUME, "data"), driver="local", base_dir=tmp_path)

    def test_data_survives_a_second_create(self, storage_driver: LocalVolumeDriver,
                                           volume_spec: VolumeSpec) -> None:
        path = Path(storage_driver.create(volume_spec).data["path"])
        (path / "keep.txt").write_text("kept")
        storage_driver.create(volume_spec)
        assert (path / "keep.txt").read_text() == "kept"


def test_find_processes_sees_a_process_by_program_and_marker(tmp_path) -> None:  # noqa: ANN001
    """The leftover checks of the plugins' tests rely on this finding real processes."""
    import os
    import subprocess
    import sys

    from nova_core.hostinfo.processes import find_processes

    marker = f"nova-marker-{tmp_path.name}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        program = os.path.basename(sys.executable)
        assert (sleeper.pid, program) in find_processes((program,), marker)
        assert (sleeper.pid, program) in find_processes((program[:3] + "*",), marker)
        assert find_processes(("conmon",), marker) == []
    finally:
        sleeper.kill()
        sleeper.wait()
    assert find_processes((program,), marker) == []
