"""The device driver kind: host devices handed to instances (PCI passthrough, VFs)."""

from __future__ import annotations

import abc
from typing import ClassVar

from nova_core.drivers.base import Driver
from nova_core.drivers.models import (
    DeviceAssignment,
    DeviceClaim,
    DeviceInfo,
    DriverKind,
    ResourceRef,
)


class DeviceDriver(Driver):
    """Inventories host devices and reserves them for one instance at a time."""

    kind: ClassVar[DriverKind] = DriverKind.DEVICE

    @abc.abstractmethod
    def list_devices(self) -> list[DeviceInfo]:
        """Return every device this driver can hand out, with its reservation."""

    @abc.abstractmethod
    def reserve(self, claim: DeviceClaim) -> list[DeviceAssignment]:
        """Reserve devices for ``claim.holder``; error naming the holder if taken."""

    @abc.abstractmethod
    def release(self, holder: ResourceRef) -> None:
        """Release every device reserved by ``holder`` and restore host drivers."""
