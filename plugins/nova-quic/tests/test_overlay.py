"""The quic overlay end to end: simulated hosts (network namespaces on a veth switch),
each with its own NOVA_HOME, real nova CLI, crun capsules, dnsmasq and an overlay
endpoint. Nothing leaves the namespaces the tests make; every test leaves the host's
links, namespaces, nft ruleset and processes as it found them."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nova_bridge.testing import host_unchanged, snmp_counters
from nova_capsule.testing import busybox_layer
from nova_quic.testing import Site, endpoint_processes, underlay

from nova_core.testing.cleanup import remove_run_folders

NETWORK = """[network.mesh]
type = "overlay"
driver = "quic"
subnet = "10.254.10.0/24"
dns = true
listen = "{listen}:4433"
"""


@pytest.fixture(autouse=True)
def _host_unchanged() -> Iterator[None]:
    with host_unchanged():
        yield


@pytest.fixture
def busybox(tmp_path: Path) -> Path:
    path = tmp_path / "busybox.tar.gz"
    path.write_bytes(busybox_layer())
    return path


def _no_leftovers(sites: list[Site]) -> None:
    """After nova down: no endpoint, no TAP, no bridge in any host."""
    for site in sites:
        assert endpoint_processes(site.home) == []
        names = [line.split(": ")[1].split("@")[0]
                 for line in site.host.run("ip", "-o", "link").stdout.splitlines()]
        assert names == ["lo", "eth0"], names


def _wait_listening(site: Site, capsule: str, port: int, timeout: float = 30) -> None:
    """Wait until a TCP socket listens on ``port`` in the capsule (IPv4 or IPv6, as
    /proc/net lists them): starting ``nova exec`` takes longer on a busy machine than
    any fixed pause."""
    pattern = f":{port:04X} [0:]+ 0A "  # local port, any remote, state LISTEN
    deadline = time.monotonic() + timeout
    while site.exec(capsule, f"grep -qE '{pattern}' /proc/net/tcp /proc/net/tcp6").returncode:
        assert time.monotonic() < deadline, f"nothing listens on {port} in {capsule}"
        time.sleep(0.1)


def _fragments(site: Site) -> tuple[int, int]:
    """IPv4 fragments made and reassemblies asked for in the host's underlay namespace."""
    ip = snmp_counters(site.host.run("cat", "/proc/net/snmp").stdout, "Ip")
    return ip["FragCreates"], ip["ReasmReqds"]


def _down(sites: list[Site]) -> None:
    for site in sites:
        site.nova("down")
        remove_run_folders(site.home)


def test_three_hosts_share_one_encrypted_network(tmp_path: Path, busybox: Path) -> None:
    with underlay("ovl3", 3, "198.18.80") as hosts:
        sites = [Site(host, tmp_path, busybox) for host in hosts]
        alpha, beta, gamma = sites
        try:
            alpha.nova("overlay", "ca", "init", "mesh", "--host", "alpha",
                       "--peer", f"{alpha.host.address}:4433", check=True)
            for site, name in ((beta, "beta"), (gamma, "gamma")):
                bundle = tmp_path / f"{name}.bundle"
                alpha.nova("overlay", "issue", "mesh", name, "-o", str(bundle), check=True)
                assert bundle.stat().st_mode & 0o777 == 0o600
                joined = site.nova("overlay", "join", str(bundle), check=True)
                assert f"as '{name}'" in joined.stdout
                key = site.home / "overlay" / "mesh" / "host.key"
                assert key.stat().st_mode & 0o777 == 0o600
                assert "PRIVATE KEY" not in joined.stdout + joined.stderr
            for index, site in enumerate(sites):
                site.novafile(f"site{index}", NETWORK.format(listen=site.host.address),
                              [f"c{index}"])
                site.nova("up", check=True)
            # gamma knows only alpha (from its bundle): it learns beta from alpha.
            alpha.wait_connected("mesh", {"beta", "gamma"})
            beta.wait_connected("mesh", {"alpha", "gamma"})
            gamma.wait_connected("mesh", {"alpha", "beta"})
            info = alpha.inspect("mesh")
            assert info["host"]["overlay_mtu"] == 1380
            assert info["host"]["overlay_datapath"] == "compiled"
            assert info["host"]["overlay_channel_drops"] == 0
            # host i: gateway .i, instances from the i-th sixteenth of the subnet
            assert alpha.capsule_netns("mesh", "c0")[1] == "10.254.10.16"
            assert gamma.capsule_netns("mesh", "c2")[1] == "10.254.10.48"

            # by name, across hosts, through each host's own dnsmasq
            for target in ("c1", "c2", "c2.site2.nova"):
                done = alpha.exec("c0", f"ping -c1 -W3 {target}")
                assert done.returncode == 0, done.stdout + done.stderr
            done = gamma.exec("c2", "ping -c1 -W3 c1")
            assert done.returncode == 0, done.stdout + done.stderr

            # a frame as large as the inner MTU (1380) crosses whole: its encrypted
            # datagram fits the underlay's 1500, so no host fragments anything
            before = [_fragments(site) for site in sites]
            done = alpha.exec("c0", "ping -c2 -W3 -s 1352 c1")  # 1352 + 28 = 1380
            assert done.returncode == 0 and "1360 bytes from" in done.stdout, done.stdout
            assert [_fragments(site) for site in sites] == before

            # the underlay carries no plaintext
            marker = "NOVA-PLAINTEXT-" + os.urandom(8).hex()
            capture = tmp_path / "underlay.pcap"
            # --immediate-mode: else the kernel hands packets over in blocks retired after
            # a second, and those of the last block before tcpdump stops are lost
            dump = subprocess.Popen(["nsenter", f"--net={alpha.host.path}", "tcpdump",
                                     "--immediate-mode", "-i", "eth0", "-U", "-n", "-w",
                                     str(capture), "udp"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            listener = None
            try:
                assert dump.stderr is not None
                # tcpdump says "listening on eth0" once it captures (it may warn first)
                said = [dump.stderr.readline()]
                while said[-1] and b"listening on" not in said[-1]:
                    said.append(dump.stderr.readline())
                assert said[-1], f"tcpdump ended: {said}"
                listener = subprocess.Popen(
                    ["nsenter", f"--net={beta.host.path}", "env", f"NOVA_HOME={beta.home}",
                     *_nova_argv(), "exec", "container", "c1", "--", "sh", "-c",
                     "nc -l -p 7000"], cwd=beta.folder, stdout=subprocess.PIPE, text=True)
                _wait_listening(beta, "c1", 7000)
                sent = alpha.exec("c0", f"for i in 1 2 3; do echo {marker}; done | nc c1 7000")
                assert sent.returncode == 0, sent.stdout + sent.stderr
                received, _ = listener.communicate(timeout=10)
                assert marker in received
                time.sleep(0.5)
            finally:
                if listener is not None and listener.poll() is None:
                    listener.kill()
                    listener.wait()
                dump.send_signal(signal.SIGINT)
                dump.communicate(timeout=10)
            packets = subprocess.run(["tcpdump", "-r", str(capture), "-n", "udp port 4433"],
                                     capture_output=True, text=True).stdout.splitlines()
            assert len(packets) > 6  # the marker's TCP exchange crossed here, encrypted
            assert marker.encode() not in capture.read_bytes()

            # inspect counts what crossed: frames and bytes each way, and a round-trip time
            deadline = time.monotonic() + 5  # the status is written every second
            while True:
                peer = {p["name"]: p for p in alpha.inspect("mesh")["host"]["peers"]}["beta"]
                if min(peer["tx_packets"], peer["rx_packets"]) >= 6:
                    break
                assert time.monotonic() < deadline, peer
                time.sleep(0.2)
            assert peer["state"] == "connected" and peer["drops"] == 0
            assert peer["tx_bytes"] > 3 * len(marker) and peer["rx_bytes"] > 0
            assert 0 < peer["rtt_ms"] < 1000

            # one endpoint dies: its supervisor restarts it, the others are not touched
            before = {p["name"]: p["since"] for p in alpha.inspect("mesh")["host"]["peers"]}
            victim = int(gamma.inspect("mesh")["host"]["overlay_endpoint_pid"])
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 25
            while True:
                done = alpha.exec("c0", "ping -c1 -W1 c2")
                if done.returncode == 0:
                    break
                assert time.monotonic() < deadline, "c2 unreachable after its endpoint restarted"
            restarted = gamma.inspect("mesh")["host"]["overlay_endpoint_pid"]
            assert restarted and restarted != victim
            after = {p["name"]: p["since"] for p in alpha.inspect("mesh")["host"]["peers"]}
            assert after["beta"] == before["beta"]  # alpha-beta kept its connection
            assert after["gamma"] != before["gamma"]

            # nova down on gamma: alpha and beta stay connected, gamma's names go
            gamma.nova("down", check=True)
            alpha.wait_connected("mesh", {"beta"})
            beta.wait_connected("mesh", {"alpha"})
            done = alpha.exec("c0", "ping -c1 -W3 c1")
            assert done.returncode == 0, done.stdout + done.stderr
            gone = alpha.exec("c0", "nslookup c2 10.254.10.1")
            assert "10.254.10.48" not in gone.stdout

            # an instance that goes (beta's NovaFile without c1): its name leaves the other
            # hosts' DNS too, with both hosts still connected
            assert "10.254.10.32" in alpha.exec("c0", "nslookup c1 10.254.10.1").stdout
            beta.novafile("site1", NETWORK.format(listen=beta.host.address), [])
            beta.nova("up", check=True)
            deadline = time.monotonic() + 15
            while "10.254.10.32" in alpha.exec("c0", "nslookup c1 10.254.10.1").stdout:
                assert time.monotonic() < deadline, "c1's name outlived c1"
                time.sleep(0.5)
            assert "10.254.10.16" in alpha.exec("c0", "nslookup c0 10.254.10.1").stdout  # DNS works
            assert alpha.connected("mesh") == {"beta"}
            _down([alpha, beta])
            _no_leftovers(sites)
        finally:
            _down(sites)


def _transfer(server: Site, client: Site, name: str, port: int, size: int) -> None:
    """``size`` random bytes over HTTP from capsule c0 of ``server`` (busybox httpd) to
    ``client``'s c0 (wget from ``name``), which gets them all, unchanged."""
    served = server.exec("c0", f"mkdir -p /tmp/www && head -c {size} /dev/urandom > /tmp/www/b"
                               f" && md5sum < /tmp/www/b && httpd -p {port} -h /tmp/www")
    assert served.returncode == 0, served.stdout + served.stderr
    got = client.exec("c0", f"wget -qO /tmp/b http://{name}:{port}/b && wc -c < /tmp/b"
                            " && md5sum < /tmp/b", timeout=60)
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.split()[:2] == [str(size), served.stdout.split()[0]]


def test_hosts_with_and_without_the_compiled_data_path_interoperate(tmp_path: Path,
                                                                     busybox: Path) -> None:
    """alpha's endpoint carries frames in C (nova_quic/datapath.c), beta's in Python (as
    where the library was not built): names, pings and TCP transfers both ways, with
    super-frames cut into pieces by one and put together by the other. Then beta's
    endpoint freezes: alpha's keepalives find the peer dead, and when it thaws both
    sides connect again. Last, both TAPs are deleted: each data path stops with the
    reason in the log, and the supervisors restart both endpoints."""
    with underlay("ovlm", 2, "198.18.83") as hosts:
        alpha = Site(hosts[0], tmp_path, busybox)
        beta = Site(hosts[1], tmp_path, busybox, env={"NOVA_QUIC_DATAPATH": "python"})
        sites = [alpha, beta]
        try:
            alpha.nova("overlay", "ca", "init", "mesh", "--host", "alpha",
                       "--peer", f"{alpha.host.address}:4433", check=True)
            bundle = tmp_path / "beta.bundle"
            alpha.nova("overlay", "issue", "mesh", "beta", "-o", str(bundle), check=True)
            beta.nova("overlay", "join", str(bundle), check=True)
            for index, site in enumerate(sites):
                site.novafile(f"mixed{index}", NETWORK.format(listen=site.host.address), ["c0"])
                site.nova("up", check=True)
            alpha.wait_connected("mesh", {"beta"})
            beta.wait_connected("mesh", {"alpha"})
            assert alpha.inspect("mesh")["host"]["overlay_datapath"] == "compiled"
            assert beta.inspect("mesh")["host"]["overlay_datapath"] == "python"
            done = alpha.exec("c0", "ping -c2 -W3 c0.mixed1.nova")
            assert done.returncode == 0, done.stdout + done.stderr
            _transfer(alpha, beta, "c0.mixed0.nova", 7100, 8_000_000)
            _transfer(beta, alpha, "c0.mixed1.nova", 7101, 8_000_000)

            # a peer that stops answering (a frozen process, a cut cable) is found dead
            # by the keepalives within the idle timeout, and comes back when it answers
            frozen = int(beta.inspect("mesh")["host"]["overlay_endpoint_pid"])
            os.kill(frozen, signal.SIGSTOP)
            try:
                alpha.wait_connected("mesh", set(), timeout=20)
                states = {p["addr"]: p["state"] for p in alpha.inspect("mesh")["host"]["peers"]}
                assert states == {f"{beta.host.address}:4433": "connecting"}
            finally:
                os.kill(frozen, signal.SIGCONT)
            alpha.wait_connected("mesh", {"beta"}, timeout=30)
            beta.wait_connected("mesh", {"alpha"}, timeout=30)
            assert int(beta.inspect("mesh")["host"]["overlay_endpoint_pid"]) == frozen
            done = beta.exec("c0", "ping -c1 -W3 c0.mixed0.nova")
            assert done.returncode == 0, done.stdout + done.stderr
            logs = [Path(str(site.inspect("mesh")["host"]["overlay_log"])) for site in sites]
            for log in logs:
                assert " ERROR " not in log.read_text(), log.read_text()

            # a TAP deleted under the endpoint (`ip link del`): the data path stops (the
            # thread in C on alpha, on_tap on beta), the endpoint exits, and its supervisor
            # starts it again with a new TAP on the bridge
            old = []
            for site in sites:
                host = site.inspect("mesh")["host"]
                old.append(int(host["overlay_endpoint_pid"]))
                site.host.run("ip", "link", "del", str(host["overlay_tap"]), check=True)
            for site, pid in zip(sites, old, strict=True):
                deadline = time.monotonic() + 20
                while site.inspect("mesh")["host"]["overlay_endpoint_pid"] in (pid, None):
                    assert time.monotonic() < deadline, f"{site.host.name}: not restarted"
                    time.sleep(0.2)
            alpha.wait_connected("mesh", {"beta"}, timeout=30)
            beta.wait_connected("mesh", {"alpha"}, timeout=30)
            for site, datapath in zip(sites, ("compiled", "python"), strict=True):
                assert site.inspect("mesh")["host"]["overlay_datapath"] == datapath
            done = alpha.exec("c0", "ping -c1 -W3 c0.mixed1.nova")
            assert done.returncode == 0, done.stdout + done.stderr
            errors = [[line.split(" ERROR ", 1)[1] for line in log.read_text().splitlines()
                       if " ERROR " in line] for log in logs]
            assert errors[0][0] == "mesh: the compiled data path stopped: read from the TAP: " \
                "File descriptor in bad state", errors
            assert errors[1][0].startswith("mesh: the python data path stopped: reading TAP "), \
                errors
            assert errors[1][0].endswith("File descriptor in bad state"), errors
            assert all(len(lines) == 2 for lines in errors), errors  # that, and the exit's
            _down(sites)
            _no_leftovers(sites)
        finally:
            _down(sites)


def _nova_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "nova_core.cli.main"]


def test_foreign_revoked_and_missing_credentials_are_refused(tmp_path: Path,
                                                             busybox: Path) -> None:
    with underlay("ovlr", 4, "198.18.81") as hosts:
        sites = [Site(host, tmp_path, busybox) for host in hosts]
        alpha, beta, rogue, gamma = sites
        try:
            alpha.novafile("ra", NETWORK.format(listen=alpha.host.address), ["c0"])
            refused = alpha.nova("up")
            assert refused.returncode == 1
            assert "this host has no credentials for overlay network mesh" in refused.stderr
            assert "nova overlay ca init mesh" in refused.stderr
            assert "Traceback" not in refused.stderr
            assert alpha.nova("ls", "--json").stdout.strip() == "[]"

            alpha.nova("overlay", "ca", "init", "mesh", "--host", "alpha",
                       "--peer", f"{alpha.host.address}:4433", check=True)
            bundle = tmp_path / "beta.bundle"
            alpha.nova("overlay", "issue", "mesh", "beta", "-o", str(bundle), check=True)
            beta.nova("overlay", "join", str(bundle), check=True)
            bundle = tmp_path / "gamma.bundle"
            alpha.nova("overlay", "issue", "mesh", "gamma", "-o", str(bundle), check=True)
            gamma.nova("overlay", "join", str(bundle), check=True)
            # same network name, its own CA: not a member
            rogue.nova("overlay", "ca", "init", "mesh", "--host", "rogue", check=True)
            beta.novafile("rb", NETWORK.format(listen=beta.host.address), ["c1"])
            gamma.novafile("rg", NETWORK.format(listen=gamma.host.address), ["c3"])
            rogue.novafile("rr", NETWORK.format(listen=rogue.host.address)
                           + f'peers = ["{alpha.host.address}:4433"]\n', ["c2"])
            for site in sites:
                site.nova("up", check=True)
            alpha.wait_connected("mesh", {"beta", "gamma"})
            gamma.wait_connected("mesh", {"alpha", "beta"})  # beta learned from alpha
            deadline = time.monotonic() + 15
            while True:
                host = alpha.inspect("mesh")["host"]
                reasons = [r["reason"] for r in host["refused"]]
                if any("not from this network's CA" in r for r in reasons):
                    break
                assert time.monotonic() < deadline, (
                    host["refused"], host["peers"], Path(str(host["overlay_log"])).read_text(),
                    Path(str(rogue.inspect("mesh")["host"]["overlay_log"])).read_text())
                time.sleep(0.2)
            # rogue's side says so too, once its status file (written every second) does
            wanted = {f"{alpha.host.address}:4433": "refused"}
            deadline = time.monotonic() + 5
            while (states := {p["addr"]: p["state"]
                              for p in rogue.inspect("mesh")["host"]["peers"]}) != wanted:
                assert time.monotonic() < deadline, states
                time.sleep(0.2)
            assert rogue.connected("mesh") == set()
            log = (alpha.inspect("mesh")["host"]["overlay_log"])
            assert "refused" in Path(log).read_text()
            blocked = rogue.exec("c2", "ping -c1 -W1 10.254.10.32")  # beta's c1
            assert blocked.returncode != 0

            # revocation: the CA's host drops beta at once, and the revocation list it
            # passes on makes gamma drop beta too; beta cannot come back to either
            revoked = alpha.nova("overlay", "revoke", "mesh", "beta", check=True)
            assert "revoked 'beta'" in revoked.stdout
            alpha.wait_connected("mesh", {"gamma"}, timeout=10)
            gamma.wait_connected("mesh", {"alpha"}, timeout=10)
            time.sleep(3)  # beta keeps dialing: every attempt is refused
            assert alpha.connected("mesh") == {"gamma"} and gamma.connected("mesh") == {"alpha"}
            for site in (alpha, gamma):
                reasons = [r["reason"] for r in site.inspect("mesh")["host"]["refused"]]
                assert any("was revoked" in r for r in reasons), (site.host.name, reasons)
            again = alpha.nova("overlay", "issue", "mesh", "beta")
            assert again.returncode == 1 and "was revoked" in again.stderr
            _down(sites)
            _no_leftovers(sites)
        finally:
            _down(sites)


def test_a_certificate_that_expires_while_connected_is_dropped(tmp_path: Path,
                                                               busybox: Path) -> None:
    """A peer whose certificate runs out during a connection is dropped then, not at its
    next handshake (keepalives would keep that connection up for good), and its attempts
    to come back are refused, with the reason in `nova net inspect`."""
    from nova_quic.pki import OverlayStore, utcnow, write_bundle

    with underlay("ovle", 2, "198.18.82") as hosts:
        sites = [Site(host, tmp_path, busybox) for host in hosts]
        alpha, beta = sites
        try:
            alpha.nova("overlay", "ca", "init", "mesh", "--host", "alpha",
                       "--peer", f"{alpha.host.address}:4433", check=True)
            # whole seconds: that is what the certificate holds (X.509 has no fractions)
            ends = (utcnow() + datetime.timedelta(seconds=20)).replace(microsecond=0)
            bundle = tmp_path / "beta.bundle"
            write_bundle(bundle, OverlayStore(alpha.home).issue(
                "mesh", "beta", peers=[f"{alpha.host.address}:4433"], not_after=ends))
            beta.nova("overlay", "join", str(bundle), check=True)
            alpha.novafile("ea", NETWORK.format(listen=alpha.host.address), ["c0"])
            beta.novafile("eb", NETWORK.format(listen=beta.host.address), ["c1"])
            for site in sites:
                site.nova("up", check=True)
            alpha.wait_connected("mesh", {"beta"})
            assert utcnow() < ends  # connected while the certificate was valid
            alpha.wait_connected("mesh", set(), timeout=40)
            assert utcnow() >= ends
            reasons = [r["reason"] for r in alpha.inspect("mesh")["host"]["refused"]]
            assert any("certificate of 'beta' expired on" in r for r in reasons), reasons
            _down(sites)
            _no_leftovers(sites)
        finally:
            _down(sites)
