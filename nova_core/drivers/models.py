"""Typed records that drivers take and return.

Every driver method takes and returns these pydantic models; nothing crosses the
driver boundary as an untyped dict.
"""

from __future__ import annotations

import enum
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny


class ResourceKind(enum.StrEnum):
    """The four kinds of table in a NovaFile."""

    VM = "vm"
    CONTAINER = "container"
    NETWORK = "network"
    VOLUME = "volume"


class DriverKind(enum.StrEnum):
    """The four kinds of driver; each has its own entry-point group ``nova_core.<kind>``."""

    COMPUTE = "compute"
    NETWORK = "network"
    STORAGE = "storage"
    DEVICE = "device"

    @property
    def group(self) -> str:
        """The entry-point group that lists drivers of this kind."""
        return f"nova_core.{self.value}"


DRIVER_KIND_OF: dict[ResourceKind, DriverKind] = {
    ResourceKind.VM: DriverKind.COMPUTE,
    ResourceKind.CONTAINER: DriverKind.COMPUTE,
    ResourceKind.NETWORK: DriverKind.NETWORK,
    ResourceKind.VOLUME: DriverKind.STORAGE,
}


class Lifecycle(enum.StrEnum):
    """Observed state of a resource."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    FAILED = "failed"
    MISSING = "missing"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class ResourceRef(_Record):
    """Identifies one resource of one project: ``dev-lab`` / ``vm`` / ``win11``."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    project: str
    kind: ResourceKind
    name: str

    @property
    def key(self) -> str:
        """The table path of the resource in the NovaFile, e.g. ``vm.win11``."""
        return f"{self.kind.value}.{self.name}"

    def __str__(self) -> str:
        return f"{self.project}/{self.key}"


class DriverOptions(_Record):
    """Base of every driver's own configuration model.

    A driver subclasses this and sets it as ``options_model`` on its class; the
    fields become keys that the driver's NovaFile tables accept, validated by the
    core before the driver runs. Unknown keys are errors.
    """


class RenderedDetail(_Record):
    """Something concrete a driver will do, shown by ``nova plan``.

    ``format`` tells renderers how to show ``body``: ``argv`` (one argument per
    line), ``xml``, ``json``, ``nft`` or ``text``.
    """

    title: str
    body: str
    format: Literal["argv", "xml", "json", "nft", "text"] = "text"


class PortMapping(_Record):
    """A published port: ``8080:80`` or ``127.0.0.1:8080:80/udp``."""

    host_ip: str | None = None
    host_port: int = Field(ge=1, le=65535)
    target_port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"


class VolumeMount(_Record):
    """A mount into an instance: a host path (bind) or a named Nova volume.

    For a named volume the engine fills ``host_path`` from the storage driver
    before the compute driver sees the spec.
    """

    type: Literal["bind", "volume"]
    source: str
    target: str
    read_only: bool = False
    host_path: str | None = None


class HealthCheck(_Record):
    """A command run inside an instance to tell whether it is healthy."""

    command: list[str]
    interval: float = 5.0
    timeout: float = 3.0
    retries: int = 3
    start_period: float = 0.0


class NetworkAttachment(_Record):
    """What a network driver made for one instance, handed to the compute driver.

    ``endpoint`` says how the instance plugs in: ``tap`` (a tap device name for a
    VM), ``netns`` (a network namespace path for a capsule to join), ``vf`` (an SR-IOV
    virtual function bound to vfio-pci for a VM: ``details["address"]`` is its PCI
    address, ``mac`` the MAC set on it), ``host`` or ``user`` (QEMU user-mode).
    ``details`` carries driver-specific strings.

    The engine records an attachment with ``endpoint="none"`` *before* calling
    ``attach``, so that after a crash it can ask the driver to ``detach`` it:
    drivers must clean up from ``network`` and ``instance`` alone.
    """

    network: str
    driver: str
    instance: ResourceRef
    endpoint: Literal["tap", "netns", "vf", "host", "user", "none"]
    interface: str | None = None
    mac: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    gateway: str | None = None
    dns_servers: list[str] = Field(default_factory=list)
    details: dict[str, str] = Field(default_factory=dict)


class DeviceAssignment(_Record):
    """A host device reserved for an instance by a device driver."""

    address: str
    driver: str
    kind: Literal["pci", "vf", "node"]
    options: dict[str, str] = Field(default_factory=dict)


class ResourceSpec(_Record):
    """What the NovaFile asks for, resolved and validated: the input of every driver call."""

    ref: ResourceRef
    driver: str
    base_dir: Path = Field(description="folder of the NovaFile; relative paths start here")
    options: SerializeAsAny[DriverOptions] = Field(default_factory=DriverOptions)


#: Network names that need no network driver: nothing is attached, no port is published.
BUILTIN_NETWORKS = frozenset({"host", "none", "user"})


def on_nova_network(networks: list[str]) -> bool:
    """True if any of ``networks`` is a Nova network (one a network driver makes)."""
    return any(name not in BUILTIN_NETWORKS for name in networks)


class InstanceSpec(ResourceSpec):
    """Fields every compute instance (VM or container) has."""

    image: str | None = None
    cpu: float | None = None
    memory: int | None = None
    env: dict[str, str] = Field(default_factory=dict)
    ports: list[PortMapping] = Field(default_factory=list)
    volumes: list[VolumeMount] = Field(default_factory=list)
    networks: list[str] = Field(default_factory=list)
    ip: str | None = Field(None, description="static address on the network whose subnet holds it")
    depends_on: list[str] = Field(default_factory=list)
    restart: Literal["no", "on-failure", "always", "unless-stopped"] = "no"
    stop_timeout: float = 10.0
    command: list[str] | None = None
    attachments: list[NetworkAttachment] = Field(default_factory=list)
    assigned_devices: list[DeviceAssignment] = Field(default_factory=list)


class DiskSpec(_Record):
    """An extra VM disk, created if missing."""

    path: str
    size: int | None = None
    format: Literal["qcow2", "raw"] = "qcow2"


class VmSpec(InstanceSpec):
    """A virtual machine."""

    gpu_passthrough: bool = False
    devices: list[str] = Field(default_factory=list)
    disks: list[DiskSpec] = Field(default_factory=list)
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    user_data: str | None = None
    meta_data: str | None = None
    ssh_authorized_keys: list[str] = Field(default_factory=list)
    clone: str | None = None


class ContainerSpec(InstanceSpec):
    """A capsule: a persistent system container."""

    hostname: str | None = None
    workdir: str | None = None
    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    args: list[str] | None = None
    pids: int | None = None
    healthcheck: HealthCheck | None = None
    storage_size: int | None = None
    build: str | None = None
    devices: list[str] = Field(default_factory=list)
    gpu: bool = False
    init: bool = Field(False, description="an init as PID 1 that passes signals on and reaps "
                                          "orphans (catatonit)")
    registry_auth: dict[str, str] = Field(default_factory=dict, description="never printed")


class NetworkSpec(ResourceSpec):
    """A network."""

    type: str = "bridge"
    subnet: str | None = None
    gateway: str | None = None
    dns: bool = False
    mtu: int | None = None
    interfaces: list[str] = Field(default_factory=list)


class VolumeSpec(ResourceSpec):
    """A named volume."""

    size: int | None = None


class ResourceStatus(_Record):
    """What a driver observes about one resource.

    ``data`` holds short strings the driver wants shown or remembered (a PID, a
    bridge name, a path); the engine records it in state with the status.
    """

    ref: ResourceRef
    state: Lifecycle
    detail: str = ""
    data: dict[str, str] = Field(default_factory=dict)
    exit_code: int | None = None


class SnapshotInfo(_Record):
    """A snapshot of an instance."""

    ref: ResourceRef
    name: str
    created_at: datetime
    size: int | None = None
    memory: bool = False
    detail: str = ""


class LogRequest(_Record):
    """What part of an instance's log to read."""

    tail: int | None = None
    follow: bool = False
    timestamps: bool = False


class LogLine(_Record):
    """One line of an instance's output."""

    text: str
    stream: Literal["stdout", "stderr", "serial", "system"] = "stdout"
    timestamp: datetime | None = None


class DeviceClaim(_Record):
    """A VM's request for host devices (``gpu_passthrough``, ``devices``)."""

    holder: ResourceRef
    gpu: bool = False
    addresses: list[str] = Field(default_factory=list)


class DeviceInfo(_Record):
    """One host device as a device driver sees it."""

    address: str
    description: str = ""
    driver: str | None = None
    group: str | None = None
    is_gpu: bool = False
    reserved_by: str | None = None
