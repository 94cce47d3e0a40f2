"""The keys every NovaFile table accepts whatever its driver (the "core keys").

A driver adds its own keys through its ``options_model``; the loader splits a
table into core keys (validated here) and driver keys (validated by the driver).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from nova_core.names import NAME_PATTERN  # noqa: F401 - re-exported
from nova_core.units import parse_size

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def _size(value: object) -> int:
    return parse_size(value)


def parse_duration(value: object) -> float:
    """Seconds from ``5``, ``2.5``, ``"500ms"``, ``"10s"``, ``"1m"``, ``"1h"``."""
    import math

    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '10s'")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError("a duration must be a finite number of seconds, 0 or more")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
            return float(match.group(1)) * factor
    raise ValueError(f"'{value}' is not a duration; use seconds or a string like '500ms', '10s', '1m'")


def _number(value: object) -> object:
    """Refuse booleans where a number is wanted (pydantic would take true as 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def _str_list(value: object) -> object:
    """Accept ``"a"`` as ``["a"]``."""
    return [value] if isinstance(value, str) else value


def _command(value: object) -> object:
    """Accept a command as a string (split like a shell would) or a list."""
    if isinstance(value, str):
        import shlex

        return shlex.split(value)
    return value


def _env(value: object) -> object:
    """Accept ``{K = "v"}`` or ``["K=v"]``; numbers and booleans become strings."""
    if isinstance(value, list):
        result: dict[str, object] = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError("each item of an env list must look like 'NAME=value'")
            key, _, val = item.partition("=")
            result[key] = val
        value = result
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, val in value.items():
            if not key or "=" in key:
                raise ValueError(f"'{key}' is not a variable name")
            if isinstance(val, bool):
                out[key] = "true" if val else "false"
            elif isinstance(val, int | float | str):
                out[key] = str(val)
            else:
                raise ValueError(f"env value of {key} must be a string, number or boolean")
        return out
    return value


Size = Annotated[int, BeforeValidator(_size)]
Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
StrList = Annotated[list[str], BeforeValidator(_str_list)]
Command = Annotated[list[str], BeforeValidator(_command)]
EnvMap = Annotated[dict[str, str], BeforeValidator(_env)]
RestartPolicy = Literal["no", "on-failure", "always", "unless-stopped"]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    driver: str | None = Field(None, description="driver name; the kind's default if absent")


def _canonical_ip(value: str | None, example: str) -> str | None:
    """An IP address in canonical form (so ``fd00::0:1`` and ``fd00::1`` compare equal)."""
    if value is None:
        return None
    import ipaddress

    try:
        return str(ipaddress.ip_address(value))
    except ValueError as error:
        raise ValueError(f"'{value}' is not an IP address like {example}") from error


class _InstanceEntry(_Entry):
    image: str | None = Field(None, description="image path or name")
    cpu: Number | None = Field(None, gt=0, description="virtual CPUs (containers: fractions allowed)")
    memory: Size | None = Field(None, description="memory, e.g. '512Mi', '16Gi'")
    network: StrList = Field(default_factory=list, description="network name(s) to attach to")
    ports: StrList = Field(default_factory=list, description="published ports 'HOST:TARGET[/udp]'")
    ip: str | None = Field(None, description="static address, e.g. '10.1.2.10' (default: the next free)")
    volumes: StrList = Field(default_factory=list, description="'SRC:TARGET[:ro]' bind or volume")
    env: EnvMap = Field(default_factory=dict, description="environment; values are never printed")
    depends_on: StrList = Field(default_factory=list, description="instances to start first")
    restart: RestartPolicy = "no"
    stop_timeout: Duration = Field(10.0, description="seconds before a stop is forced")
    command: Command | None = None


    @field_validator("ip")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return _canonical_ip(value, "10.1.2.10")


class DiskEntry(BaseModel):
    """An extra VM disk."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    path: str
    size: Size | None = None
    format: Literal["qcow2", "raw"] = "qcow2"


def _disk(value: object) -> object:
    """A bare path or a table; without ``format``, raw when the file's name says so."""
    if isinstance(value, str):
        value = {"path": value}
    if isinstance(value, dict) and "format" not in value and isinstance(value.get("path"), str):
        value = {**value, "format": "raw" if value["path"].endswith((".raw", ".img")) else "qcow2"}
    return value


class VmEntry(_InstanceEntry):
    """``[vm.NAME]``: a virtual machine."""

    gpu_passthrough: bool = Field(False, description="pass a free isolated host GPU through")
    devices: StrList = Field(default_factory=list, description="host PCI devices or 'vf:PF/N'")
    disks: list[Annotated[DiskEntry, BeforeValidator(_disk)]] = Field(default_factory=list)
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    user_data: str | None = Field(None, description="cloud-init user-data (path or text)")
    meta_data: str | None = Field(None, description="cloud-init meta-data (path or text)")
    ssh_authorized_keys: StrList = Field(default_factory=list)
    clone: str | None = Field(None, description="name of a VM to make a linked clone of")


class HealthCheckEntry(BaseModel):
    """A health check; ``test`` (compose style) or ``command``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    test: Command | None = None
    command: Command | None = None
    interval: Duration = 5.0
    timeout: Duration = 3.0
    retries: int = Field(3, ge=1)
    start_period: Duration = 0.0

    def argv(self) -> list[str]:
        """The command to run, with compose's ``CMD``/``CMD-SHELL`` prefixes understood."""
        argv = list(self.command or self.test or [])
        if argv[:1] == ["CMD"]:
            return argv[1:]
        if argv[:1] == ["CMD-SHELL"]:
            return ["/bin/sh", "-c", " ".join(argv[1:])]
        return argv


class StorageEntry(BaseModel):
    """``[services.X.storage]``: size of the capsule's writable layer."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    size: Size = Field(description="a hard limit, at least 8Mi")

    @field_validator("size")
    @classmethod
    def _big_enough(cls, value: int) -> int:
        if value < 8 * 2**20:
            raise ValueError(f"{value} bytes is too small for a writable layer; give at least 8Mi")
        return value


class AuthEntry(BaseModel):
    """Registry credentials to pull a capsule's image; never printed."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    username: str | None = None
    password: str | None = None
    token: str | None = None


class ContainerEntry(_InstanceEntry):
    """``[container.NAME]``: a capsule (persistent system container)."""

    capsule: str | None = Field(None, description="OCI image reference, e.g. 'ubuntu:22.04'")
    build: str | None = Field(None, description="folder to build the image from")
    pids: Annotated[int, BeforeValidator(_number)] | None = Field(
        None, ge=1, description="maximum number of processes")
    hostname: str | None = None
    workdir: str | None = None
    user: str | None = None
    uid: int | None = Field(None, ge=0)
    gid: int | None = Field(None, ge=0)
    args: Command | None = None
    healthcheck: HealthCheckEntry | None = None
    storage: StorageEntry | None = None
    auth: AuthEntry | None = None
    devices: StrList = Field(default_factory=list, description="device nodes, e.g. /dev/dri/renderD128")
    gpu: bool = False
    init: bool = Field(False, description="run an init as PID 1 (signals, orphans), as "
                                          "compose's init")

    @field_validator("capsule", "image")
    @classmethod
    def _no_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("an image reference cannot be empty")
        return value


class NetworkEntry(_Entry):
    """``[network.NAME]``: a network."""

    type: Literal["bridge", "overlay", "sriov", "macvlan", "host"] = "bridge"
    subnet: str | None = Field(None, description="CIDR, picked automatically if absent")
    gateway: str | None = None
    dns: bool = Field(False, description="instances resolve each other by name")
    mtu: int | None = Field(None, ge=576, le=65535)
    interfaces: StrList = Field(default_factory=list, description="uplink interfaces to enslave")

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str | None) -> str | None:
        return _canonical_ip(value, "10.1.2.1")

    @field_validator("subnet")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is not None:
            import ipaddress

            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as error:
                raise ValueError(f"'{value}' is not a subnet in CIDR form like 10.1.2.0/24") from error
        return value


class VolumeEntry(_Entry):
    """``[volume.NAME]``: a named volume."""

    size: Size | None = None


ENTRY_MODELS: dict[str, type[_Entry]] = {
    "vm": VmEntry,
    "container": ContainerEntry,
    "network": NetworkEntry,
    "volume": VolumeEntry,
}

#: Default driver per kind; networks by type.
DEFAULT_DRIVERS = {"vm": "qemu", "container": "capsule", "network": "bridge", "volume": "local"}
DEFAULT_NETWORK_DRIVER_BY_TYPE = {"bridge": "bridge", "overlay": "quic", "sriov": "sriov"}


def network_type(table: dict[str, Any]) -> str:
    """A network table's type: as written, else ``sriov`` when it names a PF, else ``bridge``."""
    return str(table.get("type", "sriov" if "sriov" in table else "bridge"))


def default_driver(kind: str, table: dict[str, Any]) -> str:
    """The driver a table uses when it names none."""
    if kind == "network":
        return DEFAULT_NETWORK_DRIVER_BY_TYPE.get(network_type(table), "bridge")
    return DEFAULT_DRIVERS[kind]
