"""The bridge driver against the real kernel (netlink), nftables and dnsmasq.

No capsule or VM runs here: instances are specs, and where something must sit on
the network (a DHCP client, a DNS client) it runs in a namespace the test made.
End-to-end tests with real capsules are in the repository's tests/test_networks.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nova_bridge import firewall
from nova_bridge.driver import BridgeDriver, BridgeOptions, VxlanDriver, VxlanOptions
from nova_bridge.links import Links, configure_inside
from nova_bridge.records import Ledger
from nova_bridge.testing import make_outside_host
from nova_bridge.testing import run_in_netns as in_ns
from pyroute2 import IPRoute

from nova_core.drivers.base import DriverContext
from nova_core.drivers.models import (
    ContainerSpec,
    Lifecycle,
    NetworkAttachment,
    NetworkSpec,
    PortMapping,
    ResourceKind,
    ResourceRef,
    VmSpec,
)
from nova_core.errors import NovaError
from nova_core.hostinfo import netns
from nova_core.testing.contracts import NetworkDriverContract


def network(name: str = "lan", project: str = "brt", **fields: object) -> NetworkSpec:
    options = fields.pop("options", {})
    return NetworkSpec(ref=ResourceRef(project=project, kind=ResourceKind.NETWORK, name=name),
                       driver="bridge", base_dir=Path("/"), options=BridgeOptions(**options),
                       **fields)


def capsule(name: str, net: str = "lan", project: str = "brt", **fields: object) -> ContainerSpec:
    return ContainerSpec(ref=ResourceRef(project=project, kind=ResourceKind.CONTAINER, name=name),
                         driver="capsule", base_dir=Path("/"), networks=[net], **fields)


def vm(name: str, net: str = "lan", project: str = "brt") -> VmSpec:
    return VmSpec(ref=ResourceRef(project=project, kind=ResourceKind.VM, name=name),
                  driver="qemu", base_dir=Path("/"), networks=[net])


@pytest.fixture
def driver(nova_home: Path) -> BridgeDriver:
    return BridgeDriver("bridge", DriverContext(nova_home=nova_home))


@pytest.fixture
def made(driver: BridgeDriver):  # noqa: ANN201
    """Networks made by the test, deleted afterwards even when it fails."""
    specs: list[NetworkSpec] = []

    def make(spec: NetworkSpec) -> NetworkSpec:
        specs.append(spec)
        driver.create(spec)
        return spec

    yield make
    for spec in reversed(specs):
        driver.delete(spec)


class TestBridgeContract(NetworkDriverContract):
    @pytest.fixture
    def network_driver(self, driver: BridgeDriver) -> BridgeDriver:
        return driver

    @pytest.fixture
    def network_spec(self) -> NetworkSpec:
        return network("contract", subnet="10.251.7.0/24")

    @pytest.fixture
    def instance_spec(self) -> ContainerSpec:
        return capsule("c1", net="contract")


def addresses_of(link: str) -> list[str]:
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=link)[0]
        return [f"{a.get('address')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)
                if not a.get('address', '').startswith('fe80:')]


def test_automatic_subnet_avoids_host_routes(driver: BridgeDriver, made, nova_home: Path) -> None:
    with Links() as links:
        taken = links.taken_networks()
    spec = made(network())
    status = driver.status(spec)
    assert status.state is Lifecycle.CREATED
    subnet = ipaddress.ip_network(status.data["subnet"])
    assert subnet.prefixlen == 24
    assert any(subnet.subnet_of(ipaddress.ip_network(f"10.{n}.0.0/16")) for n in range(90, 100))
    assert not any(subnet.overlaps(t) for t in taken if t.version == 4 and t.prefixlen)
    bridge = status.data["bridge"]
    assert addresses_of(bridge) == [f"{status.data['gateway']}/24"]
    second = made(network("lan2"))
    assert driver.status(second).data["subnet"] != str(subnet)  # never the same /24 twice
    table = firewall.table_name(nova_home)
    rules = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True,
                           text=True, check=True).stdout
    assert f'ip saddr {subnet} oifname != "{bridge}" masquerade' in rules
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"


def test_subnet_gateway_and_overlap_errors(driver: BridgeDriver, made) -> None:
    made(network("a", subnet="10.251.1.0/24", gateway="10.251.1.254"))
    assert driver.status(network("a")).data["gateway"] == "10.251.1.254"
    with pytest.raises(NovaError, match="overlaps network a"):
        driver.create(network("b", subnet="10.251.1.128/25"))
    with pytest.raises(NovaError, match="gateway 10.9.9.9 is not in 10.251.2.0/24"):
        driver.create(network("c", subnet="10.251.2.0/24", gateway="10.9.9.9"))
    assert Ledger(driver.context.nova_home).get("brt", "c") is None


def test_ipam_static_next_free_conflicts_and_release(driver: BridgeDriver, made) -> None:
    spec = made(network(subnet="10.251.3.0/29"))  # hosts .1-.6; .1 is the gateway
    first = driver.attach(spec, capsule("a"))
    static = driver.attach(spec, capsule("b", ip="10.251.3.5"))
    assert (first.details["ip"], static.details["ip"]) == ("10.251.3.2", "10.251.3.5")
    with pytest.raises(NovaError, match="10.251.3.5 on network lan is already taken by container.b"):
        driver.attach(spec, capsule("c", ip="10.251.3.5"))
    with pytest.raises(NovaError, match="not in network lan's subnet"):
        driver.attach(spec, capsule("d", ip="10.9.0.1"))
    others = [driver.attach(spec, capsule(n)) for n in ("e", "f", "g")]
    assert sorted(a.details["ip"] for a in others) == ["10.251.3.3", "10.251.3.4", "10.251.3.6"]
    with pytest.raises(NovaError, match="no free address left"):
        driver.attach(spec, capsule("h"))
    driver.detach(spec, first)
    again = driver.attach(spec, capsule("i"))
    assert again.details["ip"] == "10.251.3.2"  # released and reused
    inside = subprocess.run(["ip", "-n", Path(static.details["netns"]).name, "-j", "addr"],
                            capture_output=True, text=True, check=True).stdout
    eth0 = next(i for i in json.loads(inside) if i["ifname"] == "eth0")
    assert [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"] == ["10.251.3.5"]
    for attachment in [static, again, *others]:
        driver.detach(spec, attachment)
    assert not [p for p in netns.NETNS_DIR.iterdir() if p.name.startswith("nova-")
                and "brt" in p.name]


def test_a_capsule_on_two_networks_gets_eth0_and_eth1(driver: BridgeDriver, made) -> None:
    one = made(network("one", subnet="10.251.4.0/24"))
    two = made(network("two", subnet="10.251.5.0/24"))
    spec = capsule("multi", net="one").model_copy(update={"networks": ["one", "two"]})
    first, second = driver.attach(one, spec), driver.attach(two, spec)
    assert (first.details["interface"], second.details["interface"]) == ("eth0", "eth1")
    assert first.details["netns"] == second.details["netns"]
    routes = subprocess.run(["ip", "-n", Path(first.details["netns"]).name, "route"],
                            capture_output=True, text=True, check=True).stdout
    assert "default via 10.251.4.1 dev eth0" in routes and "10.251.5.1" not in routes
    driver.detach(one, first)
    assert netns.exists(Path(second.details["netns"]))  # eth1 still lives there
    driver.detach(two, second)
    assert not netns.exists(Path(second.details["netns"]))


def test_a_capsule_is_plugged_in_with_everything_it_needs(driver: BridgeDriver, made) -> None:
    """Both ends of the veth, the namespace's links, addresses, routes and sysctls, as
    `ip` sees them, for a dual-stack network with its own MTU; detach removes it all."""
    spec = made(network(subnet="10.251.23.0/24", mtu=1400,
                        options={"subnet6": "fd00:251:23::/64"}))
    attachment = driver.attach(spec, capsule("wired"))
    details = attachment.details
    namespace = Path(details["netns"])
    host_end = Ledger(driver.context.nova_home).get("brt", "lan").leases["container.wired"].link

    def ip(*args: str, inside: bool = True) -> list[dict]:
        where = ["-n", namespace.name] if inside else []
        return json.loads(subprocess.run(["ip", "-j", *where, *args], capture_output=True,
                                         text=True, check=True).stdout)

    (outer,) = ip("-d", "link", "show", host_end, inside=False)
    assert (outer["master"], outer["mtu"], outer["linkinfo"]["info_kind"]) == (
        details["bridge"], 1400, "veth")
    assert "UP" in outer["flags"]
    links = {link["ifname"]: link for link in ip("addr")}
    assert set(links) == {"lo", "eth0"}
    assert "UP" in links["lo"]["flags"] and "UP" in links["eth0"]["flags"]
    assert (links["eth0"]["address"], links["eth0"]["mtu"]) == (details["mac"], 1400)
    assert sorted(f"{a['local']}/{a['prefixlen']}" for a in links["eth0"]["addr_info"]
                  if a["scope"] == "global") == ["10.251.23.2/24", "fd00:251:23::2/64"]
    defaults = [(route["gateway"], route["dev"], route["protocol"]) for family in ("-4", "-6")
                for route in ip(family, "route", "show", "default")]
    assert defaults == [("10.251.23.1", "eth0", "static"), ("fd00:251:23::1", "eth0", "static")]
    sysctls = subprocess.run(["ip", "netns", "exec", namespace.name, "cat",
                              "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
                             capture_output=True, text=True, check=True).stdout
    assert sysctls.strip() == "0"
    driver.detach(spec, attachment)
    assert not Path(f"/sys/class/net/{host_end}").exists()
    assert not netns.exists(namespace)


def test_a_request_the_kernel_refuses_is_a_clear_error(tmp_path: Path) -> None:
    """configure_inside sends its requests in one batch: the kernel's refusal of one
    (a gateway outside every subnet of the link) comes back as the error."""
    namespace = netns.create(netns.NETNS_DIR / "nvtest-refused")
    try:
        subprocess.run(["ip", "-n", namespace.name, "link", "add", "eth0", "type", "veth",
                        "peer", "name", "peer0"], check=True)  # both ends go with the namespace
        with pytest.raises(NovaError, match=r"configuring eth0 in .*nvtest-refused: "
                                            r"Network is unreachable"):
            configure_inside(namespace, "eth0", [("10.251.24.2", 24)], ["10.251.99.1"], True)
        with pytest.raises(NovaError, match="eth7 is missing in"):
            configure_inside(namespace, "eth7", [("10.251.24.2", 24)], ["10.251.24.1"], True)
    finally:
        netns.delete(namespace)


def test_enslaving_the_hosts_uplink_is_refused_unless_forced(nova_home: Path) -> None:
    subprocess.run(["ip", "link", "add", "nvtestup0", "type", "veth", "peer", "name", "nvtestup1"],
                   check=True)
    try:
        subprocess.run(["ip", "addr", "add", "198.18.77.1/24", "dev", "nvtestup0"], check=True)
        careful = BridgeDriver("bridge", DriverContext(nova_home=nova_home))
        spec = network("up", subnet="10.251.6.0/24", interfaces=["nvtestup0"])
        with pytest.raises(NovaError, match="would cut the host's connectivity: it has the "
                                            "host's address 198.18.77.1"):
            careful.create(spec)
        assert careful.status(spec).state is Lifecycle.MISSING
        with pytest.raises(NovaError, match="interface nvnosuch0 does not exist"):
            careful.create(network("up2", interfaces=["nvnosuch0"]))
        forced = BridgeDriver("bridge", DriverContext(nova_home=nova_home, force=True))
        forced.create(spec)
        try:
            master = Path("/sys/class/net/nvtestup0/master").resolve().name
            assert master == forced.status(spec).data["bridge"]
        finally:
            forced.delete(spec)
        assert not Path("/sys/class/net/nvtestup0/master").exists()  # released, not deleted
    finally:
        subprocess.run(["ip", "link", "del", "nvtestup0"], check=False)


def dig(outside_ns: Path, server: str, name: str) -> list[str]:
    """A/AAAA answers for ``name`` from ``server``, asked from inside ``outside_ns``."""
    code = ("import socket,struct,sys\n"
            "q=b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00'+b''.join("
            "bytes([len(p)])+p.encode() for p in sys.argv[2].split('.'))+b'\\x00\\x00\\x01\\x00\\x01'\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(1)\n"
            "for attempt in range(3):\n"
            "    s.sendto(q,(sys.argv[1],53))\n"
            "    try:\n        r=s.recv(512); break\n"
            "    except TimeoutError:\n        if attempt == 2: raise\n"
            "n=struct.unpack('>H',r[6:8])[0];print(r[3]&15, n)\n"
            "print(' '.join(socket.inet_ntoa(r[-4:]) for _ in range(min(n,1))))\n")
    done = subprocess.run(["nsenter", f"--net={outside_ns}", sys.executable, "-c", code,
                           server, name], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    rcode, count = done.stdout.split("\n")[0].split()
    return done.stdout.split("\n")[1].split() if rcode == "0" and int(count) else []


def test_dns_names_come_and_go_without_a_restart(driver: BridgeDriver, made) -> None:
    spec = made(network(subnet="10.251.8.0/24", dns=True))
    web = driver.attach(spec, capsule("web"))
    probe = driver.attach(spec, capsule("probe"))
    namespace = Path(probe.details["netns"])
    service = driver.dns_service(Ledger(driver.context.nova_home).get("brt", "lan"))
    pid = service.dnsmasq_pid()
    assert pid is not None
    assert dig(namespace, "10.251.8.1", "web") == [web.details["ip"]]
    assert dig(namespace, "10.251.8.1", "web.brt.nova") == [web.details["ip"]]
    late = driver.attach(spec, capsule("late"))
    deadline = time.monotonic() + 3
    while dig(namespace, "10.251.8.1", "late") != [late.details["ip"]]:
        assert time.monotonic() < deadline, "a new instance's name never resolved"
        time.sleep(0.05)
    driver.detach(spec, web)
    assert dig(namespace, "10.251.8.1", "web") == []
    assert service.dnsmasq_pid() == pid  # reloaded, never restarted
    sockets = subprocess.run(["ss", "-Hlnup"], capture_output=True, text=True).stdout
    bound = [line.split()[3] for line in sockets.splitlines() if f"pid={pid}," in line]
    bridge = web.details["bridge"]
    assert "10.251.8.1:53" in bound and f"0.0.0.0%{bridge}:67" in bound
    assert all(b.startswith(("10.251.8.1:", "[fe80::")) or f"%{bridge}:" in b for b in bound), bound
    for attachment in (probe, late):
        driver.detach(spec, attachment)


def test_dnsmasq_is_supervised(driver: BridgeDriver, made) -> None:
    spec = made(network(subnet="10.251.9.0/24", dns=True))
    service = driver.dns_service(Ledger(driver.context.nova_home).get("brt", "lan"))
    first = service.dnsmasq_pid()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while service.dnsmasq_pid() in (None, first):
        assert time.monotonic() < deadline, "the supervisor did not restart dnsmasq"
        time.sleep(0.05)
    orphan = service.dnsmasq_pid()
    os.kill(service.supervisor_pid(), signal.SIGKILL)  # dnsmasq lives on, holding the ports
    time.sleep(0.1)
    status = driver.status(spec)  # observes only; nova up then repairs through update
    assert (status.state, status.detail) == (Lifecycle.STOPPED, "dnsmasq is not running")
    assert service.dnsmasq_pid() is None
    assert driver.update(spec, frozenset()).state is Lifecycle.CREATED
    assert service.dnsmasq_pid() not in (None, orphan)
    assert not Path(f"/proc/{orphan}/cmdline").exists() or \
        not Path(f"/proc/{orphan}/cmdline").read_bytes()  # the orphan was put down


def test_a_vm_gets_its_reserved_address_by_dhcp(driver: BridgeDriver, made) -> None:
    """The tap is real; the "VM" is a namespace with a veth on the bridge that carries the
    tap's MAC address and runs busybox's DHCP client, since no QEMU runs in this test."""
    spec = made(network(subnet="10.251.10.0/24"))
    attachment = driver.attach(spec, vm("guest"))
    tap = attachment.details["tap"]
    flags = Path(f"/sys/class/net/{tap}/tun_flags").read_text().strip()
    assert int(flags, 16) & 0x1000  # IFF_NO_PI: QEMU can open it
    assert Path(f"/sys/class/net/{tap}/master").resolve().name == attachment.details["bridge"]
    guest = netns.create(netns.NETNS_DIR / "nvtest-dhcp")
    try:
        subprocess.run(["ip", "link", "add", "nvtestdh0", "master", attachment.details["bridge"],
                        "type", "veth", "peer", "name", "eth0", "netns", guest.name,
                        "address", attachment.details["mac"]], check=True)
        subprocess.run(["ip", "link", "set", "nvtestdh0", "up"], check=True)
        subprocess.run(["ip", "-n", guest.name, "link", "set", "eth0", "up"], check=True)
        script = guest.parent.parent / "nvtest-udhcpc.sh"
        script.write_text('#!/bin/sh\n[ "$1" = bound ] && echo "lease $ip router $router"\n')
        script.chmod(0o755)
        try:
            done = subprocess.run(["nsenter", f"--net={guest}", "busybox", "udhcpc", "-i", "eth0",
                                   "-n", "-q", "-f", "-t", "5", "-s", str(script)],
                                  capture_output=True, text=True, timeout=30)
        finally:
            script.unlink()
        assert f"lease {attachment.details['ip']} router 10.251.10.1" in done.stdout, done
        leases = Ledger(driver.context.nova_home).root / "dns" / "brt" / "lan" / "leases"
        assert f"{attachment.details['mac']} {attachment.details['ip']} guest" in leases.read_text()
    finally:
        subprocess.run(["ip", "link", "del", "nvtestdh0"], check=False)
        netns.delete(guest)
    driver.detach(spec, attachment)
    assert not Path(f"/sys/class/net/{tap}").exists()
    record = Ledger(driver.context.nova_home).get("brt", "lan")
    assert driver.dns_service(record).supervisor_pid() is None  # no VM left, no dns: no dnsmasq


def test_isolated_networks_and_nat_rules(driver: BridgeDriver, made, nova_home: Path) -> None:
    made(network("iso", subnet="10.251.11.0/24", options={"isolated": True}))
    made(network("nonat", subnet="10.251.12.0/24", options={"nat": False}))
    rules = subprocess.run(["nft", "list", "table", "inet", firewall.table_name(nova_home)],
                           capture_output=True, text=True, check=True).stdout
    assert "10.251.11.0/24" not in rules.split("chain postrouting")[1]  # no NAT at all
    assert "iso: isolated, nothing leaves" in rules and "iso: isolated, nothing enters" in rules
    assert "nonat: outbound NAT" not in rules and "nonat: no traffic to other Nova networks" in rules


def test_ports_are_published_only_while_running(driver: BridgeDriver, made,
                                                nova_home: Path) -> None:
    spec = made(network(subnet="10.251.13.0/24"))
    web = capsule("web", ports=[PortMapping(host_port=18181, target_port=80),
                                PortMapping(host_ip="127.0.0.1", host_port=15353,
                                            target_port=53, protocol="udp")])
    attachment = driver.attach(spec, web)

    def dnat_rules() -> list[str]:
        rules = subprocess.run(["nft", "list", "table", "inet", firewall.table_name(nova_home)],
                               capture_output=True, text=True, check=True).stdout
        return [line.strip() for line in rules.splitlines() if "dnat ip" in line]

    assert dnat_rules() == []
    driver.instance_started(spec, attachment, web)
    published = dnat_rules()
    assert f"tcp dport 18181 dnat ip to {attachment.details['ip']}:80" in " ".join(published)
    assert "ip daddr 127.0.0.1 udp dport 15353" in " ".join(published)
    assert len(published) == 4  # prerouting and output, two ports
    driver.instance_stopped(spec, attachment, web)
    assert dnat_rules() == []
    driver.instance_started(spec, attachment, web)
    driver.detach(spec, attachment)  # an instance removed while running
    assert dnat_rules() == []


def test_a_crash_while_creating_is_repaired(driver: BridgeDriver, nova_home: Path) -> None:
    """The process dies between making the bridge and loading its rules; the next
    create finishes the job and delete leaves nothing."""
    code = ("import os,sys\n"
            "from pathlib import Path\n"
            "from nova_bridge import firewall\n"
            "from nova_bridge.driver import BridgeDriver, BridgeOptions\n"
            "from nova_core.drivers.base import DriverContext\n"
            "from nova_core.drivers.models import NetworkSpec, ResourceRef, ResourceKind\n"
            "firewall.apply = lambda *a: os._exit(70)\n"
            "spec = NetworkSpec(ref=ResourceRef(project='brt', kind=ResourceKind.NETWORK, name='lan'),"
            " driver='bridge', base_dir=Path('/'), options=BridgeOptions(), subnet='10.251.14.0/24')\n"
            "BridgeDriver('bridge', DriverContext(nova_home=Path(sys.argv[1]))).create(spec)\n")
    crashed = subprocess.run([sys.executable, "-c", code, str(nova_home)], capture_output=True,
                             text=True)
    assert crashed.returncode == 70, crashed.stderr
    spec = network(subnet="10.251.14.0/24")
    record = Ledger(nova_home).get("brt", "lan")
    assert record is not None and Path(f"/sys/class/net/{record.bridge}").exists()
    assert not firewall.table_exists(firewall.table_name(nova_home))
    try:
        assert driver.create(spec).state is Lifecycle.CREATED
        assert firewall.table_exists(firewall.table_name(nova_home))
    finally:
        driver.delete(spec)
    assert not Path(f"/sys/class/net/{record.bridge}").exists()
    assert not firewall.table_exists(firewall.table_name(nova_home))


def test_vxlan_device_floods_to_its_peers(nova_home: Path) -> None:
    driver = VxlanDriver("vxlan", DriverContext(nova_home=nova_home))
    spec = NetworkSpec(ref=ResourceRef(project="brt", kind=ResourceKind.NETWORK, name="ov"),
                       driver="vxlan", base_dir=Path("/"), type="overlay", subnet="10.251.15.0/24",
                       options=VxlanOptions(vni=4242, port=4790, peers=["198.18.5.2", "198.18.5.3"]))
    with pytest.raises(NovaError, match="an overlay needs subnet"):
        driver.create(spec.model_copy(update={"subnet": None}))
    driver.create(spec)
    try:
        device = Ledger(nova_home).get("brt", "ov").vxlan["device"]
        details = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", device],
                                            capture_output=True, text=True, check=True).stdout)[0]
        info = details["linkinfo"]["info_data"]
        assert (info["id"], info["port"]) == (4242, 4790)
        assert details["master"] == driver.status(spec).data["bridge"]
        assert details["mtu"] == 1450
        fdb = subprocess.run(["bridge", "fdb", "show", "dev", device], capture_output=True,
                             text=True, check=True).stdout
        assert "00:00:00:00:00:00 dst 198.18.5.2" in fdb and "dst 198.18.5.3" in fdb
    finally:
        driver.delete(spec)


def test_pending_detach_after_a_crash_cleans_by_name(driver: BridgeDriver, made) -> None:
    spec = made(network(subnet="10.251.16.0/24"))
    attachment = driver.attach(spec, capsule("lost"))
    ledger = Ledger(driver.context.nova_home)
    record = ledger.get("brt", "lan")
    record.leases.clear()  # as if the process died after making the links, before recording
    with ledger.locked():
        ledger.put(record)
    driver.detach(spec, NetworkAttachment(network="lan", driver="bridge",
                                          instance=attachment.instance, endpoint="none"))
    assert not netns.exists(Path(attachment.details["netns"]))


def test_outside_host_helper_reaches_the_host() -> None:
    outside = make_outside_host("nvtest-out", "198.18.99")
    try:
        assert outside.run("busybox", "ping", "-c1", "-W2", outside.host_address).returncode == 0
    finally:
        outside.remove()


def test_after_a_reboot_update_remakes_the_network_and_start_replugs(driver: BridgeDriver,
                                                                    made) -> None:
    """A reboot is simulated by deleting what lives in the kernel and /run: the bridge,
    the capsule's namespace and its veth, the nft table and dnsmasq."""
    spec = made(network(subnet="10.251.17.0/24", dns=True))
    web = capsule("web", ports=[PortMapping(host_port=18282, target_port=80)])
    attachment = driver.attach(spec, web)
    record = Ledger(driver.context.nova_home).get("brt", "lan")
    with Links() as links:
        links.delete(record.bridge)
    netns.delete(Path(attachment.details["netns"]))
    firewall.apply(firewall.table_name(driver.context.nova_home), [])
    driver.dns_service(record).stop()
    status = driver.status(spec)
    assert status.state is Lifecycle.STOPPED
    assert status.detail == (f"bridge {record.bridge} is missing; its nftables rules are "
                             "missing; dnsmasq is not running")
    assert driver.update(spec, frozenset()).state is Lifecycle.CREATED
    netns.create(Path(attachment.details["netns"]))  # what the capsule driver does at start
    driver.instance_started(spec, attachment, web)
    inside = subprocess.run(["ip", "-n", Path(attachment.details["netns"]).name, "-4", "addr"],
                            capture_output=True, text=True, check=True).stdout
    assert f"inet {attachment.details['ip']}/24" in inside  # the same address as before
    driver.detach(spec, attachment)


def test_an_instance_cannot_forge_addresses_on_the_bridge(driver: BridgeDriver, made) -> None:
    """The test holds root in the instance's namespace, more than capsule root has."""
    spec = made(network(subnet="10.251.18.0/24"))
    instance = capsule("spoof")
    attachment = driver.attach(spec, instance)
    driver.instance_started(spec, attachment, instance)  # guarded from its start on
    namespace = Path(attachment.details["netns"])
    assert in_ns(namespace, "busybox", "ping", "-c1", "-W2", "10.251.18.1").returncode == 0
    subprocess.run(["ip", "-n", namespace.name, "addr", "add", "10.251.18.99/24", "dev", "eth0"],
                   check=True)
    forged = in_ns(namespace, "busybox", "ping", "-c1", "-W1", "-I", "10.251.18.99", "10.251.18.1")
    assert forged.returncode != 0  # another address than its lease's: dropped at the port
    subprocess.run(["ip", "-n", namespace.name, "link", "set", "eth0", "address",
                    "02:00:00:00:00:99"], check=True)
    assert in_ns(namespace, "busybox", "ping", "-c1", "-W1", "10.251.18.1").returncode != 0
    driver.detach(spec, attachment)


def test_the_bridge_never_reaches_the_hosts_loopback(driver: BridgeDriver, made) -> None:
    """route_localnet is on (for ports published on 127.0.0.1); a neighbour that routes
    127.0.0.1 to the gateway must still not reach a host service bound to loopback."""
    spec = made(network(subnet="10.251.19.0/24"))
    attachment = driver.attach(spec, capsule("sneak"))
    namespace = Path(attachment.details["netns"])
    assert not reaches_the_hosts_loopback(namespace, "10.251.19.1")
    driver.detach(spec, attachment)


def reaches_the_hosts_loopback(namespace: Path, gateway: str) -> bool:
    """Whether a neighbour in ``namespace`` (which the test owns: it may change its
    addresses and routes) gets a connection to a host service bound to 127.0.0.1, by
    routing 127.0.0.1 to ``gateway`` with route_localnet on its own eth0."""
    with socket.socket() as service:
        service.bind(("127.0.0.1", 0))
        service.listen()
        port = service.getsockname()[1]
        for argv in (["addr", "flush", "dev", "lo"],
                     ["route", "add", "127.0.0.1/32", "via", gateway, "dev", "eth0"]):
            subprocess.run(["ip", "-n", namespace.name, *argv], check=True)
        in_ns(namespace, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet")
        in_ns(namespace, "timeout", "3", "busybox", "nc", "127.0.0.1", str(port))
        service.setblocking(False)
        try:
            service.accept()[0].close()
        except BlockingIOError:  # no connection is waiting to be accepted
            return False
        return True


def tracked_pairs() -> set[tuple[str, str]]:
    """(source, destination) of the host's connection-tracking entries (original way)."""
    from pyroute2 import Conntrack

    with Conntrack() as conntrack:
        return {(entry.tuple_orig.saddr, entry.tuple_orig.daddr)
                for entry in conntrack.dump_entries()}


def test_traffic_between_instances_skips_connection_tracking(driver: BridgeDriver,
                                                             made) -> None:
    """Frames between two started instances are marked untracked at their port, before
    br_netfilter passes them to the inet hooks; a ping to the gateway is tracked (it may
    be a masqueraded hairpin reply), which shows the check can see an entry."""
    spec = made(network(subnet="10.251.21.0/24"))
    pair = []
    for name in ("ct1", "ct2"):
        attachment = driver.attach(spec, capsule(name))
        driver.instance_started(spec, attachment, capsule(name))
        pair.append(attachment)
    try:
        first, second = (Path(a.details["netns"]) for a in pair)
        ip1, ip2 = (str(a.details["ip"]) for a in pair)
        assert in_ns(first, "busybox", "ping", "-c2", "-W2", ip2).returncode == 0
        assert in_ns(second, "busybox", "ping", "-c2", "-W2", ip1).returncode == 0
        assert in_ns(first, "busybox", "ping", "-c1", "-W2", "10.251.21.1").returncode == 0
        tracked = tracked_pairs()
        assert (ip1, "10.251.21.1") in tracked
        assert not {(ip1, ip2), (ip2, ip1)} & tracked
    finally:
        for attachment in pair:
            driver.detach(spec, attachment)


def test_a_lan_host_on_an_uplink_is_untracked_and_kept_from_loopback(nova_home: Path) -> None:
    """An uplink (``interfaces``) has no instance's chain: its frames take the bridge's own,
    which skips connection tracking within the subnet and drops loopback addresses. The
    LAN host is a namespace on a veth whose host end is the uplink; its name does not
    start with ``nv`` (as an uplink's would not), so Nova's port-name rule misses it."""
    lan = "nvtest-lan22"
    netns.create(netns.NETNS_DIR / lan)
    subprocess.run(["ip", "link", "add", "brtup22", "type", "veth", "peer", "name", "eth0",
                    "netns", lan], check=True)
    driver = BridgeDriver("bridge", DriverContext(nova_home=nova_home))
    spec = network("up22", subnet="10.251.22.0/24", interfaces=["brtup22"])
    attachment = None
    try:
        driver.create(spec)
        attachment = driver.attach(spec, capsule("inside", net="up22"))
        driver.instance_started(spec, attachment, capsule("inside", net="up22"))
        for argv in (["addr", "add", "10.251.22.50/24", "dev", "eth0"],
                     ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]):
            subprocess.run(["ip", "-n", lan, *argv], check=True)
        outside = netns.NETNS_DIR / lan
        inside = str(attachment.details["ip"])
        assert in_ns(outside, "busybox", "ping", "-c2", "-W2", inside).returncode == 0
        assert not {("10.251.22.50", inside), (inside, "10.251.22.50")} & tracked_pairs()
        assert not reaches_the_hosts_loopback(outside, "10.251.22.1")
    finally:
        if attachment is not None:
            driver.detach(spec, attachment)
        driver.delete(spec)
        subprocess.run(["ip", "link", "del", "brtup22"], check=False)
        netns.delete(netns.NETNS_DIR / lan)


def test_unpublished_ports_are_unreachable_even_with_a_route(driver: BridgeDriver, made) -> None:
    """A LAN host that routes the network's subnet to Nova's host still gets nowhere."""
    spec = made(network(subnet="10.251.20.0/24"))
    attachment = driver.attach(spec, capsule("quiet"))
    namespace = Path(attachment.details["netns"])
    server = subprocess.Popen(["nsenter", f"--net={namespace}", "busybox", "nc", "-l", "-p", "80"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    outside = make_outside_host("nvtest-lan", "198.18.20")
    try:
        subprocess.run(["ip", "-n", outside.name, "route", "add", "10.251.20.0/24", "via",
                        outside.host_address], check=True)
        tried = outside.run("busybox", "nc", "-w", "2", attachment.details["ip"], "80")
        assert tried.returncode != 0
        assert server.poll() is None  # nobody got through to the listener
    finally:
        server.kill()
        server.wait()
        outside.remove()
        driver.detach(spec, attachment)


def test_update_with_a_capsule_attached_keeps_it_plugged_in(driver: BridgeDriver, made) -> None:
    spec = made(network(subnet="10.251.21.0/24"))
    attachment = driver.attach(spec, capsule("kept"))
    lease = Ledger(driver.context.nova_home).get("brt", "lan").leases["container.kept"]
    assert lease.inner == "eth0"
    changed = spec.model_copy(update={"dns": True})
    assert driver.update(changed, frozenset({"dns"})).state is Lifecycle.CREATED
    namespace = Path(attachment.details["netns"])
    assert dig(namespace, "10.251.21.1", "kept") == [attachment.details["ip"]]
    driver.detach(changed, attachment)


def test_an_ipv6_gateway_is_kept_in_canonical_form(driver: BridgeDriver, made) -> None:
    spec = made(network(subnet="fd00:251:22::/64", gateway="fd00:251:22:0::1"))
    assert driver.status(spec).data["gateway6"] == "fd00:251:22::1"
    attachment = driver.attach(spec, capsule("six"))
    assert attachment.details["ip6"] == "fd00:251:22::2"  # never the gateway's address
    driver.detach(spec, attachment)


def test_killed_strays_have_freed_their_ports(tmp_path: Path) -> None:
    """kill_strays returns only once a killed daemon's sockets are closed, so the next
    daemon can bind the same port (a dying process loses its command line first)."""
    from nova_bridge.supervise import Supervised, exited

    marker = f"--marker={tmp_path}"
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()
    code = (f"import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('127.0.0.1', {port})); print('bound', flush=True); time.sleep(60)")
    stray = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE)
    try:
        assert stray.stdout.readline() == b"bound\n"
        assert not exited(stray.pid)
        daemon = Supervised(["true"], marker=marker, program=Path(sys.executable).name,
                            pidfile=tmp_path / "pid", log=tmp_path / "log", label="nova-test")
        assert daemon.strays() == [stray.pid]
        daemon.kill_strays()
        assert exited(stray.pid)  # a zombie until we reap it: exited, its sockets closed
        again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        again.bind(("127.0.0.1", port))
        again.close()
    finally:
        stray.kill()
        stray.wait()
    assert exited(stray.pid)


def test_forwarding_is_turned_on_only_when_needed_and_recorded(tmp_path: Path) -> None:
    """Run in a fresh network namespace (`unshare --net`) with forwarding turned off
    there first: isolated networks leave it off and record nothing; a network that is
    not isolated turns IPv4 forwarding on and records the 0 it found; an IPv6 subnet does
    the same for IPv6; the recorded value is the first one found, never overwritten."""
    code = """
import json, sys
from pathlib import Path
from nova_bridge.firewall import Forwarding
from nova_bridge.records import NetworkRecord

def state():
    return [Path("/proc/sys", key).read_text().strip() for key in Forwarding.KEYS.values()]

for key in Forwarding.KEYS.values():  # a new namespace may inherit the host's values
    Path("/proc/sys", key).write_text("0\\n")
root = Path(sys.argv[1])
shut = NetworkRecord("p", "shut", "bridge", "nvb1", subnet="10.9.1.0/24", isolated=True)
lan = NetworkRecord("p", "lan", "bridge", "nvb2", subnet="10.9.2.0/24")
dual = NetworkRecord("p", "dual", "bridge", "nvb3", subnet="10.9.3.0/24", subnet6="fd00:9::/64")
seen = [state(), Forwarding(root).sync([shut]), state()]
seen += [Forwarding(root).sync([shut, lan]), state()]
seen += [Forwarding(root).sync([lan, dual]), state()]
print(json.dumps(seen))
"""
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", code, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, first, after_shut, second, after_lan, third, after_dual = json.loads(done.stdout)
    assert before == ["0", "0"]
    assert first == {} and after_shut == ["0", "0"]
    assert second == {"net/ipv4/ip_forward": "0"} and after_lan == ["1", "0"]
    assert third == {"net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "0"}
    assert after_dual == ["1", "1"]
    assert json.loads((tmp_path / "sysctl.json").read_text()) == third


def test_a_refused_transaction_changes_nothing_and_other_tables_are_left_alone(
        driver: BridgeDriver, nova_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nova loads its rules in one transaction: when nftables refuses one rule of it (here
    a NAT rule matching a meta key nft does not know), the tables keep every rule they
    had; and another program's tables, in the same families, outlive every change and
    the removal of Nova's."""
    foreign = "nvtest_foreign"
    subprocess.run(["nft", "-f", "-"], text=True, check=True, input=(
        f"table inet {foreign} {{\n chain c {{\n  type filter hook forward priority 10; "
        "policy accept;\n  counter comment \"theirs\"\n }\n}\n"
        f"table bridge {foreign} {{\n chain c {{\n  counter\n }}\n}}\n"))
    table = firewall.table_name(nova_home)
    lan, wan = network("lan", subnet="10.251.30.0/24"), network("wan", subnet="10.251.31.0/24")

    def rules() -> list[object]:
        listed = json.loads(subprocess.run(["nft", "-j", "list", "table", "inet", table],
                                           capture_output=True, text=True, check=True).stdout)
        return [{k: v for k, v in item["rule"].items() if k != "handle"}
                for item in listed["nftables"] if "rule" in item]

    def theirs() -> list[str]:
        return [subprocess.run(["nft", "list", "table", family, foreign], capture_output=True,
                               text=True).stdout for family in ("inet", "bridge")]

    try:
        driver.create(lan)
        loaded = rules()
        assert any("outbound NAT" in str(rule) for rule in loaded)
        real = firewall.nat_rules
        monkeypatch.setattr(firewall, "nat_rules", lambda record: real(record) + [(
            [{"match": {"op": "==", "left": {"meta": {"key": "no-such-key"}}, "right": 1}},
             {"accept": None}], "broken")])
        with pytest.raises(NovaError, match="nftables refused Nova's rules"):
            driver.create(wan)
        assert rules() == loaded  # all or nothing
        monkeypatch.undo()
        driver.delete(wan)
        driver.delete(lan)
        assert not firewall.table_exists(table)
        inet, bridge = theirs()
        assert 'comment "theirs"' in inet and "chain c" in bridge
    finally:
        driver.delete(wan)
        driver.delete(lan)
        for family in ("inet", "bridge"):
            subprocess.run(["nft", "delete", "table", family, foreign], capture_output=True)


def test_a_dnsmasq_config_test_is_not_taken_for_the_daemon(tmp_path: Path) -> None:
    """The quic endpoint SIGHUPs its network's dnsmasq to make it drop removed names. While
    `nova up` checks a configuration (`dnsmasq --test --conf-file=SAME`), that run must not
    be among the daemons, or the signal ends it and `nova up` fails ("dnsmasq refuses the
    configuration", with nothing said: seen in CI). Two stand-in processes named dnsmasq
    (Python with argv[0] set, sleeping), one with --test, are found on the real /proc."""
    from nova_bridge.supervise import find_processes

    marker = f"--conf-file={tmp_path / 'dnsmasq.conf'}"
    code = "import time; time.sleep(60)"
    daemon = subprocess.Popen(["dnsmasq", "-c", code, "--keep-in-foreground", marker],
                              executable=sys.executable)
    tester = subprocess.Popen(["dnsmasq", "-c", code, "--test", marker], executable=sys.executable)
    try:
        deadline = time.monotonic() + 10  # until both have exec'd (their cmdline is theirs)
        while sorted(find_processes(marker, "dnsmasq")) != sorted([daemon.pid, tester.pid]):
            assert time.monotonic() < deadline, find_processes(marker, "dnsmasq")
            time.sleep(0.01)
        assert find_processes(marker, "dnsmasq", ("--test",)) == [daemon.pid]  # as the endpoint
    finally:
        for process in (daemon, tester):
            process.kill()
            process.wait()
