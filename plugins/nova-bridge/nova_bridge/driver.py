"""The ``bridge`` network driver, and ``vxlan`` beside it (a bridge joined to a VXLAN device).

A network is a Linux bridge holding the gateway address(es), a share of Nova's
nftables table (NAT, isolation, published ports) and, when it needs one, a
supervised dnsmasq. A capsule joins through a veth pair whose inner end (``eth0``)
sits in a network namespace named after the capsule, configured directly (address,
default route; resolv.conf is the capsule driver's business, from the attachment's
``dns``). A VM joins through a tap the compute driver opens, and gets its address
by DHCP, reserved by MAC.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from nova_bridge import firewall
from nova_bridge.dns import DnsService
from nova_bridge.links import Links, configure_inside, link_name, links_inside
from nova_bridge.records import Lease, Ledger, NetworkRecord, allocate, pick_subnet
from nova_core.drivers.models import (
    DriverOptions,
    InstanceSpec,
    Lifecycle,
    NetworkAttachment,
    NetworkSpec,
    RenderedDetail,
    ResourceKind,
    ResourceStatus,
)
from nova_core.drivers.network import NetworkDriver
from nova_core.errors import NovaError
from nova_core.hostinfo import netns
from nova_core.names import home_digest, mac_address

VXLAN_OVERHEAD = 50


def _cidr(value: str | None) -> str | None:
    if value is not None:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError as error:
            raise ValueError(f"'{value}' is not a subnet in CIDR form") from error
    return value


class BridgeOptions(DriverOptions):
    """Keys the bridge driver adds to ``[network.NAME]``."""

    nat: bool = Field(True, description="masquerade traffic leaving the network")
    isolated: bool = Field(False, description="no traffic in or out beyond the bridge")
    subnet6: str | None = Field(None, description="an IPv6 subnet beside the IPv4 one")
    ip_range: str | None = Field(None, description="allocate only from this part of the subnet")

    _cidrs = field_validator("subnet6", "ip_range")(_cidr)


class VxlanOptions(BridgeOptions):
    """Keys the vxlan driver adds: the segment id, UDP port and the other hosts."""

    vni: int = Field(ge=1, le=16_777_215, description="VXLAN network identifier")
    port: int = Field(4789, ge=1, le=65535, description="UDP port of the VXLAN underlay")
    peers: list[str] = Field(default_factory=list, description="underlay addresses of the other hosts")
    local: str | None = Field(None, description="this host's underlay address")

    @field_validator("peers")
    @classmethod
    def _addresses(cls, peers: list[str]) -> list[str]:
        for peer in peers:
            try:
                ipaddress.ip_address(peer)
            except ValueError as error:
                raise ValueError(f"peer '{peer}' is not an IP address") from error
        return peers


class BridgeDriver(NetworkDriver):
    """``[network.NAME] type = "bridge"``."""

    options_model: ClassVar[type[DriverOptions]] = BridgeOptions
    updatable_fields: ClassVar[frozenset[str]] = frozenset({"dns", "nat", "isolated"})

    # -- helpers -------------------------------------------------------------------
    @property
    def ledger(self) -> Ledger:
        """The driver's records (shared by bridge and vxlan)."""
        return Ledger(self.context.nova_home)

    def _bridge(self, spec: NetworkSpec) -> str:
        return link_name("nvb", self.context.nova_home, spec.ref.project, spec.ref.name)

    def own_sockets(self) -> set[tuple[str, str, int]]:
        """The DNS port of every gateway whose network runs Nova's DNS: dnsmasq binds it,
        and the firewall keeps it out of every published port's DNAT (own_dns_rules)."""
        return {(protocol, gateway, 53) for record in self.ledger.all() if record.dns
                for gateway in (record.gateway, record.gateway6) if gateway
                for protocol in ("udp", "tcp")}

    def dns_service(self, record: NetworkRecord) -> DnsService:
        """The dnsmasq of ``record``."""
        return DnsService(net_run_root(self.context.nova_home) / record.bridge,
                          self.ledger.root / "dns" / record.project / record.name)

    def _mtu(self, spec: NetworkSpec) -> int | None:
        return spec.mtu

    def _new_record(self, spec: NetworkSpec, taken: list) -> NetworkRecord:  # noqa: ANN001
        options = spec.options
        subnet = spec.subnet
        subnet6 = getattr(options, "subnet6", None)
        if subnet and ipaddress.ip_network(subnet, strict=False).version == 6:
            subnet, subnet6 = None, subnet
        if subnet is None and subnet6 is None:
            subnet = str(pick_subnet(taken))
        subnet = _cidr(subnet)
        gateway = gateway6 = None
        for value in (subnet, subnet6):
            if not value:
                continue
            network = ipaddress.ip_network(value)
            if network.num_addresses < 4:
                raise NovaError(f"network {spec.ref.name}: subnet {value} is too small",
                                hint="use at least a /30 (IPv4) or /126 (IPv6)")
            given = spec.gateway if spec.gateway and \
                ipaddress.ip_address(spec.gateway).version == network.version else None
            if given and ipaddress.ip_address(given) not in network:
                raise NovaError(f"network {spec.ref.name}: gateway {given} is not in {value}",
                                hint="pick a gateway inside the subnet, or leave it out")
            chosen = str(ipaddress.ip_address(given)) if given else str(next(network.hosts()))
            if network.version == 4:
                gateway = chosen
            else:
                gateway6 = chosen
        if spec.gateway and str(ipaddress.ip_address(spec.gateway)) not in (gateway, gateway6):
            raise NovaError(f"network {spec.ref.name}: gateway {spec.gateway} fits no subnet "
                            "of the network")
        ip_range = getattr(options, "ip_range", None)
        if ip_range and not any(ipaddress.ip_network(ip_range).subnet_of(n) for n in
                                [ipaddress.ip_network(s) for s in (subnet, subnet6) if s]
                                if n.version == ipaddress.ip_network(ip_range).version):
            raise NovaError(f"network {spec.ref.name}: ip_range {ip_range} is not inside "
                            "the subnet")
        return NetworkRecord(project=spec.ref.project, name=spec.ref.name, driver=self.name,
                             bridge=self._bridge(spec), subnet=subnet, gateway=gateway,
                             subnet6=subnet6, gateway6=gateway6, ip_range=ip_range,
                             nat=getattr(options, "nat", True),
                             isolated=getattr(options, "isolated", False), dns=spec.dns,
                             mtu=self._mtu(spec), interfaces=list(spec.interfaces))

    def _sync_host(self, ledger: Ledger) -> None:
        """Forwarding sysctls and the firewall tables for every network of this NOVA_HOME.

        Every lease then has its anti-spoofing rules loaded (``guarded``). Attaching
        does not reload the tables (an attached instance has not started yet, and one
        nft transaction costs about 20 ms); starting does, and so does removing a
        guarded or published instance.
        """
        records = ledger.all()
        firewall.Forwarding(ledger.root).sync(records)
        firewall.apply(firewall.table_name(self.context.nova_home), records)
        for record in records:
            if any(not lease.guarded for lease in record.leases.values()):
                for lease in record.leases.values():
                    lease.guarded = True
                ledger.put(record)

    def _addresses(self, record: NetworkRecord) -> list[tuple[str, int]]:
        found = []
        for subnet, gateway in ((record.subnet, record.gateway),
                                (record.subnet6, record.gateway6)):
            if subnet and gateway:
                found.append((gateway, ipaddress.ip_network(subnet).prefixlen))
        return found

    def _make_links(self, links: Links, record: NetworkRecord) -> None:
        """Everything on the host for ``record`` except leases (idempotent)."""
        links.ensure_bridge(record.bridge, record.mtu, self._addresses(record))
        knob = Path(f"/proc/sys/net/ipv4/conf/{record.bridge}/route_localnet")
        if knob.exists():  # ports published on 127.0.0.1 are DNATed onto the bridge
            knob.write_text("1\n")
        for uplink in record.interfaces:
            links.enslave(uplink, record.bridge)
        if record.mtu and record.interfaces:
            links.keep_mtu(record.bridge, record.mtu)

    def _check_uplinks(self, links: Links, spec: NetworkSpec) -> None:
        for uplink in spec.interfaces:
            if not links.exists(uplink):
                raise NovaError(f"network {spec.ref.name}: interface {uplink} does not exist",
                                hint="ip link lists the host's interfaces")
            problem = links.uplink_problem(uplink)
            if problem and not self.context.force:
                raise NovaError(
                    f"network {spec.ref.name}: enslaving {uplink} to the bridge would cut the "
                    f"host's connectivity: {problem}",
                    hint="move the host's address and default route to the bridge yourself, "
                         "or add --force (nova up --force, nova net create --force) if you are "
                         "on the console")

    # -- contract ------------------------------------------------------------------------
    def render(self, spec: NetworkSpec) -> list[RenderedDetail]:  # type: ignore[override]
        """The bridge, subnet, nft rules and dnsmasq configuration the network would get."""
        record = self.ledger.get(spec.ref.project, spec.ref.name)
        if record is None:
            try:
                record = self._new_record(spec, [])
            except NovaError as error:
                return [RenderedDetail(title="error", body=error.message)]
            if not spec.subnet:
                record.subnet = "<a free private /24, picked at create>"
        known = "<" not in str(record.subnet)
        rules = firewall.table_rules([record], links=()) if known else {}
        text = [f"bridge {record.bridge} subnet {record.subnet or '-'} gateway "
                f"{record.gateway or '-'}" + (f" subnet6 {record.subnet6}" if record.subnet6 else "")]
        for chain, items in rules.items():
            for _expressions, comment in items:
                family, _, name = chain.partition(" ")
                text.append(f"{family} {firewall.table_name(self.context.nova_home)} {name}: "
                            f"{comment}")
        detail = [RenderedDetail(title="network", body="\n".join(text))]
        if DnsService.wanted(record) and known:
            detail.append(RenderedDetail(title="dnsmasq.conf",
                                         body=self.dns_service(record).config(record)))
        return detail

    def create(self, spec: NetworkSpec) -> ResourceStatus:
        """Make the bridge, its addresses, firewall share and dnsmasq (safe to repeat)."""
        with self.ledger.locked() as ledger, Links() as links:
            record = ledger.get(spec.ref.project, spec.ref.name)
            if record is None:
                self._check_uplinks(links, spec)
                taken = links.taken_networks() + [n for r in ledger.all() for n in r.networks()]
                record = self._new_record(spec, taken)
                if spec.subnet:
                    clash = [r.name for r in ledger.all() if any(
                        n.overlaps(m) for n in r.networks() for m in record.networks())]
                    if clash:
                        raise NovaError(f"network {spec.ref.name}: subnet {spec.subnet} overlaps "
                                        f"network {clash[0]}", hint="pick another subnet")
            ledger.put(record)  # recorded first: a crash from here on is cleaned by delete
            try:
                self._make_links(links, record)
                self._make_extra(links, record, spec)
                self._sync_host(ledger)
                if DnsService.wanted(record):
                    self.dns_service(record).ensure_running(record)
            except BaseException:
                self._destroy(ledger, links, record)
                raise
        return self.status(spec)

    # Hooks for the overlays (vxlan here, quic in nova-quic): the bridge adds nothing.
    def _make_extra(self, links: Links, record: NetworkRecord, spec: NetworkSpec) -> None:
        """Make what the network has beside the bridge (idempotent)."""

    def _remove_extra(self, links: Links, record: NetworkRecord) -> None:
        """Remove what :meth:`_make_extra` made; fine if it is gone."""

    def _extra_problems(self, record: NetworkRecord) -> list[str]:
        """What is missing on the host beside the bridge (for :meth:`status`)."""
        return []

    def _extra_inspect(self, record: NetworkRecord) -> dict[str, object]:
        """What ``nova net inspect`` shows beside the bridge."""
        return {}

    def _destroy(self, ledger: Ledger, links: Links, record: NetworkRecord) -> None:
        self._remove_extra(links, record)
        self.dns_service(record).stop()
        for lease in record.leases.values():
            self._remove_lease_links(links, lease)
        for uplink in record.interfaces:
            links.release(uplink)
        links.delete(record.bridge)
        ledger.remove(record.project, record.name)
        self._sync_host(ledger)

    def delete(self, spec: NetworkSpec) -> None:
        """Remove the bridge, its leases' links, dnsmasq and its rules."""
        with self.ledger.locked() as ledger, Links() as links:
            record = ledger.get(spec.ref.project, spec.ref.name)
            if record is None:  # never recorded (or already gone): clean by name
                links.delete(self._bridge(spec))
                self._sync_host(ledger)
                return
            self._destroy(ledger, links, record)

    def status(self, spec: NetworkSpec) -> ResourceStatus:
        """Created when the bridge is up (and dnsmasq runs if it should); stopped when
        something recorded is missing on the host (after a reboot, say): ``update``
        then remakes it without losing the network's addresses. Never changes the host.
        """
        record = self.ledger.get(spec.ref.project, spec.ref.name)
        if record is None:
            return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
        with Links() as links:
            up = links.is_up(record.bridge)
        problems = []
        if not up:
            problems.append(f"bridge {record.bridge} is missing")
        loaded = firewall.loaded_comments(firewall.table_name(self.context.nova_home), record)
        if loaded is None:
            problems.append("its nftables rules are missing")
        elif loaded != firewall.rule_comments(self.ledger.all(), record):
            problems.append("its nftables rules are out of date")
        if DnsService.wanted(record) and self.dns_service(record).supervisor_pid() is None:
            problems.append("dnsmasq is not running")
        problems += self._extra_problems(record)
        data = {"bridge": record.bridge, "subnet": record.subnet or "",
                "gateway": record.gateway or ""}
        if record.subnet6:
            data.update(subnet6=record.subnet6, gateway6=record.gateway6 or "")
        return ResourceStatus(ref=spec.ref, state=Lifecycle.STOPPED if problems else Lifecycle.CREATED,
                              detail="; ".join(problems), data={k: v for k, v in data.items() if v})

    def update(self, spec: NetworkSpec, changed: frozenset[str]) -> ResourceStatus:
        """Apply a change of ``dns``, ``nat`` or ``isolated`` in place; with nothing
        changed, remake whatever the host lost (bridge, rules, dnsmasq, VM taps)."""
        with self.ledger.locked() as ledger, Links() as links:
            record = ledger.get(spec.ref.project, spec.ref.name)
            if record is None:
                raise NovaError(f"network {spec.ref.name} is not recorded by the bridge driver",
                                hint="nova up makes it")
            record.dns = spec.dns
            record.nat = getattr(spec.options, "nat", True)
            record.isolated = getattr(spec.options, "isolated", False)
            ledger.put(record)
            self._make_links(links, record)
            self._make_extra(links, record, spec)
            for lease in record.leases.values():
                if lease.endpoint == "tap" or (lease.netns and netns.exists(Path(lease.netns))):
                    self._make_lease_links(links, record, lease)
            ledger.put(record)
            self._sync_host(ledger)
            service = self.dns_service(record)
            if changed & {"dns"}:
                service.stop()
            if DnsService.wanted(record):
                service.ensure_running(record)
        return self.status(spec)

    def inspect(self, spec: NetworkSpec) -> dict[str, object]:
        """Bridge, firewall table, dnsmasq and leases as the driver sees them."""
        record = self.ledger.get(spec.ref.project, spec.ref.name)
        if record is None:
            return {}
        service = self.dns_service(record)
        with Links() as links:
            up = links.is_up(record.bridge)
        info: dict[str, object] = {
            "bridge": record.bridge, "bridge_up": up, "nat": record.nat,
            "isolated": record.isolated, "nft_table": f"inet {firewall.table_name(self.context.nova_home)}",
            "dnsmasq_pid": service.dnsmasq_pid(), "domain": record.domain,
            "leases": {k: {"ip": v.ip, "ip6": v.ip6, "mac": v.mac, "link": v.link,
                           "ports_published": v.published} for k, v in record.leases.items()},
        }
        info.update(self._extra_inspect(record))
        return info

    # -- instances -----------------------------------------------------------------------
    def _names(self, spec: NetworkSpec, instance_key: str) -> tuple[str, str]:
        home = self.context.nova_home
        key = (spec.ref.project, spec.ref.name, instance_key)
        return link_name("nvv", home, *key), link_name("nvt", home, *key)

    def attach(self, spec: NetworkSpec, instance: InstanceSpec) -> NetworkAttachment:
        """A veth into the capsule's namespace, or a tap for the VM; an address from IPAM."""
        ref = instance.ref
        key = ref.key
        with self.ledger.locked() as ledger, Links() as links:
            record = ledger.get(spec.ref.project, spec.ref.name)
            if record is None or not links.exists(record.bridge):
                raise NovaError(f"network {spec.ref.name} is not up", hint="nova up makes it")
            lease = record.leases.get(key)
            if lease is None:
                lease = self._new_lease(record, spec, instance)
                record.leases[key] = lease
                ledger.put(record)  # recorded before anything is made
            service = self.dns_service(record)
            try:
                inner = lease.inner
                self._make_lease_links(links, record, lease)
                if lease.inner != inner:  # a lease recorded before names came from the position
                    ledger.put(record)  # with the interface name the links got
                if DnsService.wanted(record):
                    service.ensure_running(record)
                    service.add(record, lease)
            except BaseException:
                try:
                    service.remove(key)
                    self._remove_lease_links(links, lease)
                finally:  # the original error is what the user needs to see
                    record.leases.pop(key, None)
                    ledger.put(record)
                raise
        details = {"bridge": record.bridge, "mac": lease.mac, "domain": record.domain,
                   "interface": lease.inner or lease.link}
        for field, value in (("ip", lease.ip), ("ip6", lease.ip6), ("netns", lease.netns),
                             ("tap", lease.link if lease.endpoint == "tap" else None),
                             ("gateway", record.gateway), ("gateway6", record.gateway6),
                             ("dns", (record.gateway or record.gateway6) if record.dns else None)):
            if value:
                details[field] = value
        for family, subnet in (("prefix", record.subnet), ("prefix6", record.subnet6)):
            if subnet:
                details[family] = str(ipaddress.ip_network(subnet).prefixlen)
        return NetworkAttachment(network=spec.ref.name, driver=self.name, instance=ref,
                                 endpoint=lease.endpoint, details=details)  # type: ignore[arg-type]

    def _new_lease(self, record: NetworkRecord, spec: NetworkSpec,
                   instance: InstanceSpec) -> Lease:
        key = instance.ref.key
        wanted4 = wanted6 = None
        if instance.ip:
            version = ipaddress.ip_address(instance.ip).version
            fits = [n for n in record.networks() if n.version == version and
                    ipaddress.ip_address(instance.ip) in n]
            if fits:
                wanted4, wanted6 = (instance.ip, None) if version == 4 else (None, instance.ip)
            elif len(instance.networks) == 1:
                raise NovaError(f"{key}: ip {instance.ip} is not in network {record.name}'s "
                                f"subnet {record.subnet or record.subnet6}",
                                hint="pick an address inside it, or leave ip out")
        ip = allocate(record, record.subnet, record.gateway, key, wanted4)
        ip6 = allocate(record, record.subnet6, record.gateway6, key, wanted6)
        veth, tap = self._names(spec, key)
        mac = mac_address(str(self.context.nova_home), record.project, record.name, key)
        ports = [port.model_dump() for port in instance.ports]
        if instance.ref.kind is ResourceKind.VM:
            return Lease(instance=key, name=instance.ref.name, mac=mac, endpoint="tap", link=tap,
                         ip=ip, ip6=ip6, ports=ports)
        namespace = netns.instance_netns(self.context.nova_home, instance.ref.project,
                                         instance.ref.kind.value, instance.ref.name)
        position = instance.networks.index(record.name) if record.name in instance.networks else 0
        return Lease(instance=key, name=instance.ref.name, mac=mac, endpoint="netns", link=veth,
                     ip=ip, ip6=ip6, netns=str(namespace), inner=f"eth{position}", ports=ports)

    def _make_lease_links(self, links: Links, record: NetworkRecord, lease: Lease) -> None:
        if lease.endpoint == "tap":
            links.add_tap(lease.link, record.bridge, record.mtu)
            return
        assert lease.netns
        namespace = Path(lease.netns)
        netns.create(namespace)
        if lease.inner is None:  # a lease recorded before names came from the position
            lease.inner = f"eth{len(links_inside(namespace))}"
        if not links.exists(lease.link):
            links.add_veth(lease.link, record.bridge, namespace, lease.inner, lease.mac,
                           record.mtu)
        addresses = []
        for address, subnet in ((lease.ip, record.subnet), (lease.ip6, record.subnet6)):
            if address and subnet:
                addresses.append((address, ipaddress.ip_network(subnet).prefixlen))
        gateways = [g for g in (record.gateway, record.gateway6) if g]
        configure_inside(namespace, lease.inner, addresses, gateways,
                         default_route=lease.inner == "eth0")  # the instance's first network

    def _remove_lease_links(self, links: Links, lease: Lease) -> None:
        links.delete(lease.link)  # a veth's peer goes with it
        if lease.netns:
            namespace = Path(lease.netns)
            if netns.exists(namespace) and not links_inside(namespace):
                netns.delete(namespace)
            elif not netns.exists(namespace):
                namespace.unlink(missing_ok=True)

    def detach(self, spec: NetworkSpec, attachment: NetworkAttachment) -> None:
        """Remove the instance's link (and its namespace when empty); free its address."""
        instance = attachment.instance
        key = instance.key
        with self.ledger.locked() as ledger, Links() as links:
            record = ledger.get(spec.ref.project, spec.ref.name)
            lease = record.leases.pop(key, None) if record else None
            if lease is None:  # attach never finished: clean up by the names it would use
                veth, tap = self._names(spec, key)
                namespace = netns.instance_netns(self.context.nova_home, instance.project,
                                                 instance.kind.value, instance.name)
                lease = Lease(instance=key, name=instance.name, mac="", endpoint="netns",
                              link=veth, netns=str(namespace))
                links.delete(tap)
            self._remove_lease_links(links, lease)
            if record is not None:
                service = self.dns_service(record)
                service.remove(key)
                if not DnsService.wanted(record) and (
                        lease.endpoint == "tap" or service.supervisor_pid() is not None):
                    # the last VM left a network without dns. A dnsmasq whose supervisor
                    # died is not looked for here (a /proc scan per detach): the
                    # network's delete and the next start find and kill it.
                    service.stop()
                ledger.put(record)
                if lease.published or lease.guarded:
                    self._sync_host(ledger)

    def _publish(self, spec: NetworkSpec, instance: InstanceSpec, published: bool) -> None:
        with self.ledger.locked() as ledger:
            record = ledger.get(spec.ref.project, spec.ref.name)
            lease = record.leases.get(instance.ref.key) if record else None
            if record is None or lease is None:
                return
            if published:
                with Links() as links:
                    if not links.exists(lease.link):  # the host rebooted: plug it in again
                        self._make_lease_links(links, record, lease)
                        ledger.put(record)
            ports = [port.model_dump() for port in instance.ports]
            if lease.published == (published and bool(ports)) and lease.ports == ports \
                    and lease.guarded:
                return
            lease.ports, lease.published = ports, published and bool(ports)
            ledger.put(record)
            self._sync_host(ledger)

    def instance_started(self, spec: NetworkSpec, attachment: NetworkAttachment,
                         instance: InstanceSpec) -> None:
        """Publish the instance's ports."""
        self._publish(spec, instance, True)

    def instance_stopped(self, spec: NetworkSpec, attachment: NetworkAttachment,
                         instance: InstanceSpec) -> None:
        """Withdraw the instance's ports."""
        self._publish(spec, instance, False)


class VxlanDriver(BridgeDriver):
    """``[network.NAME] type = "overlay", driver = "vxlan"``: a bridge on a VXLAN segment.

    Unencrypted by design (nova-quic is the encrypted overlay). Each host runs its own
    Nova with the same subnet and vni; give each host its own ``gateway`` and
    ``ip_range`` (or static ``ip``s) so addresses never clash across hosts.
    """

    options_model: ClassVar[type[DriverOptions]] = VxlanOptions

    def _mtu(self, spec: NetworkSpec) -> int | None:
        return spec.mtu or 1500 - VXLAN_OVERHEAD

    def _new_record(self, spec: NetworkSpec, taken: list) -> NetworkRecord:  # noqa: ANN001
        if not spec.subnet:
            raise NovaError(f"network {spec.ref.name}: an overlay needs subnet = \"...\"",
                            hint="every host on the overlay uses the same subnet")
        record = super()._new_record(spec, taken)
        options = spec.options
        record.vxlan = {"device": link_name("nvx", self.context.nova_home, spec.ref.project,
                                            spec.ref.name),
                        "vni": options.vni, "port": options.port,  # type: ignore[attr-defined]
                        "peers": list(options.peers),  # type: ignore[attr-defined]
                        "local": options.local}  # type: ignore[attr-defined]
        return record

    def _remove_extra(self, links: Links, record: NetworkRecord) -> None:
        if record.vxlan:
            links.delete(str(record.vxlan["device"]))

    def _extra_inspect(self, record: NetworkRecord) -> dict[str, object]:
        return {"vxlan": record.vxlan} if record.vxlan else {}

    def _make_extra(self, links: Links, record: NetworkRecord, spec: NetworkSpec) -> None:
        assert record.vxlan is not None
        vxlan = record.vxlan
        links.ensure_vxlan(str(vxlan["device"]), record.bridge, int(vxlan["vni"]),  # type: ignore[arg-type]
                           int(vxlan["port"]), vxlan.get("local"),  # type: ignore[arg-type]
                           list(vxlan["peers"]), record.mtu)  # type: ignore[arg-type]


def net_run_root(nova_home: Path) -> Path:
    """Per-NOVA_HOME folder on /run for dnsmasq's files (regenerated after a reboot)."""
    return Path("/run") / f"nova-net-{home_digest(nova_home)}"


__all__ = ["BridgeDriver", "BridgeOptions", "VxlanDriver", "VxlanOptions"]
