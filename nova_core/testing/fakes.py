"""Drivers that pretend: state in memory, mirrored to JSON under NOVA_HOME.

They follow the driver contract exactly (and pass the contract suites), so the
core's engine and CLI can be tested without hypervisors or kernels. Faults come
from the NovaFile through the drivers' own options:

``fail_on = "start"``   the driver raises a :class:`NovaError` in that call;
``crash_on = "start"``  the process dies there (``os._exit(70)``), as if killed;
``delay = 0.5``         each call sleeps first (to widen race windows).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from nova_core.drivers.base import Driver, DriverContext
from nova_core.drivers.compute import ComputeDriver
from nova_core.drivers.device import DeviceDriver
from nova_core.drivers.models import (
    DeviceAssignment,
    DeviceClaim,
    DeviceInfo,
    DriverOptions,
    InstanceSpec,
    Lifecycle,
    LogLine,
    LogRequest,
    NetworkAttachment,
    NetworkSpec,
    RenderedDetail,
    ResourceKind,
    ResourceRef,
    ResourceSpec,
    ResourceStatus,
    SnapshotInfo,
    VolumeSpec,
)
from nova_core.drivers.network import NetworkDriver
from nova_core.drivers.storage import StorageDriver
from nova_core.errors import NovaError
from nova_core.files import replace_file

FaultPoint = Literal["create", "start", "stop", "delete", "attach", "detach", "snapshot"]


class FakeOptions(DriverOptions):
    """Fault injection, set per resource in the NovaFile."""

    fail_on: FaultPoint | None = None
    crash_on: FaultPoint | None = None
    delay: float = 0.0


class _FakeStore:
    """A dict kept in memory and mirrored to ``path`` (read and written under a flock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    @contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                self.data = json.loads(self.path.read_text() or "{}")
            yield self.data
            replace_file(self.path, json.dumps(self.data, indent=1, sort_keys=True))


class _FakeBase(Driver):
    options_model: ClassVar[type[DriverOptions]] = FakeOptions

    def __init__(self, name: str, context: DriverContext) -> None:
        super().__init__(name, context)
        self.store = _FakeStore(context.driver_dir(name) / f"{self.kind.value}.json")

    def _fault(self, spec: ResourceSpec | None, point: FaultPoint) -> None:
        options = spec.options if spec is not None else None
        if not isinstance(options, FakeOptions):
            return
        if options.delay:
            time.sleep(options.delay)
        if options.crash_on == point:
            os._exit(70)
        if options.fail_on == point:
            raise NovaError(f"fake driver: injected failure in {point}")

    @staticmethod
    def _key(ref: ResourceRef) -> str:
        return f"{ref.project}/{ref.kind.value}/{ref.name}"

    def render(self, spec: ResourceSpec) -> list[RenderedDetail]:
        """A JSON view of what the fake would record."""
        return [RenderedDetail(title=f"fake {self.kind.value}",
                               body=json.dumps({"name": spec.ref.name, "driver": self.name}),
                               format="json")]


class FakeComputeDriver(_FakeBase, ComputeDriver):
    """Runs "instances" that are records; serves VMs and containers.

    ``cpu`` and ``memory`` are updatable in place (to exercise ``update``).
    """

    instance_kinds: ClassVar[frozenset[ResourceKind]] = frozenset(
        {ResourceKind.VM, ResourceKind.CONTAINER})
    updatable_fields: ClassVar[frozenset[str]] = frozenset({"cpu", "memory"})

    def _status(self, spec: InstanceSpec, record: dict[str, Any] | None) -> ResourceStatus:
        if record is None:
            return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
        return ResourceStatus(ref=spec.ref, state=Lifecycle(record["state"]),
                              data={"networks": ",".join(record.get("networks", []))})

    def create(self, spec: InstanceSpec) -> ResourceStatus:
        """Record the instance as created."""
        self._fault(spec, "create")
        with self.store.edit() as data:
            record = data.setdefault(self._key(spec.ref), {"state": "created", "log": []})
            record["networks"] = [a.network for a in spec.attachments]
            record["log"].append("created")
            return self._status(spec, record)

    def start(self, spec: InstanceSpec) -> ResourceStatus:
        """Mark running."""
        self._fault(spec, "start")
        with self.store.edit() as data:
            record = data.get(self._key(spec.ref))
            if record is None:
                raise NovaError(f"fake: {spec.ref.key} does not exist")
            record["state"] = "running"
            record["log"].append("started")
            return self._status(spec, record)

    def stop(self, spec: InstanceSpec, timeout: float) -> ResourceStatus:
        """Mark stopped."""
        self._fault(spec, "stop")
        with self.store.edit() as data:
            record = data.get(self._key(spec.ref))
            if record is None:
                raise NovaError(f"fake: {spec.ref.key} does not exist")
            record["state"] = "stopped"
            record["log"].append("stopped")
            return self._status(spec, record)

    def delete(self, spec: InstanceSpec) -> None:
        """Forget the instance (fine if it never existed)."""
        self._fault(spec, "delete")
        with self.store.edit() as data:
            data.pop(self._key(spec.ref), None)

    def status(self, spec: InstanceSpec) -> ResourceStatus:
        """The recorded state."""
        with self.store.edit() as data:
            return self._status(spec, data.get(self._key(spec.ref)))

    def snapshot(self, spec: InstanceSpec, name: str) -> SnapshotInfo:
        """Record a snapshot name."""
        self._fault(spec, "snapshot")
        with self.store.edit() as data:
            record = data.get(self._key(spec.ref))
            if record is None:
                raise NovaError(f"fake: {spec.ref.key} does not exist")
            record.setdefault("snapshots", []).append(name)
            record["log"].append(f"snapshot {name}")
        return SnapshotInfo(ref=spec.ref, name=name, created_at=datetime.now(UTC))

    def restore_snapshot(self, spec: InstanceSpec, name: str) -> ResourceStatus:
        """Record the restore."""
        with self.store.edit() as data:
            record = data.get(self._key(spec.ref))
            if record is None or name not in record.get("snapshots", []):
                raise NovaError(f"fake: {spec.ref.key} has no snapshot {name}")
            record["log"].append(f"restore {name}")
            return self._status(spec, record)

    def delete_snapshot(self, spec: InstanceSpec, name: str) -> None:
        """Forget the snapshot."""
        with self.store.edit() as data:
            record = data.get(self._key(spec.ref))
            if record is not None and name in record.get("snapshots", []):
                record["snapshots"].remove(name)

    def logs(self, spec: InstanceSpec, request: LogRequest) -> Iterator[LogLine]:
        """The lifecycle calls made so far, one line each."""
        with self.store.edit() as data:
            record = data.get(self._key(spec.ref))
        lines = list(record["log"]) if record else []
        if request.tail is not None:
            lines = lines[-request.tail:] if request.tail else []
        for line in lines:
            yield LogLine(text=line, timestamp=datetime.now(UTC))

    def update(self, spec: InstanceSpec, changed: frozenset[str]) -> ResourceStatus:
        """Apply cpu/memory in place."""
        with self.store.edit() as data:
            record = data[self._key(spec.ref)]
            record["log"].append("updated " + ",".join(sorted(changed)))
            return self._status(spec, record)


class FakeNetworkDriver(_FakeBase, NetworkDriver):
    """Networks as records; hands out addresses from the subnet (default 10.99.0.0/24)."""

    def create(self, spec: NetworkSpec) -> ResourceStatus:
        """Record the network."""
        self._fault(spec, "create")
        with self.store.edit() as data:
            record = data.setdefault(self._key(spec.ref), {"members": {}})
            record["subnet"] = spec.subnet or "10.99.0.0/24"
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED,
                              data={"subnet": record["subnet"]})

    def delete(self, spec: NetworkSpec) -> None:
        """Forget the network."""
        self._fault(spec, "delete")
        with self.store.edit() as data:
            data.pop(self._key(spec.ref), None)

    def status(self, spec: NetworkSpec) -> ResourceStatus:
        """``created`` or ``missing``."""
        with self.store.edit() as data:
            record = data.get(self._key(spec.ref))
        if record is None:
            return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED,
                              data={"subnet": record["subnet"],
                                    "members": ",".join(sorted(record["members"]))})

    def attach(self, spec: NetworkSpec, instance: InstanceSpec) -> NetworkAttachment:
        """Give the instance the next free address."""
        import ipaddress

        self._fault(spec, "attach")
        with self.store.edit() as data:
            record = data.get(self._key(spec.ref))
            if record is None:
                raise NovaError(f"fake: network {spec.ref.name} does not exist")
            subnet = ipaddress.ip_network(record["subnet"])
            used = set(record["members"].values())
            hosts = list(subnet.hosts())
            address = next(str(h) for h in hosts[1:] if str(h) not in used)
            record["members"][instance.ref.name] = address
        return NetworkAttachment(network=spec.ref.name, driver=self.name, instance=instance.ref,
                                 endpoint="netns", ipv4=address, gateway=str(hosts[0]))

    def detach(self, spec: NetworkSpec, attachment: NetworkAttachment) -> None:
        """Release the address (works from a pending attachment too)."""
        self._fault(spec, "detach")
        with self.store.edit() as data:
            record = data.get(self._key(spec.ref))
            if record is not None:
                record["members"].pop(attachment.instance.name, None)


class FakeStorageDriver(_FakeBase, StorageDriver):
    """Volumes as records."""

    def create(self, spec: VolumeSpec) -> ResourceStatus:
        """Record the volume."""
        self._fault(spec, "create")
        with self.store.edit() as data:
            data[self._key(spec.ref)] = {"size": spec.size}
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED,
                              data={"path": f"/fake/{spec.ref.name}"})

    def delete(self, spec: VolumeSpec) -> None:
        """Forget the volume."""
        self._fault(spec, "delete")
        with self.store.edit() as data:
            data.pop(self._key(spec.ref), None)

    def status(self, spec: VolumeSpec) -> ResourceStatus:
        """``created`` or ``missing``."""
        with self.store.edit() as data:
            exists = self._key(spec.ref) in data
        if not exists:
            return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED,
                              data={"path": f"/fake/{spec.ref.name}"})


class FakeDeviceDriver(_FakeBase, DeviceDriver):
    """Two fake GPUs (0000:01:00.0, 0000:02:00.0), reserved one holder at a time."""

    DEVICES: ClassVar[tuple[str, ...]] = ("0000:01:00.0", "0000:02:00.0")

    def list_devices(self) -> list[DeviceInfo]:
        """The two GPUs and who holds them."""
        with self.store.edit() as data:
            held = dict(data.get("held", {}))
        return [DeviceInfo(address=a, description="Fake GPU", is_gpu=True,
                           reserved_by=held.get(a)) for a in self.DEVICES]

    def reserve(self, claim: DeviceClaim) -> list[DeviceAssignment]:
        """Reserve the asked addresses, or the first free GPU for ``gpu``."""
        holder = str(claim.holder)
        with self.store.edit() as data:
            held = data.setdefault("held", {})
            wanted = list(claim.addresses)
            if claim.gpu:
                free = [a for a in self.DEVICES if held.get(a) in (None, holder)]
                if not free:
                    raise NovaError("fake: no free GPU")
                wanted.append(free[0])
            for address in wanted:
                if address not in self.DEVICES:
                    raise NovaError(f"fake: no device {address}")
                if held.get(address) not in (None, holder):
                    raise NovaError(f"fake: {address} is held by {held[address]}")
            for address in wanted:
                held[address] = holder
        return [DeviceAssignment(address=a, driver=self.name, kind="pci") for a in wanted]

    def release(self, holder: ResourceRef) -> None:
        """Release everything ``holder`` holds."""
        with self.store.edit() as data:
            held = data.setdefault("held", {})
            for address in [a for a, h in held.items() if h == str(holder)]:
                del held[address]

    def render(self, spec: ResourceSpec) -> list[RenderedDetail]:
        """Nothing to render for devices."""
        return []
