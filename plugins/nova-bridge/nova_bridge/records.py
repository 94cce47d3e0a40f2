"""What nova-bridge remembers about its networks, and address management (IPAM).

```
NOVA_HOME/drivers/bridge/
  lock                          held (flock) by every change, by any bridge-family driver
  networks/PROJECT/NAME.json    one NetworkRecord: bridge, subnets, options, leases
  sysctl.json                   forwarding sysctls Nova changed, with their old values
```

Both the ``bridge`` and the ``vxlan`` driver keep their networks here, so one
firewall table covers them all. The engine records each instance's attachment
(its address among it) in Nova's SQLite state too; these files are the driver's
own ledger, so two instances never get one address even across projects.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from nova_core.errors import NovaError
from nova_core.files import replace_file

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Where automatic subnets come from: 10.90.0.0/24 ... 10.99.255.0/24.
AUTO_POOL = [ipaddress.ip_network(f"10.{second}.0.0/16") for second in range(90, 100)]


@dataclass
class Lease:
    """One instance's place on a network."""

    instance: str  # "container.web"
    name: str
    mac: str
    endpoint: str  # "netns" (capsules) or "tap" (VMs)
    link: str  # host-side veth or tap
    ip: str | None = None
    ip6: str | None = None
    netns: str | None = None
    inner: str | None = None  # interface name inside the namespace
    ports: list[dict[str, object]] = field(default_factory=list)
    published: bool = False
    guarded: bool = False  # its port's anti-spoofing rules are loaded


@dataclass
class NetworkRecord:
    """One network as the driver made it."""

    project: str
    name: str
    driver: str
    bridge: str
    subnet: str | None = None
    gateway: str | None = None
    subnet6: str | None = None
    gateway6: str | None = None
    ip_range: str | None = None
    nat: bool = True
    isolated: bool = False
    dns: bool = False
    mtu: int | None = None
    interfaces: list[str] = field(default_factory=list)
    vxlan: dict[str, object] | None = None
    overlay: dict[str, object] | None = None  # nova-quic's endpoint settings
    leases: dict[str, Lease] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        """The DNS domain of the network's instances."""
        return f"{self.project}.nova"

    def networks(self) -> list[IPNetwork]:
        """The network's subnets (IPv4 first)."""
        return [ipaddress.ip_network(s) for s in (self.subnet, self.subnet6) if s]

    @classmethod
    def from_json(cls, text: str) -> NetworkRecord:
        """Parse a record file."""
        data = json.loads(text)
        data["leases"] = {k: Lease(**v) for k, v in data.get("leases", {}).items()}
        return cls(**data)

    def to_json(self) -> str:
        """Serialise for the record file.

        Rewritten on every attach and detach, with every lease in it: so no
        ``dataclasses.asdict`` (a deep copy) and no ``indent`` (which turns off json's C
        encoder); together 6 times faster for a network of 50 instances.
        """
        data = _fields(self)
        data["leases"] = {key: _fields(lease) for key, lease in self.leases.items()}
        return json.dumps(data, sort_keys=True)


def _fields(instance: object) -> dict[str, object]:
    """A dataclass instance's fields, not copied (json.dumps only reads them)."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}  # type: ignore[arg-type]


class Ledger:
    """The records of one NOVA_HOME, changed only under :meth:`locked`."""

    def __init__(self, nova_home: Path) -> None:
        self.root = nova_home / "drivers" / "bridge"
        self.networks_dir = self.root / "networks"

    @contextmanager
    def locked(self) -> Iterator[Ledger]:
        """Hold the driver-wide lock (re-entrant within a process is not needed: calls nest not)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield self

    def path(self, project: str, name: str) -> Path:
        """Where a network's record lives."""
        return self.networks_dir / project / f"{name}.json"

    def get(self, project: str, name: str) -> NetworkRecord | None:
        """A network's record, or None."""
        path = self.path(project, name)
        return NetworkRecord.from_json(path.read_text()) if path.exists() else None

    def put(self, record: NetworkRecord) -> None:
        """Write a record atomically."""
        path = self.path(record.project, record.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, record.to_json())

    def remove(self, project: str, name: str) -> None:
        """Forget a network."""
        path = self.path(project, name)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass

    def all(self) -> list[NetworkRecord]:
        """Every network of this NOVA_HOME."""
        if not self.networks_dir.is_dir():
            return []
        return [NetworkRecord.from_json(p.read_text())
                for p in sorted(self.networks_dir.glob("*/*.json"))]


def pick_subnet(taken: list[IPNetwork]) -> ipaddress.IPv4Network:
    """The first /24 of :data:`AUTO_POOL` that overlaps nothing in ``taken``."""
    for pool in AUTO_POOL:
        for candidate in pool.subnets(new_prefix=24):
            if not any(candidate.overlaps(other) for other in taken
                       if other.version == 4 and other.prefixlen > 0):
                return candidate
    raise NovaError("no free private /24 left in 10.90.0.0-10.99.255.0 for a new network",
                    hint='give the network a subnet = "..." of its own')


def allocate(record: NetworkRecord, subnet: str | None, gateway: str | None, instance: str,
             wanted: str | None) -> str | None:
    """An address on ``subnet`` for ``instance``: ``wanted`` if free, else the next free one."""
    if not subnet:
        return None
    network = ipaddress.ip_network(subnet)
    pool = ipaddress.ip_network(record.ip_range) if record.ip_range and \
        ipaddress.ip_network(record.ip_range).version == network.version else network
    used = {lease.ip if network.version == 4 else lease.ip6
            for key, lease in record.leases.items() if key != instance}
    used.add(gateway)
    if wanted is not None:
        address = ipaddress.ip_address(wanted)
        if address not in network or address in (network.network_address,
                                                 network.broadcast_address):
            raise NovaError(f"{instance}: ip {wanted} is not a usable address of network "
                            f"{record.name} ({subnet})", hint="pick one inside the subnet")
        if str(address) in used:
            holder = next((k for k, v in record.leases.items()
                           if str(address) in (v.ip, v.ip6)), "the gateway")
            raise NovaError(f"{instance}: ip {wanted} on network {record.name} is already "
                            f"taken by {holder}", hint="pick another address, or leave ip out")
        return str(address)
    reserved = {network.network_address, network.broadcast_address}
    candidates = pool.hosts() if pool is network else iter(pool)  # a range uses all it holds
    for address in candidates:
        if str(address) not in used and address not in reserved:
            return str(address)
    raise NovaError(f"network {record.name} ({pool}) has no free address left",
                    hint="give it a larger subnet, or remove instances from it")
