"""The sriov network driver: ``[network.X] sriov = "enp6s0"`` gives VMs a VF instead of a tap.

There is no SR-IOV hardware on these machines. The driver runs against the synthetic
sysfs tree of :mod:`nova_vfio.testing` (the layout of real sysfs: an E810 NIC driving
``enp6s0`` with up to 8 VFs), whose fixture emulates the kernel's reactions to sysfs
writes and records the VF settings (MAC, VLAN, spoof check) that the PF's driver would
receive over netlink, as its docstring says. The netlink request itself is tested
against the real kernel: on an interface whose driver has no SR-IOV (a veth in a
namespace this test makes) the kernel refuses it and Nova says so clearly.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nova_vfio.driver import Ledger
from nova_vfio.netlink import set_vf
from nova_vfio.network import SriovNetworkDriver, SriovNetworkOptions
from nova_vfio.sysfs import PciHost
from nova_vfio.testing import build_sysfs, driver_of, vf_address, vf_links

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
from nova_core.testing.contracts import NetworkDriverContract

NIC = "0000:04:00.0"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The synthetic host, with 3 VFs on enp6s0."""
    root = build_sysfs(tmp_path / "host")
    host = PciHost(root)
    host.set_vfs(host.device(NIC), 3)
    return root


def net(name: str = "lan", vlan: int = 0, **fields: object) -> NetworkSpec:
    return NetworkSpec(ref=ResourceRef(project="p", kind=ResourceKind.NETWORK, name=name),
                       driver="sriov", base_dir=Path("/"),
                       options=SriovNetworkOptions(sriov="enp6s0", vlan=vlan), **fields)


def vm(name: str, **fields: object) -> VmSpec:
    return VmSpec(ref=ResourceRef(project="p", kind=ResourceKind.VM, name=name), driver="qemu",
                  base_dir=Path("/"), networks=["lan"], **fields)


class TestSriovNetworkContract(NetworkDriverContract):
    """The core's network driver contract, on the synthetic host."""

    @pytest.fixture
    def network_driver(self, root: Path, nova_home: Path) -> SriovNetworkDriver:
        return SriovNetworkDriver("sriov", DriverContext(nova_home=nova_home), root)

    @pytest.fixture
    def network_spec(self) -> NetworkSpec:
        return net()

    @pytest.fixture
    def instance_spec(self) -> VmSpec:
        return vm("a")


def test_vms_get_free_vfs_with_mac_and_vlan_set_on_the_pf_and_give_them_back(
        root: Path, nova_home: Path) -> None:
    driver = SriovNetworkDriver("sriov", DriverContext(nova_home=nova_home), root)
    spec = net(vlan=100)
    assert driver.create(spec).data == {"pf": NIC, "interface": "enp6s0", "vfs": "3 free of 3"}
    first = driver.attach(spec, vm("a"))
    second = driver.attach(spec, vm("b"))
    assert (first.endpoint, first.details["address"], first.details["vf"]) == (
        "vf", vf_address(0), "0")
    assert second.details["address"] == vf_address(1) and first.mac != second.mac
    assert driver_of(root, vf_address(0)) == driver_of(root, vf_address(1)) == "vfio-pci"
    assert driver_of(root, NIC) == "ice"  # the PF stays with the host
    links = vf_links(root, NIC)
    assert links["0"] == {"mac": first.mac, "vlan": 100, "spoofchk": True}
    assert links["1"]["mac"] == second.mac
    assert Ledger(nova_home).read()[vf_address(0)]["holder"] == "p/vm.a"
    assert driver.attach(spec, vm("a")).details["address"] == vf_address(0)  # again: same VF
    assert driver.status(spec).data["vfs"] == "1 free of 3"
    assert [v["holder"] for v in driver.inspect(spec)["vfs"]] == ["p/vm.a", "p/vm.b"]
    driver.attach(spec, vm("c"))
    with pytest.raises(NovaError) as caught:
        driver.attach(spec, vm("d"))
    assert "every VF of enp6s0 is in use (by p/vm.a, p/vm.b, p/vm.c)" in caught.value.message
    assert caught.value.hint.startswith(f"nova device vfs {NIC} --count N")

    driver.detach(spec, first)
    assert driver_of(root, vf_address(0)) == "iavf"
    assert vf_links(root, NIC)["0"] == {"mac": "00:00:00:00:00:00", "vlan": 0, "spoofchk": False}
    pending = NetworkAttachment(network="lan", driver="sriov", instance=vm("b").ref,
                                endpoint="none")  # after a crash, from network and instance alone
    driver.detach(spec, pending)
    assert driver_of(root, vf_address(1)) == "iavf"
    driver.delete(spec)  # gives back what is left (vm.c's VF)
    assert driver_of(root, vf_address(2)) == "iavf" and Ledger(nova_home).read() == {}
    assert driver.status(spec).state is Lifecycle.MISSING


def test_refusals_say_what_is_wrong_and_change_nothing(root: Path, nova_home: Path,
                                                      tmp_path: Path) -> None:
    driver = SriovNetworkDriver("sriov", DriverContext(nova_home=nova_home), root)
    spec = net()
    driver.create(spec)
    capsule = ContainerSpec(ref=ResourceRef(project="p", kind=ResourceKind.CONTAINER, name="c"),
                            driver="capsule", base_dir=Path("/"), networks=["lan"])
    with pytest.raises(NovaError, match="gives VMs SR-IOV virtual functions; a capsule cannot"):
        driver.attach(spec, capsule)
    with pytest.raises(NovaError, match="ports cannot be published on SR-IOV network lan"):
        driver.attach(spec, vm("a", ports=[PortMapping(host_port=8080, target_port=80)]))
    with pytest.raises(NovaError, match="subnet, dns cannot be set on an SR-IOV network"):
        driver.create(net("other", subnet="10.9.0.0/24", dns=True))
    assert Ledger(nova_home).read() == {} and vf_links(root, NIC) == {}
    for interface, message in (("eno1", "is not SR-IOV capable"),
                               ("enp9s0", "no PCI network interface named enp9s0")):
        bad = net("x").model_copy(update={"options": SriovNetworkOptions(sriov=interface)})
        with pytest.raises(NovaError, match=message):
            driver.create(bad)
    bare = build_sysfs(tmp_path / "bare")  # the PF has no VFs yet
    with pytest.raises(NovaError) as caught:
        SriovNetworkDriver("sriov", DriverContext(nova_home=nova_home), bare).create(net("y"))
    assert "enp6s0 (0000:04:00.0) has no VFs" in caught.value.message
    assert caught.value.hint == f"nova device vfs {NIC} --count N (it supports up to 8)"
    assert driver.render(net("y"))[0].body.startswith("VMs get a VF of enp6s0 (0000:04:00.0")


def test_nova_up_plan_inspect_and_down_through_the_cli(root: Path, run_nova, nova_home: Path,
                                                      tmp_path: Path, cli_on_emulated_host) -> None:  # noqa: ANN001
    project = tmp_path / "proj"
    project.mkdir()
    (project / "NovaFile").write_text(
        'project = "sr"\n\n[network.lan]\nsriov = "enp6s0"\nvlan = 42\n\n'
        '[vm.a]\ndriver = "fake"\nnetwork = "lan"\n\n[vm.b]\ndriver = "fake"\nnetwork = "lan"\n'
        'devices = ["vf:enp6s0/2"]\n')
    plan = run_nova("plan", cwd=project, check=True)
    assert "VMs get a VF of enp6s0" in plan.stdout and "VLAN 42" in plan.stdout
    run_nova("up", cwd=project, check=True)
    inspect = json.loads(run_nova("net", "inspect", "lan", "--json", cwd=project,
                                  check=True).stdout)
    vfs = {v["holder"]: v for v in inspect["host"]["vfs"]}
    held = {d["address"]: d["reserved_by"] for d in
            json.loads(run_nova("device", "ls", "--json", check=True).stdout)}
    # vm.a got the first free VF; vm.b holds VF 2 by name and VF 1 from the network
    assert held[vf_address(2)] == held[vf_address(1)] == "sr/vm.b"
    assert (vfs["sr/vm.a"]["address"], vfs["sr/vm.b"]["address"]) == (vf_address(0), vf_address(1))
    assert vf_links(root, NIC)["1"]["vlan"] == 42 and "2" not in vf_links(root, NIC)
    busy = run_nova("device", "vfs", NIC, "--count", "0")
    assert busy.returncode == 1 and vf_address(1) in busy.stderr
    assert run_nova("down", cwd=project).returncode == 0
    assert Ledger(nova_home).read() == {}
    assert {driver_of(root, vf_address(i)) for i in range(3)} == {"iavf"}
    assert all(v["mac"] == "00:00:00:00:00:00" for v in vf_links(root, NIC).values())


@pytest.fixture
def scratch_netns() -> Iterator[Path]:
    """A network namespace of this test's own, holding a veth pair (removed afterwards)."""
    name = f"nvsr-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "pf0", "type", "veth", "peer", "name",
                        "pf1"], check=True)
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def test_the_real_kernel_refuses_vf_settings_on_a_link_without_sriov(scratch_netns: Path) -> None:
    with pytest.raises(NovaError) as caught:
        set_vf("pf0", 0, "52:54:00:12:34:56", 10, namespace=scratch_netns)
    assert caught.value.message == ("pf0 did not accept the settings of its VF 0 "
                                    "(MAC 52:54:00:12:34:56, VLAN 10): Operation not supported")
    with pytest.raises(NovaError, match="no network interface enp6s0 on this host"):
        set_vf("enp6s0", 0, "52:54:00:12:34:56", 0, namespace=scratch_netns)
