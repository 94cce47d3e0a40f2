"""Contract suites: subclass one in your plugin's tests to prove your driver honours it.

Example (in ``plugins/nova-mine/tests/test_contract.py``)::

    import pytest
    from nova_core.drivers.base import DriverContext
    from nova_core.drivers.models import ContainerSpec, ResourceKind, ResourceRef
    from nova_core.testing.contracts import ComputeDriverContract
    from nova_mine.driver import MineDriver

    class TestMineContract(ComputeDriverContract):
        @pytest.fixture
        def driver(self, nova_home):
            return MineDriver("mine", DriverContext(nova_home=nova_home))

        @pytest.fixture
        def instance_spec(self, tmp_path):
            ref = ResourceRef(project="contract", kind=ResourceKind.CONTAINER, name="c1")
            return ContainerSpec(ref=ref, driver="mine", base_dir=tmp_path, image="busybox")

Every test removes what it made, also when it fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nova_core.drivers.compute import ComputeDriver
from nova_core.drivers.models import (
    DriverOptions,
    InstanceSpec,
    Lifecycle,
    LogLine,
    LogRequest,
    NetworkAttachment,
    NetworkSpec,
    RenderedDetail,
    SnapshotInfo,
    VolumeSpec,
)
from nova_core.drivers.network import NetworkDriver
from nova_core.drivers.storage import StorageDriver


class ComputeDriverContract:
    """What every compute driver must do. Provide fixtures ``driver`` and ``instance_spec``."""

    @pytest.fixture(autouse=True)
    def _remove_instance(self, driver: ComputeDriver, instance_spec: InstanceSpec) -> Iterator[None]:
        yield
        try:
            if driver.status(instance_spec).state in (Lifecycle.RUNNING, Lifecycle.PAUSED):
                driver.stop(instance_spec, 1.0)
        finally:
            driver.delete(instance_spec)

    def test_declares_what_it_runs(self, driver: ComputeDriver, instance_spec: InstanceSpec) -> None:
        assert instance_spec.ref.kind in driver.instance_kinds
        assert issubclass(driver.options_model, DriverOptions)

    def test_unknown_instance_is_missing(self, driver: ComputeDriver,
                                         instance_spec: InstanceSpec) -> None:
        assert driver.status(instance_spec).state is Lifecycle.MISSING

    def test_render_is_a_dry_run(self, driver: ComputeDriver, instance_spec: InstanceSpec) -> None:
        details = driver.render(instance_spec)
        assert details and all(isinstance(d, RenderedDetail) and d.body for d in details)
        assert driver.status(instance_spec).state is Lifecycle.MISSING

    def test_lifecycle(self, driver: ComputeDriver, instance_spec: InstanceSpec) -> None:
        created = driver.create(instance_spec)
        assert created.ref == instance_spec.ref
        assert created.state in (Lifecycle.CREATED, Lifecycle.STOPPED)
        assert driver.start(instance_spec).state is Lifecycle.RUNNING
        assert driver.status(instance_spec).state is Lifecycle.RUNNING
        assert driver.stop(instance_spec, 5.0).state is Lifecycle.STOPPED
        assert driver.status(instance_spec).state is Lifecycle.STOPPED
        assert driver.start(instance_spec).state is Lifecycle.RUNNING
        driver.stop(instance_spec, 5.0)
        driver.delete(instance_spec)
        assert driver.status(instance_spec).state is Lifecycle.MISSING

    def test_an_attached_run_is_an_instance_like_any_other(self, driver: ComputeDriver,
                                                           instance_spec: InstanceSpec) -> None:
        """``start_attached`` may decline (None, starting nothing). A run it returns is a
        running instance that ``stop`` ends; ``wait`` then gives an exit status and the
        instance is stopped, ready for ``delete``."""
        driver.create(instance_spec)
        run = driver.start_attached(instance_spec)
        if run is None:
            assert driver.status(instance_spec).state is not Lifecycle.RUNNING
            return
        assert run.status.state is Lifecycle.RUNNING
        assert driver.status(instance_spec).state is Lifecycle.RUNNING
        driver.stop(instance_spec, 5.0)
        assert all(isinstance(line, LogLine) for line in run.output())
        assert isinstance(run.wait(), int)
        assert driver.status(instance_spec).state is Lifecycle.STOPPED
        driver.delete(instance_spec)
        assert driver.status(instance_spec).state is Lifecycle.MISSING

    def test_create_again_after_a_crash_is_safe(self, driver: ComputeDriver,
                                                instance_spec: InstanceSpec) -> None:
        driver.create(instance_spec)
        again = driver.create(instance_spec)
        assert again.state in (Lifecycle.CREATED, Lifecycle.STOPPED)

    def test_delete_of_a_missing_instance_is_fine(self, driver: ComputeDriver,
                                                  instance_spec: InstanceSpec) -> None:
        driver.delete(instance_spec)
        assert driver.status(instance_spec).state is Lifecycle.MISSING

    def test_logs_respect_tail(self, driver: ComputeDriver, instance_spec: InstanceSpec) -> None:
        driver.create(instance_spec)
        driver.start(instance_spec)
        lines = list(driver.logs(instance_spec, LogRequest(tail=1)))
        assert len(lines) <= 1
        assert all(isinstance(line, LogLine) for line in lines)

    def test_snapshot_is_named(self, driver: ComputeDriver, instance_spec: InstanceSpec) -> None:
        driver.create(instance_spec)
        info = driver.snapshot(instance_spec, "contract-snap")
        assert isinstance(info, SnapshotInfo)
        assert info.name == "contract-snap" and info.ref == instance_spec.ref


    def test_snapshot_restore_and_delete(self, driver: ComputeDriver,
                                         instance_spec: InstanceSpec) -> None:
        from nova_core.errors import NovaError

        driver.create(instance_spec)
        driver.start(instance_spec)
        driver.snapshot(instance_spec, "contract-a")
        assert driver.restore_snapshot(instance_spec, "contract-a").state is Lifecycle.RUNNING
        driver.delete_snapshot(instance_spec, "contract-a")
        driver.delete_snapshot(instance_spec, "contract-a")  # already gone: fine
        with pytest.raises(NovaError):
            driver.restore_snapshot(instance_spec, "contract-a")


class NetworkDriverContract:
    """What every network driver must do.

    Provide fixtures ``network_driver``, ``network_spec`` and ``instance_spec``.
    """

    @pytest.fixture(autouse=True)
    def _remove_network(self, network_driver: NetworkDriver,
                        network_spec: NetworkSpec) -> Iterator[None]:
        yield
        network_driver.delete(network_spec)

    def test_unknown_network_is_missing(self, network_driver: NetworkDriver,
                                        network_spec: NetworkSpec) -> None:
        assert network_driver.status(network_spec).state is Lifecycle.MISSING

    def test_render_is_a_dry_run(self, network_driver: NetworkDriver,
                                 network_spec: NetworkSpec) -> None:
        assert all(isinstance(d, RenderedDetail) for d in network_driver.render(network_spec))
        assert network_driver.status(network_spec).state is Lifecycle.MISSING

    def test_create_twice_then_delete(self, network_driver: NetworkDriver,
                                      network_spec: NetworkSpec) -> None:
        assert network_driver.create(network_spec).state is Lifecycle.CREATED
        assert network_driver.create(network_spec).state is Lifecycle.CREATED
        assert network_driver.status(network_spec).state is Lifecycle.CREATED
        network_driver.delete(network_spec)
        assert network_driver.status(network_spec).state is Lifecycle.MISSING

    def test_attach_and_detach(self, network_driver: NetworkDriver, network_spec: NetworkSpec,
                               instance_spec: InstanceSpec) -> None:
        network_driver.create(network_spec)
        attachment = network_driver.attach(network_spec, instance_spec)
        assert attachment.network == network_spec.ref.name
        assert attachment.instance == instance_spec.ref
        network_driver.detach(network_spec, attachment)

    def test_detach_of_a_pending_attachment_cleans_up(
        self, network_driver: NetworkDriver, network_spec: NetworkSpec, instance_spec: InstanceSpec
    ) -> None:
        network_driver.create(network_spec)
        network_driver.attach(network_spec, instance_spec)
        pending = NetworkAttachment(network=network_spec.ref.name, driver=network_driver.name,
                                    instance=instance_spec.ref, endpoint="none")
        network_driver.detach(network_spec, pending)
        again = network_driver.attach(network_spec, instance_spec)  # the address was released
        network_driver.detach(network_spec, again)


class StorageDriverContract:
    """What every storage driver must do. Provide fixtures ``storage_driver`` and ``volume_spec``."""

    @pytest.fixture(autouse=True)
    def _remove_volume(self, storage_driver: StorageDriver,
                       volume_spec: VolumeSpec) -> Iterator[None]:
        yield
        storage_driver.delete(volume_spec)

    def test_create_twice_then_delete(self, storage_driver: StorageDriver,
                                      volume_spec: VolumeSpec) -> None:
        assert storage_driver.status(volume_spec).state is Lifecycle.MISSING
        first = storage_driver.create(volume_spec)
        assert first.state is Lifecycle.CREATED and first.data.get("path")
        assert storage_driver.create(volume_spec).data["path"] == first.data["path"]
        storage_driver.delete(volume_spec)
        assert storage_driver.status(volume_spec).state is Lifecycle.MISSING
