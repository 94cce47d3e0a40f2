"""The compute driver kind: runs VMs or containers."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import ClassVar

from nova_core.drivers.base import Driver
from nova_core.drivers.models import (
    DriverKind,
    InstanceSpec,
    LogLine,
    LogRequest,
    ResourceKind,
    ResourceStatus,
    SnapshotInfo,
)
from nova_core.errors import NovaError


class AttachedRun(abc.ABC):
    """An instance started by :meth:`ComputeDriver.start_attached`: it runs once, with
    this process as its monitor, for one-shot runs such as ``nova run --rm``.

    ``status`` is its state right after the start. :meth:`output` yields its output
    lines as they come until its main process exits; :meth:`wait` then returns the
    exit status, once the driver has recorded it and cleaned up after the run (as it
    does for an instance that exits on its own).
    """

    status: ResourceStatus

    @abc.abstractmethod
    def output(self) -> Iterator[LogLine]:
        """The instance's output, as it comes, until its main process exits."""

    @abc.abstractmethod
    def wait(self) -> int:
        """Wait for the main process to exit; its exit status (128+N for signal N)."""


class ComputeDriver(Driver):
    """Runs instances: VMs, containers, or both (``instance_kinds``).

    ``updatable_fields`` lists spec fields the driver can change on a live
    instance through :meth:`update`; a change to any other field makes the engine
    replace the instance (delete, then create).
    """

    kind: ClassVar[DriverKind] = DriverKind.COMPUTE
    instance_kinds: ClassVar[frozenset[ResourceKind]]

    @abc.abstractmethod
    def create(self, spec: InstanceSpec) -> ResourceStatus:
        """Make the instance (disks, bundle, definition) without starting it.

        Must be safe to call again after a crash part way through.
        """

    @abc.abstractmethod
    def start(self, spec: InstanceSpec) -> ResourceStatus:
        """Start a created or stopped instance; return its state (``running``)."""

    @abc.abstractmethod
    def stop(self, spec: InstanceSpec, timeout: float) -> ResourceStatus:
        """Stop the instance gracefully, forcing it after ``timeout`` seconds."""

    @abc.abstractmethod
    def delete(self, spec: InstanceSpec) -> None:
        """Remove the instance and everything the driver made for it."""

    @abc.abstractmethod
    def status(self, spec: InstanceSpec) -> ResourceStatus:
        """Observe the instance on the host (``missing`` when it is not there)."""

    @abc.abstractmethod
    def snapshot(self, spec: InstanceSpec, name: str) -> SnapshotInfo:
        """Take a snapshot named ``name``."""

    @abc.abstractmethod
    def restore_snapshot(self, spec: InstanceSpec, name: str) -> ResourceStatus:
        """Bring the instance back to snapshot ``name``; it runs afterwards if it ran before.

        Raise :class:`nova_core.errors.NovaError` if there is no such snapshot.
        """

    @abc.abstractmethod
    def delete_snapshot(self, spec: InstanceSpec, name: str) -> None:
        """Remove snapshot ``name`` (fine if it is already gone)."""

    @abc.abstractmethod
    def logs(self, spec: InstanceSpec, request: LogRequest) -> Iterator[LogLine]:
        """Yield the instance's output lines; with ``request.follow``, keep yielding."""

    def start_attached(self, spec: InstanceSpec) -> AttachedRun | None:
        """Start a created instance for one run whose output and exit status come back to
        this process, without the monitor that keeps a detached instance (``nova run --rm``).

        The instance is otherwise what :meth:`start` makes: :meth:`status`, :meth:`logs`,
        :meth:`stop` and :meth:`delete` work on it while it runs. If this process dies,
        the instance may lose its output. The caller deletes the instance after the run,
        so its writable state need not survive a crash of the host (the capsule driver
        does not sync it); a later :meth:`start` must still work if the delete did not
        happen. Return None when the driver cannot, or not for this spec: the caller
        then uses :meth:`start` and follows :meth:`logs`.
        """
        return None

    def pause(self, spec: InstanceSpec) -> ResourceStatus:
        """Freeze a running instance in place (``paused``); :meth:`resume` lets it go on.

        This default says the driver cannot; drivers that can override both.
        """
        raise NovaError(f"{spec.ref.key}: driver {self.name} cannot pause instances")

    def resume(self, spec: InstanceSpec) -> ResourceStatus:
        """Let a paused instance run again."""
        raise NovaError(f"{spec.ref.key}: driver {self.name} cannot pause instances")

    def check_health(self, spec: InstanceSpec) -> bool | None:
        """Run the instance's health check once: True healthy, False not (yet).

        None means the driver has no health checks; the engine then treats a
        running instance as healthy. Drivers that support ``healthcheck`` override this.
        """
        return None

    def update(self, spec: InstanceSpec, changed: frozenset[str]) -> ResourceStatus:
        """Apply changes to ``changed`` fields in place.

        Called only when ``changed`` is a subset of ``updatable_fields``. This
        default restarts the instance with the new spec, which suits fields that
        take effect at start.
        """
        self.stop(spec, spec.stop_timeout)
        return self.start(spec)
