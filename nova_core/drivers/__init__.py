"""The driver kinds: abstract base classes and the typed records they exchange."""

from nova_core.drivers.base import Driver, DriverContext
from nova_core.drivers.compute import ComputeDriver
from nova_core.drivers.device import DeviceDriver
from nova_core.drivers.models import DriverKind, DriverOptions, ResourceKind
from nova_core.drivers.network import NetworkDriver
from nova_core.drivers.storage import StorageDriver

#: The abstract class every entry point of a group must subclass.
BASE_CLASS: dict[DriverKind, type[Driver]] = {
    DriverKind.COMPUTE: ComputeDriver,
    DriverKind.NETWORK: NetworkDriver,
    DriverKind.STORAGE: StorageDriver,
    DriverKind.DEVICE: DeviceDriver,
}

__all__ = [
    "BASE_CLASS",
    "ComputeDriver",
    "DeviceDriver",
    "Driver",
    "DriverContext",
    "DriverKind",
    "DriverOptions",
    "NetworkDriver",
    "ResourceKind",
    "StorageDriver",
]
