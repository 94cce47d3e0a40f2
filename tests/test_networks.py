"""Capsules on Nova networks, end to end: the real nova CLI, crun, conmon, the kernel's
bridges and VXLAN, nftables and dnsmasq.

"Other hosts" and "the outside" are network namespaces the test makes; nothing is
sent beyond this machine. Every test leaves the host's links, namespaces, nft
ruleset and dnsmasq processes as it found them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nova_bridge.testing import OutsideHost, host_unchanged, make_outside_host, snmp_counters
from nova_capsule.testing import busybox_layer
from nova_test_helpers import write_novafile

from nova_core.hostinfo import netns
from nova_core.testing.cleanup import remove_run_folders

LOOP = "trap 'exit 0' TERM; while true; do sleep 0.2; done"
SERVE = "trap 'exit 0' TERM; while true; do echo hello-from-$(hostname) | nc -l -p 80; done"


@pytest.fixture(autouse=True)
def _host_unchanged() -> Iterator[None]:
    with host_unchanged():
        yield


def prepare_home(home: Path, tmp_path: Path) -> None:
    """A NOVA_HOME with local/busybox:latest imported and no reachable default registry."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text('[images]\ndefault_registry = "127.0.0.1:9"\n')
    tarball = tmp_path / "busybox.tar.gz"
    if not tarball.exists():
        tarball.write_bytes(busybox_layer())
    done = subprocess.run([sys.executable, "-m", "nova_core.cli.main", "image", "import",
                           str(tarball), "local/busybox"], env=dict(os.environ, NOVA_HOME=str(home)),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def nova(nova_home: Path, tmp_path: Path,
         project_dir: Path) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """run_nova-like, in ``project_dir``; brings the project down afterwards."""
    prepare_home(nova_home, tmp_path)

    def run(*args: str, check: bool = True, netns_path: Path | None = None,
            home: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        prefix = ["nsenter", f"--net={netns_path}"] if netns_path else []
        env = dict(os.environ, NOVA_HOME=str(home or nova_home))
        done = subprocess.run([*prefix, sys.executable, "-m", "nova_core.cli.main", *args],
                              cwd=cwd or project_dir, env=env, capture_output=True, text=True,
                              timeout=120)
        if check:
            assert done.returncode == 0, f"nova {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    yield run
    if (project_dir / "NovaFile").exists():
        run("down", check=False)


def in_capsule(nova, name: str, script: str, check: bool = False) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    return nova("exec", "container", name, "--", "sh", "-c", script, check=check)


def test_capsules_reach_each_other_by_name_and_not_across_networks(nova, project_dir: Path) -> None:
    write_novafile(project_dir, f"""
        project = "netp"

        [network.front]
        dns = true

        [network.back]
        subnet = "10.252.20.0/24"
        dns = true

        [container.web]
        capsule = "local/busybox:latest"
        network = "front"
        command = ["sh", "-c", "{SERVE}"]
        stop_timeout = 2

        [container.app]
        capsule = "local/busybox:latest"
        network = "front"
        command = ["sh", "-c", "{LOOP}"]
        stop_timeout = 2

        [container.db]
        capsule = "local/busybox:latest"
        network = "back"
        command = ["sh", "-c", "{SERVE}"]
        stop_timeout = 2

        [container.old]
        capsule = "local/busybox:latest"
        network = "front"
        runtime = "runc"
        command = ["sh", "-c", "{LOOP}"]
        stop_timeout = 2
        """)
    nova("up")
    with_runc = in_capsule(nova, "old", "ping -c1 -W2 web")  # runc joins the pinned namespaces too
    assert with_runc.returncode == 0, with_runc.stdout + with_runc.stderr
    pinged = in_capsule(nova, "app", "ping -c1 -W2 web && ping -c1 -W2 web.netp.nova")
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    assert in_capsule(nova, "app", "nc web 80 </dev/null").stdout == "hello-from-web\n"
    db_ip = json.loads(nova("net", "inspect", "back", "--json").stdout)["attached"][0]["ip"]
    assert db_ip.startswith("10.252.20.")
    blocked = in_capsule(nova, "app", f"ping -c1 -W1 {db_ip}")
    assert blocked.returncode != 0  # another Nova network: no route through the host
    assert in_capsule(nova, "app", "nslookup db 2>&1; true").stdout.count(db_ip) == 0
    refused = nova("net", "rm", "front", check=False)
    assert refused.returncode == 1
    assert "network front has instances attached: container.app, container.old, container.web" \
        in refused.stderr


def test_published_ports_answer_from_the_host_and_from_outside(nova, project_dir: Path) -> None:
    write_novafile(project_dir, f"""
        project = "portp"

        [network.lan]
        subnet = "10.252.21.0/24"

        [container.web]
        capsule = "local/busybox:latest"
        network = "lan"
        ports = ["18481:80", "127.0.0.1:18482:80"]
        command = ["sh", "-c", "{SERVE}"]
        stop_timeout = 2

        [container.client]
        capsule = "local/busybox:latest"
        network = "lan"
        command = ["sh", "-c", "{LOOP}"]
        stop_timeout = 2
        """)
    nova("up")
    outside = make_outside_host("nvtest-far", "198.18.21")
    try:
        def fetch(run: Callable[[], bytes]) -> bytes:
            deadline = time.monotonic() + 5
            while True:  # the one-connection nc in the capsule restarts between clients
                try:
                    return run()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

        def local(port: int) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
                return conn.recv(100)

        assert fetch(lambda: local(18482)) == b"hello-from-web\n"
        assert fetch(lambda: local(18481)) == b"hello-from-web\n"

        def from_outside() -> bytes:
            done = outside.run("busybox", "nc", "-w", "3", outside.host_address, "18481")
            if done.stdout != "hello-from-web\n":
                raise OSError(done.stderr)
            return done.stdout.encode()

        assert fetch(from_outside) == b"hello-from-web\n"

        def hairpin() -> bytes:  # a neighbour on the same network, through the published port
            done = in_capsule(nova, "client", "nc -w 3 10.252.21.1 18481 </dev/null")
            if done.stdout != "hello-from-web\n":
                raise OSError(done.stderr)
            return done.stdout.encode()

        assert fetch(hairpin) == b"hello-from-web\n"
        nova("stop", "container", "web")
        with pytest.raises(OSError):
            local(18482)  # withdrawn when the instance stops
    finally:
        outside.remove()


def test_publishing_port_53_leaves_the_networks_own_dns_alone(nova, project_dir: Path) -> None:
    """A capsule publishing host port 53 (the issue's own "53:53/udp") must not take over
    the DNS that Nova's dnsmasq serves on every network's gateway, which is a local
    address of the host too; and a second `nova up` of the same file changes nothing."""
    write_novafile(project_dir, f"""
        project = "dnsp"

        [network.lan]
        subnet = "10.252.26.0/24"
        dns = true

        [container.resolver]
        capsule = "local/busybox:latest"
        network = "lan"
        ports = ["53:53/udp", "53:53/tcp"]
        command = ["sh", "-c", "{LOOP}"]
        stop_timeout = 2

        [container.client]
        capsule = "local/busybox:latest"
        network = "lan"
        command = ["sh", "-c", "{LOOP}"]
        stop_timeout = 2
        """)
    nova("up")
    resolver_ip = json.loads(nova("net", "inspect", "lan", "--json").stdout)
    [resolver_ip] = [a["ip"] for a in resolver_ip["attached"] if a["instance"].endswith(".resolver")]
    looked_up = in_capsule(nova, "client", "nslookup resolver 10.252.26.1")
    assert looked_up.returncode == 0 and resolver_ip in looked_up.stdout, looked_up
    again = nova("up")
    assert "nothing to do" in (again.stdout + again.stderr).lower() or "unchanged" in again.stdout
    looked_up = in_capsule(nova, "client", "nslookup client")
    assert looked_up.returncode == 0, looked_up
    # and the published UDP port itself works: datagrams to the host's port 53 reach the
    # capsule, whose kernel counts them (nothing listens there, so as "NoPorts")
    def no_ports() -> int:
        return snmp_counters(in_capsule(nova, "resolver", "cat /proc/net/snmp").stdout,
                             "Udp")["NoPorts"]

    before = no_ports()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(3):
            sender.sendto(b"hello-over-udp", ("127.0.0.1", 53))
    assert no_ports() - before == 3


def test_nova_up_repairs_a_network_whose_creation_crashed(nova, nova_home: Path,
                                                        project_dir: Path) -> None:
    """`nova up` dies (os._exit, as a kill would) after making the bridge and before
    loading its rules; the next `nova up` finishes the network and starts the capsule on
    it, and `nova down` leaves nothing (the autouse check)."""
    write_novafile(project_dir, f"""
        project = "crashp"

        [network.lan]
        subnet = "10.252.27.0/24"

        [container.app]
        capsule = "local/busybox:latest"
        network = "lan"
        command = ["sh", "-c", "{LOOP}"]
        stop_timeout = 2
        """)
    crashing = ("import os, sys\n"
                "from nova_bridge import firewall\n"
                "firewall.apply = lambda *args: os._exit(70)\n"
                "from nova_core.cli.main import main\n"
                "sys.exit(main(['up']))\n")
    crashed = subprocess.run([sys.executable, "-c", crashing], cwd=project_dir, capture_output=True,
                             text=True, env=dict(os.environ, NOVA_HOME=str(nova_home)), timeout=120)
    assert crashed.returncode == 70, crashed.stdout + crashed.stderr
    from nova_bridge import firewall

    assert not firewall.table_exists(firewall.table_name(nova_home))  # it died before the rules
    nova("up")
    assert firewall.table_exists(firewall.table_name(nova_home))
    listing = {i["name"]: i["state"] for i in json.loads(nova("ls", "--json").stdout)}
    assert listing == {"app": "running"}
    pinged = in_capsule(nova, "app", "ping -c1 -W2 10.252.27.1")
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    again = nova("plan")
    assert "nothing to do" in again.stdout.lower() or "unchanged" in again.stdout.lower(), again.stdout


def test_nat_reaches_an_outside_address(nova, project_dir: Path) -> None:
    write_novafile(project_dir, f"""
        project = "natp"

        [network.lan]
        subnet = "10.252.22.0/24"

        [network.closed]
        subnet = "10.252.23.0/24"
        isolated = true

        [container.out]
        capsule = "local/busybox:latest"
        network = "lan"
        command = ["sh", "-c", "{LOOP}"]
        stop_timeout = 2

        [container.shut]
        capsule = "local/busybox:latest"
        network = "closed"
        command = ["sh", "-c", "{LOOP}"]
        stop_timeout = 2
        """)
    nova("up")
    outside = make_outside_host("nvtest-nat", "198.18.22", route_to_host=False)
    try:  # the outside knows no route back to 10.252.22.0/24: only NAT gets a reply home
        reached = in_capsule(nova, "out", f"ping -c1 -W2 {outside.address}")
        assert reached.returncode == 0, reached.stdout + reached.stderr
        # a route back to the isolated subnet: a reply could come home without NAT, so
        # only the isolation rules keep "shut" in
        subprocess.run(["ip", "-n", outside.name, "route", "add", "10.252.23.0/24", "via",
                        outside.host_address], check=True)
        closed = in_capsule(nova, "shut", f"ping -c1 -W1 {outside.address}")
        assert closed.returncode != 0
    finally:
        outside.remove()


def test_port_conflicts_are_refused_at_plan_time(nova, project_dir: Path) -> None:
    write_novafile(project_dir, f"""
        project = "clash"

        [network.lan]
        subnet = "10.252.24.0/24"

        [container.a]
        capsule = "local/busybox:latest"
        network = "lan"
        ports = ["18581:80"]
        command = ["sh", "-c", "{LOOP}"]

        [container.b]
        capsule = "local/busybox:latest"
        network = "lan"
        ports = ["0.0.0.0:18581:8080"]
        command = ["sh", "-c", "{LOOP}"]
        """)
    planned = nova("plan", check=False)
    assert planned.returncode == 1
    assert "container.b.ports: host port 18581/tcp is published also by container.a" in planned.stderr
    other = project_dir.parent / "other"
    other.mkdir()
    write_novafile(other, f"""
        project = "other"

        [network.lan2]
        subnet = "10.252.25.0/24"

        [container.x]
        capsule = "local/busybox:latest"
        network = "lan2"
        ports = ["18581:80"]
        command = ["sh", "-c", "{LOOP}"]
        stop_timeout = 2
        """)
    nova("up", cwd=other)
    try:
        text = (project_dir / "NovaFile").read_text()
        write_novafile(project_dir, text.replace('ports = ["0.0.0.0:18581:8080"]', ""))
        clash = nova("plan", check=False)
        assert clash.returncode == 1
        assert "container.a and container.x of project other both publish host port 18581/tcp" \
            in clash.stderr
    finally:
        nova("down", cwd=other)
    write_novafile(project_dir, text)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = (project_dir / "NovaFile").read_text()
        write_novafile(project_dir, text.replace('"0.0.0.0:18581:8080"', f'"{port}:8080"'))
        taken = nova("up", check=False)
    assert taken.returncode == 1
    assert f"container.b publishes host port {port}/tcp, but a program on the host already " \
           "listens there" in taken.stderr
    assert "Traceback" not in taken.stderr
    assert nova("ls", "--json").stdout.strip() == "[]"  # refused before anything was made


@pytest.fixture
def two_hosts() -> Iterator[tuple[OutsideHost, OutsideHost]]:
    """Two namespaces standing in for two machines, joined by a veth underlay."""
    a = netns.create(netns.NETNS_DIR / "nvtest-hosta")
    b = netns.create(netns.NETNS_DIR / "nvtest-hostb")
    hosts = (OutsideHost("nvtest-hosta", "", "198.18.30.1", ""),
             OutsideHost("nvtest-hostb", "", "198.18.30.2", ""))
    try:
        subprocess.run(["ip", "link", "add", "eth0", "netns", a.name, "type", "veth", "peer",
                        "name", "eth0", "netns", b.name], check=True)
        for host in hosts:
            for argv in (["addr", "add", f"{host.address}/30", "dev", "eth0"],
                         ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]):
                subprocess.run(["ip", "-n", host.name, *argv], check=True)
        yield hosts
    finally:
        netns.delete(a)
        netns.delete(b)


def test_vxlan_overlay_joins_capsules_on_two_hosts(nova, two_hosts, tmp_path: Path) -> None:
    """Each "host" is a network namespace with its own NOVA_HOME and its own nova."""
    folders = []
    for index, (host, peer) in enumerate((two_hosts, two_hosts[::-1])):
        home = tmp_path / f"home{index}"
        prepare_home(home, tmp_path)
        folder = tmp_path / f"site{index}"
        folder.mkdir()
        write_novafile(folder, f"""
            project = "site{index}"

            [network.ov]
            type = "overlay"
            driver = "vxlan"
            subnet = "10.252.30.0/24"
            gateway = "10.252.30.{index + 1}"
            ip_range = "10.252.30.{16 * (index + 1)}/28"
            vni = 4711
            peers = ["{peer.address}"]
            local = "{host.address}"

            [container.c{index}]
            capsule = "local/busybox:latest"
            network = "ov"
            command = ["sh", "-c", "{LOOP}"]
            stop_timeout = 2
            """)
        folders.append((host, home, folder))
    try:
        for host, home, folder in folders:
            nova("up", netns_path=host.path, home=home, cwd=folder)
        host, home, folder = folders[0]
        crossed = nova("exec", "container", "c0", "--", "ping", "-c2", "-W2", "10.252.30.32",
                       netns_path=host.path, home=home, cwd=folder, check=False)
        assert crossed.returncode == 0, crossed.stdout + crossed.stderr
        assert "2 packets received" in crossed.stdout
    finally:
        for host, home, folder in folders:
            nova("down", netns_path=host.path, home=home, cwd=folder, check=False)
            remove_run_folders(home)


def test_net_create_inspect_and_rm(nova, project_dir: Path) -> None:
    made = nova("net", "create", "scratch", "--subnet", "10.252.40.0/24", "--dns",
                "-o", "isolated=true", cwd=project_dir)
    assert "network scratch created in project 'default' (10.252.40.0/24)" in made.stdout
    listed = json.loads(nova("net", "ls", "--json").stdout)
    assert [(n["project"], n["name"], n["subnet"]) for n in listed] == \
        [("default", "scratch", "10.252.40.0/24")]
    info = json.loads(nova("net", "inspect", "scratch", "--json").stdout)
    assert info["host"]["isolated"] is True and info["host"]["dnsmasq_pid"]
    again = nova("net", "create", "scratch", check=False)
    assert again.returncode == 1 and "already exists in project 'default'" in again.stderr
    bad = nova("net", "create", "odd", "-o", "vni=12", "--driver", "vxlan", "--type", "overlay",
               "-o", "peers=10.9.9.9,10.9.9.10", check=False)
    assert bad.returncode == 1 and "an overlay needs subnet" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    nova("net", "rm", "scratch")
    missing = nova("net", "rm", "scratch", check=False)
    assert missing.returncode == 1 and "no network scratch" in missing.stderr
    assert json.loads(nova("net", "ls", "--json").stdout) == []
    small = nova("net", "create", "tiny", "--mtu", "300", check=False)
    assert small.returncode == 2 and "--mtu" in small.stderr and "576" in small.stderr, \
        small.stderr


def test_net_create_takes_an_mtu_and_an_uplink_only_with_force(nova) -> None:
    """An uplink with an address of the host's is refused by `nova net create` as by
    `nova up`, leaving nothing; --force enslaves it; `nova net rm` releases it."""
    subprocess.run(["ip", "link", "add", "nvtestnc0", "type", "veth", "peer", "name",
                    "nvtestnc1"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "198.18.78.1/24", "dev", "nvtestnc0"], check=True)
        refused = nova("net", "create", "lan", "--subnet", "10.252.41.0/24", "--mtu", "1400",
                       "--interface", "nvtestnc0", check=False)
        assert refused.returncode == 1, refused.stderr
        assert "enslaving nvtestnc0 to the bridge would cut the host's connectivity: it has " \
               "the host's address 198.18.78.1" in refused.stderr
        assert "nova net create --force" in refused.stderr and "Traceback" not in refused.stderr
        assert json.loads(nova("net", "ls", "--json").stdout) == []
        assert not Path("/sys/class/net/nvtestnc0/master").exists()

        nova("net", "create", "lan", "--subnet", "10.252.41.0/24", "--mtu", "1400",
             "--interface", "nvtestnc0", "--force")
        try:
            info = json.loads(nova("net", "inspect", "lan", "--json").stdout)
            assert (info["settings"]["mtu"], info["settings"]["interfaces"]) == \
                (1400, ["nvtestnc0"])
            bridge = info["host"]["bridge"]
            assert Path("/sys/class/net/nvtestnc0/master").resolve().name == bridge
            # the uplink is at 1500: the bridge keeps the network's MTU all the same
            assert Path("/sys/class/net/nvtestnc0/mtu").read_text().strip() == "1500"
            assert Path(f"/sys/class/net/{bridge}/mtu").read_text().strip() == "1400"
        finally:
            nova("net", "rm", "lan", check=False)
        assert not Path("/sys/class/net/nvtestnc0/master").exists()  # released, not deleted
        assert Path("/sys/class/net/nvtestnc0").exists()
    finally:
        subprocess.run(["ip", "link", "del", "nvtestnc0"], check=False)


def _guest_leases(nova, vm: str) -> tuple[str | None, str | None]:  # noqa: ANN001
    """The IPv4 and IPv6 addresses the test guest says it leased (its serial console)."""
    import re

    deadline = time.monotonic() + 90
    lease = lease6 = None
    while time.monotonic() < deadline and lease6 is None:
        serial = nova("logs", "vm", vm).stdout
        found = re.search(r"NOVA-LEASE (\S+)", serial)
        lease = found.group(1) if found else None
        found = re.search(r"NOVA-LEASE6 (\S+)", serial)
        lease6 = found.group(1) if found else None
        assert "NOVA-NO-LEASE" not in serial, serial  # nor NOVA-NO-LEASE6
        time.sleep(0.5)
    return lease, lease6


def _guest_beside_a_capsule(nova, project_dir: Path, project: str, third: int,  # noqa: ANN001
                            initrd: Path, vm_keys: list[str]) -> dict[str, str]:
    """Bring up a dual-stack network ``lan`` (10.252.THIRD.0/24, fd00:252:THIRD::/64,
    DNS), the test guest as ``vm.guest`` (plus ``vm_keys``, TOML lines) and a capsule
    ``peer``. The guest must lease, by DHCP and DHCPv6, the addresses IPAM reserved for its
    MAC, and the capsule must reach it by both names and at its IPv6 address. Returns the
    guest's attachment as `nova net inspect` shows it."""
    from nova_qemu.testing import guest_kernel

    extra = "".join(f"\n        {line}" for line in vm_keys)
    write_novafile(project_dir, f"""
        project = "{project}"

        [network.lan]
        subnet = "10.252.{third}.0/24"
        subnet6 = "fd00:252:{third}::/64"
        dns = true

        [vm.guest]
        kernel = "{guest_kernel()}"
        initrd = "{initrd}"
        cmdline = "console=ttyS0 panic=-1 quiet"
        memory = "128Mi"
        accel = "tcg"
        network = "lan"
        stop_timeout = 1{extra}

        [container.peer]
        capsule = "local/busybox:latest"
        network = "lan"
        command = ["sh", "-c", "{LOOP}"]
        stop_timeout = 2
        """)
    nova("up")
    reserved = {a["instance"]: a for a in
                json.loads(nova("net", "inspect", "lan", "--json").stdout)["attached"]}
    guest = reserved["vm.guest"]
    assert guest["endpoint"] == "tap"
    lease, lease6 = _guest_leases(nova, "guest")
    assert (lease, lease6) == (guest["ip"], guest["ip6"])
    pinged = in_capsule(nova, "peer", f"ping -c1 -W3 guest && ping -c1 -W3 guest.{project}.nova"
                                      f" && ping -c1 -W3 {lease6}")
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    return guest


def test_a_vm_and_a_capsule_share_a_network(nova, project_dir: Path, tmp_path: Path) -> None:
    """A real guest under TCG (Debian's cloud kernel, busybox initramfs with virtio-net)
    gets its reserved address by DHCP from the network's dnsmasq, and a capsule reaches
    it by name; on the network's IPv6 subnet it gets its reserved address by DHCPv6 (ISC
    dhclient in the initramfs) and the capsule reaches that too. The guest serves HTTP on
    port 80, published on the host: it answers on the host's addresses, on localhost, and
    from another host, until the VM stops."""
    from nova_qemu.testing import INIT, busybox_initramfs

    serve = ("/bin/busybox mkdir -p /www; echo hello-from-guest > /www/index.html\n"
             "/bin/busybox httpd -p 80 -h /www\n")
    assert INIT.count("\ni=0\n") == 1
    initrd = busybox_initramfs(tmp_path / "initrd.gz", INIT.replace("\ni=0\n", f"\n{serve}i=0\n"),
                               dhcp6=True)
    _guest_beside_a_capsule(nova, project_dir, "mixed", 50, initrd,
                            ['ports = ["18483:80", "127.0.0.1:18484:80"]'])

    def get(port: int, address: str = "127.0.0.1") -> str:
        with socket.create_connection((address, port), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        return reply.decode(errors="replace")

    assert get(18483).endswith("\r\n\r\nhello-from-guest\n")
    assert get(18484).endswith("\r\n\r\nhello-from-guest\n")
    outside = make_outside_host("nvtest-vmfar", "198.18.23")
    try:
        done = outside.run("busybox", "wget", "-qO-", f"http://{outside.host_address}:18483/")
        assert done.stdout == "hello-from-guest\n", done.stderr
        done = outside.run("busybox", "wget", "-qO-", "-T", "3",
                           f"http://{outside.host_address}:18484/")
        assert done.returncode != 0  # published on 127.0.0.1 only
    finally:
        outside.remove()
    nova("stop", "vm", "guest")
    with pytest.raises(OSError):
        get(18483)  # withdrawn when the VM stops


def test_a_libvirt_domain_gets_its_leases_on_a_nova_bridge(nova, project_dir: Path,
                                                            tmp_path: Path) -> None:
    """The same guest as a libvirt domain (a private libvirtd, see PrivateLibvirtd): its
    interface is Nova's tap (type ethernet, managed no); it gets its reserved addresses by
    DHCP and DHCPv6, and a capsule on the network reaches it by name."""
    from nova_qemu.testing import PrivateLibvirtd, busybox_initramfs

    initrd = busybox_initramfs(tmp_path / "initrd.gz", dhcp6=True)
    daemon = PrivateLibvirtd(tmp_path / "libvirt").start()
    try:
        guest = _guest_beside_a_capsule(nova, project_dir, "lvnet", 51, initrd,
                                        ['driver = "libvirt"', f'uri = "{daemon.uri}"'])
        domain = subprocess.run(["virsh", "-c", daemon.uri, "domiflist", "lvnet.guest"],
                                capture_output=True, text=True, check=True).stdout
        assert guest["tap"] in domain and guest["mac"] in domain
        nova("down")
        assert subprocess.run(["virsh", "-c", daemon.uri, "list", "--all", "--name"],
                              capture_output=True, text=True, check=True).stdout.strip() == ""
    finally:
        nova("down", check=False)
        daemon.stop()
