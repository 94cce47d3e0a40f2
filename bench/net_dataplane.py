#!/usr/bin/env python3
"""Network data plane and attach speed: Nova against the same topology built by hand.

1. Two capsules on a Nova bridge (`nova up`), against two namespaces on a bridge made
   with `ip` commands: iperf3 TCP throughput and ping round-trip time between them.
2. The same over VXLAN: two "hosts" (network namespaces joined by a veth underlay),
   each running its own Nova (own NOVA_HOME) with a vxlan network and one capsule,
   against bridges + VXLAN devices + namespaces made by hand in two such hosts.
3. Attaching and detaching 50 instances (namespace, veth pair on the bridge,
   address, default route): the bridge driver's attach/detach, against an
   `ip -batch` file for the host side plus `ip -n NS -batch` per namespace.

iperf3 and ping run in the capsules' own network namespaces (nsenter --net), so
both sides measure the same path: veth, bridge (and VXLAN), veth.
Targets from the issue: throughput at least 0.97 of hand-built, latency at most
1.05 of it, attach within 1.5 times `ip -batch`.

    sudo .venv/bin/python bench/net_dataplane.py [--seconds 3] [--rounds 3]

Needs root, iperf3 (apt-get install iperf3), busybox, crun/conmon (for the
capsules). Everything lives in namespaces and bridges it makes and removes; no
packet leaves the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from timing import samples_in_turns, scratch_folder

REPO = Path(__file__).resolve().parent.parent
LOOP = "trap 'exit 0' TERM; while true; do sleep 1; done"


def sh(*argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output."""
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=check)


def in_ns(path: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in a network namespace (by path)."""
    return sh("nsenter", f"--net={path}", *argv, check=check)


def iperf(server_ns: str, client_ns: str, server_ip: str, seconds: float,
          streams: int = 1) -> float:
    """TCP throughput (Gbit/s received) of ``streams`` parallel streams, client to server.

    With two CPUs or more, client and server are pinned to CPUs 0 and 1 (iperf3 -A), for
    every setup alike: the scheduler moving them around was most of the run-to-run noise.
    """
    pin = (["-A", "1"], ["-A", "0"]) if (os.cpu_count() or 1) >= 2 else ([], [])
    server = subprocess.Popen(["nsenter", f"--net={server_ns}", "iperf3", "-s", "-B", server_ip,
                               *pin[0]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            done = in_ns(client_ns, "iperf3", "-c", server_ip, "-t", str(seconds), "-P", str(streams),
                         *pin[1], "-J", check=False)
            try:
                return json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
            except (ValueError, KeyError):
                time.sleep(0.1)  # the server is still starting
        raise RuntimeError(f"iperf3 to {server_ip} failed: {done.stdout[-300:]}")
    finally:
        server.kill()
        server.wait()


def rtt_samples(client_ns: str, target: str, count: int) -> list[float]:
    """Every ping round trip (ms) of ``count`` pings, 5 ms apart."""
    done = in_ns(client_ns, "busybox", "ping", "-c", str(count), "-i", "0.005", target)
    times = [float(x) for x in re.findall(r"time=([\d.]+) ms", done.stdout)]
    if not times:
        raise RuntimeError(f"no ping replies from {target}: {done.stdout[-300:]}")
    return times


# -- hand-built topologies ------------------------------------------------------------------
def hand_bridge(tag: str, subnet: str, prefix_ns: str = "") -> tuple[list[str], Callable[[], None]]:
    """bridge + two namespaces with veth pairs, by `ip` (optionally inside namespace prefix_ns)."""
    ip = ["ip", "-n", prefix_ns] if prefix_ns else ["ip"]
    bridge = f"hb{tag}"
    names = [f"hb{tag}a", f"hb{tag}b"]
    sh(*ip, "link", "add", bridge, "type", "bridge")
    sh(*ip, "addr", "add", f"{subnet}.1/24", "dev", bridge)
    sh(*ip, "link", "set", bridge, "up")
    paths = []
    for index, name in enumerate(names):
        sh("ip", "netns", "add", name)
        sh(*ip, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", name)
        sh(*ip, "link", "set", f"v{name}", "master", bridge, "up")
        sh("ip", "-n", name, "addr", "add", f"{subnet}.{index + 2}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        paths.append(f"/run/netns/{name}")

    def cleanup() -> None:
        for name in names:
            sh("ip", "netns", "del", name, check=False)
        sh(*ip, "link", "del", bridge, check=False)

    return paths, cleanup


def two_hosts(tag: str, underlay: str) -> tuple[list[str], Callable[[], None]]:
    """Two namespaces standing in for hosts, joined by a veth underlay ``underlay``.1/.2."""
    names = [f"nb{tag}a", f"nb{tag}b"]
    for name in names:
        sh("ip", "netns", "add", name)
    sh("ip", "link", "add", "eth0", "netns", names[0], "type", "veth", "peer", "name", "eth0",
       "netns", names[1])
    for index, name in enumerate(names):
        sh("ip", "-n", name, "addr", "add", f"{underlay}.{index + 1}/30", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def cleanup() -> None:
        for name in names:
            sh("ip", "netns", "del", name, check=False)

    return names, cleanup


def hand_vxlan(hosts: list[str], underlay: str) -> tuple[list[str], Callable[[], None]]:
    """In each host: a bridge (mtu 1450) with a VXLAN device and one container namespace."""
    paths = []
    for index, host in enumerate(hosts):
        peer = f"{underlay}.{2 - index}"
        ip = ["ip", "-n", host]
        sh(*ip, "link", "add", "hvbr", "mtu", "1450", "type", "bridge")
        sh(*ip, "addr", "add", f"10.253.40.{index + 1}/24", "dev", "hvbr")
        sh(*ip, "link", "set", "hvbr", "up")
        sh(*ip, "link", "add", "hvx", "mtu", "1450", "type", "vxlan", "id", "99", "dstport", "4789",
           "local", f"{underlay}.{index + 1}")
        sh(*ip, "link", "set", "hvx", "master", "hvbr", "up")
        sh("bridge", "-n", host, "fdb", "append", "00:00:00:00:00:00", "dev", "hvx", "dst", peer)
        ns = f"hvc{index}"
        sh("ip", "netns", "add", ns)
        sh(*ip, "link", "add", "hvv", "mtu", "1450", "type", "veth", "peer", "name", "eth0",
           "mtu", "1450", "netns", ns)  # both ends: as Nova does
        sh(*ip, "link", "set", "hvv", "master", "hvbr", "up")
        sh("ip", "-n", ns, "addr", "add", f"10.253.40.{10 + index}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        paths.append(f"/run/netns/{ns}")

    def cleanup() -> None:
        for index, host in enumerate(hosts):
            sh("ip", "netns", "del", f"hvc{index}", check=False)
            for link in ("hvv", "hvx", "hvbr"):
                sh("ip", "-n", host, "link", "del", link, check=False)

    return paths, cleanup


# -- Nova --------------------------------------------------------------------------------------
class Nova:
    """One NOVA_HOME with local/busybox imported; runs the nova CLI (optionally in a host ns)."""

    def __init__(self, home: Path, host_ns: str | None = None) -> None:
        from nova_capsule.testing import busybox_layer

        self.home, self.host_ns = home, host_ns
        home.mkdir(parents=True)
        (home / "config.toml").write_text('[images]\ndefault_registry = "127.0.0.1:9"\n')
        tarball = home / "busybox.tar.gz"
        tarball.write_bytes(busybox_layer())
        self("image", "import", str(tarball), "local/busybox")

    def __call__(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        prefix = ["nsenter", f"--net=/run/netns/{self.host_ns}"] if self.host_ns else []
        return subprocess.run([*prefix, sys.executable, "-m", "nova_core.cli.main", *args],
                              cwd=cwd, env=dict(os.environ, NOVA_HOME=str(self.home)),
                              capture_output=True, text=True, check=True)

    def netns_of(self, network: str, cwd: Path) -> dict[str, tuple[str, str]]:
        """instance name -> (namespace path, address) on ``network``."""
        info = json.loads(self("net", "inspect", network, "--json", cwd=cwd).stdout)
        return {a["instance"].split(".", 1)[1]: (a["netns"], a["ip"]) for a in info["attached"]}


def capsules_file(folder: Path, project: str, network: str, names: list[str]) -> None:
    """A NovaFile with ``network`` (a [network.NAME] table) and sleeping capsules on it."""
    net_name = network.split("]", 1)[0].split(".", 1)[1]
    text = [f'project = "{project}"', network]
    for name in names:
        text.append(f'[container.{name}]\ncapsule = "local/busybox:latest"\nnetwork = "{net_name}"\n'
                    f'command = ["sh", "-c", "{LOOP}"]\nstop_timeout = 2')
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "NovaFile").write_text("\n".join(text) + "\n")


#: pings per block; a round pings every setup in turns, PING_BLOCKS blocks each
PING_BLOCK, PING_BLOCKS = 60, 5


def measure_interleaved(pairs: dict[str, tuple[list[str], str]], seconds: float, rounds: int
                        ) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Throughput, RTT and per-block RTT of each pair, measured in turns so that the
    machine's drift over time hits every setup alike.

    Each round runs iperf3 once per setup, then pings every setup in turns, PING_BLOCK
    pings at a time: the machine's wake-up latency drifts by 20 % within seconds, so 300
    pings in one go per setup left the ratio of two setups to chance; blocks a third of a
    second apart each do not. The round's RTT is the median of all its replies; each
    block's median is kept for the ratios within a block.
    """
    gbits: dict[str, list[float]] = {name: [] for name in pairs}
    rtts: dict[str, list[float]] = {name: [] for name in pairs}
    blocks: dict[str, list[float]] = {name: [] for name in pairs}
    pingers = {name: functools.partial(rtt_samples, paths[0], server_ip, PING_BLOCK)
               for name, (paths, server_ip) in pairs.items()}
    for _ in range(rounds):
        for name, (paths, server_ip) in pairs.items():
            gbits[name].append(iperf(paths[1], paths[0], server_ip, seconds))
        replies = samples_in_turns(pingers, PING_BLOCKS, blocks)
        for name in pairs:
            rtts[name].append(statistics.median(replies[name]))
    return {name: (gbits[name], rtts[name], blocks[name]) for name in pairs}


def attach_bench(tmp: Path, count: int) -> tuple[float, float]:
    """Seconds to attach+detach ``count`` instances: the bridge driver vs ip -batch."""
    from nova_bridge.driver import BridgeDriver, BridgeOptions

    from nova_core.drivers.base import DriverContext
    from nova_core.drivers.models import ContainerSpec, NetworkSpec, ResourceKind, ResourceRef

    driver = BridgeDriver("bridge", DriverContext(nova_home=tmp / "attach-home"))
    spec = NetworkSpec(ref=ResourceRef(project="bench", kind=ResourceKind.NETWORK, name="many"),
                       driver="bridge", base_dir=tmp, options=BridgeOptions(),
                       subnet="10.253.50.0/24")
    driver.create(spec)
    instances = [ContainerSpec(ref=ResourceRef(project="bench", kind=ResourceKind.CONTAINER,
                                               name=f"i{n}"), driver="capsule", base_dir=tmp,
                               networks=["many"]) for n in range(count)]
    try:
        start = time.perf_counter()
        attachments = [driver.attach(spec, instance) for instance in instances]
        for attachment in attachments:
            driver.detach(spec, attachment)
        nova_seconds = time.perf_counter() - start
    finally:
        driver.delete(spec)

    sh("ip", "link", "add", "hbmany", "type", "bridge")
    sh("ip", "addr", "add", "10.253.51.1/24", "dev", "hbmany")
    sh("ip", "link", "set", "hbmany", "up")
    host_up = tmp / "up.batch"
    host_down = tmp / "down.batch"
    host_up.write_text("".join(
        f"netns add hbm{n}\nlink add hbv{n} type veth peer name eth0 netns hbm{n}\n"
        f"link set hbv{n} master hbmany up\n" for n in range(count)))
    host_down.write_text("".join(f"link del hbv{n}\nnetns del hbm{n}\n" for n in range(count)))
    inside = "".join(f"addr add 10.253.51.{n + 2}/24 dev eth0\nlink set eth0 up\n"
                     "link set lo up\nroute add default via 10.253.51.1\n" for n in range(1))
    try:
        start = time.perf_counter()
        sh("ip", "-batch", str(host_up))
        for n in range(count):
            sh("ip", "-n", f"hbm{n}", "-batch", "-",
               stdin=inside.replace("10.253.51.2/", f"10.253.51.{n + 2}/"))
        sh("ip", "-batch", str(host_down))
        hand_seconds = time.perf_counter() - start
    finally:
        for n in range(count):
            sh("ip", "netns", "del", f"hbm{n}", check=False)
        sh("ip", "link", "del", "hbmany", check=False)
    return nova_seconds, hand_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="iperf3 run length")
    parser.add_argument("--rounds", type=int, default=3, help="iperf3 runs per setup (median)")
    parser.add_argument("--attach", type=int, default=50, help="instances for the attach test")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 1
    if not shutil.which("iperf3"):
        print("needs iperf3: apt-get install iperf3", file=sys.stderr)
        return 1
    results: dict[str, tuple[list[float], list[float], list[float]]] = {}
    cleanups: list[Callable[[], None]] = []
    with scratch_folder("nova-netbench-") as tmp:
        try:
            # Every setup lives in namespaces of its own ("hosts"), none in the root
            # namespace, so no firewall of another setup (or of the machine) is on its path.
            hand_hosts, remove = two_hosts("h", "198.18.60")
            cleanups.append(remove)
            nova_hosts, remove = two_hosts("n", "198.18.61")
            cleanups.append(remove)
            pairs: dict[str, tuple[list[str], str]] = {}
            paths, remove = hand_bridge("1", "10.253.1", prefix_ns=hand_hosts[0])
            cleanups.append(remove)
            pairs["bridge, by hand"] = (paths, "10.253.1.3")
            nova = Nova(tmp / "home", host_ns=nova_hosts[0])
            folder = tmp / "bridge"
            capsules_file(folder, "nbbr", '[network.net]\nsubnet = "10.253.2.0/24"', ["a", "b"])
            nova("up", cwd=folder)
            cleanups.append(lambda: nova("down", cwd=folder))
            found = nova.netns_of("net", folder)
            pairs["bridge, Nova"] = ([found["a"][0], found["b"][0]], found["b"][1])
            paths, remove = hand_vxlan(hand_hosts, "198.18.60")
            cleanups.append(remove)
            pairs["vxlan, by hand"] = (paths, "10.253.40.11")
            sites = []
            for index, host in enumerate(nova_hosts):
                site = Nova(tmp / f"site{index}", host_ns=host)
                site_folder = tmp / f"vx{index}"
                capsules_file(site_folder, f"nbvx{index}", (
                    '[network.vx]\ntype = "overlay"\ndriver = "vxlan"\nsubnet = "10.253.41.0/24"\n'
                    f'gateway = "10.253.41.{index + 1}"\nip_range = "10.253.41.{16 * (index + 1)}/28"\n'
                    f'vni = 98\npeers = ["198.18.61.{2 - index}"]\nlocal = "198.18.61.{index + 1}"'),
                    [f"c{index}"])
                site("up", cwd=site_folder)
                cleanups.append(lambda site=site, site_folder=site_folder: site("down", cwd=site_folder))
                sites.append((site, site_folder))
            a = sites[0][0].netns_of("vx", sites[0][1])["c0"]
            b = sites[1][0].netns_of("vx", sites[1][1])["c1"]
            pairs["vxlan, Nova"] = ([a[0], b[0]], b[1])
            results = measure_interleaved(pairs, args.seconds, args.rounds)
        finally:
            for cleanup in reversed(cleanups):
                try:
                    cleanup()
                except subprocess.CalledProcessError as error:
                    print(f"cleanup: {error}", file=sys.stderr)
        nova_attach, hand_attach = attach_bench(tmp, args.attach)

    median = statistics.median
    print(f"{'topology':<18} {'TCP Gbit/s':>11} {'ping ms':>9}   (medians of {args.rounds} rounds)")
    for name, (gbits, ms, _) in results.items():
        print(f"{name:<18} {median(gbits):11.2f} {median(ms):9.3f}")
    for kind in ("bridge", "vxlan"):
        hand, ours = results[f"{kind}, by hand"], results[f"{kind}, Nova"]
        throughput, latency = median(ours[0]) / median(hand[0]), median(ours[1]) / median(hand[1])
        # the ratio of two setups measured within seconds of each other, then the median:
        # less exposed to the machine's speed changing between rounds
        paired = median(o / h for o, h in zip(ours[0], hand[0], strict=True))
        paired_ms = median(o / h for o, h in zip(ours[2], hand[2], strict=True))
        print(f"{kind}: throughput {throughput:.2f} of hand-built, per round {paired:.2f} "
              f"(target >= 0.97: {'met' if paired >= 0.97 else 'MISSED'}); latency "
              f"{latency:.2f} of it, per block {paired_ms:.2f} "
              f"(target <= 1.05: {'met' if paired_ms <= 1.05 else 'MISSED'})")
    ratio = nova_attach / hand_attach
    print(f"attach+detach {args.attach}: Nova {nova_attach:.2f}s, ip -batch {hand_attach:.2f}s, "
          f"ratio {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
