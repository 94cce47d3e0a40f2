"""The storage driver kind: named volumes."""

from __future__ import annotations

import abc
from typing import ClassVar

from nova_core.drivers.base import Driver
from nova_core.drivers.models import DriverKind, ResourceStatus, VolumeSpec


class StorageDriver(Driver):
    """Makes named volumes that instances mount.

    ``status(...).data["path"]`` must be the host path of the volume's data once
    it exists, so compute drivers can mount it.
    """

    kind: ClassVar[DriverKind] = DriverKind.STORAGE

    @abc.abstractmethod
    def create(self, spec: VolumeSpec) -> ResourceStatus:
        """Make the volume (idempotent)."""

    @abc.abstractmethod
    def delete(self, spec: VolumeSpec) -> None:
        """Remove the volume and its data."""

    @abc.abstractmethod
    def status(self, spec: VolumeSpec) -> ResourceStatus:
        """Observe the volume."""

    def update(self, spec: VolumeSpec, changed: frozenset[str]) -> ResourceStatus:
        """Apply changes to ``changed`` (a subset of ``updatable_fields``).

        This default suits fields that are only recorded: it changes nothing on the host.
        """
        return self.status(spec)
