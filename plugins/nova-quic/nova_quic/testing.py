"""Simulated hosts for overlay tests and benchmarks.

:func:`underlay` makes N network namespaces standing in for machines, each with an
``eth0`` joined by a veth pair to a bridge in one more namespace (the switch), so
the hosts reach each other on ``PREFIX.1``, ``PREFIX.2``, ... and nothing else.
:class:`Site` is one host's Nova: its own NOVA_HOME (with local/busybox imported),
a project folder, and the real ``nova`` CLI run inside the host's namespace.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted
from aioquic.quic.packet import pull_quic_header
from aioquic.tls import CipherSuite

from nova_core.hostinfo import netns
from nova_core.hostinfo.processes import command_lines
from nova_quic.endpoint import ALPN, CID_LENGTH, _Connection
from nova_quic.pki import Identity, OverlayStore, write_bundle

ADDR = ("192.0.2.1", 4433)  # where connected()'s peers seem to be (no packet goes there)
LOOP = "trap 'exit 0' TERM; while true; do sleep 1; done"


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


@dataclass
class Host:
    """One simulated machine: a namespace and its underlay address."""

    name: str
    address: str

    @property
    def path(self) -> Path:
        """The namespace's path."""
        return netns.NETNS_DIR / self.name

    def run(self, *argv: str, check: bool = False, timeout: float = 30,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """A command in the host's network namespace."""
        return subprocess.run(["nsenter", f"--net={self.path}", *argv], capture_output=True,
                              text=True, check=check, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)


@contextmanager
def underlay(tag: str, count: int, prefix: str, mtu: int = 1500) -> Iterator[list[Host]]:
    """``count`` hosts ``{tag}h0..`` on a switch ``{tag}sw`` (addresses ``prefix.1..``)."""
    switch = netns.NETNS_DIR / f"{tag}sw"
    hosts = [Host(f"{tag}h{i}", f"{prefix}.{i + 1}") for i in range(count)]
    made: list[Path] = []
    try:
        made.append(netns.create(switch))
        _ip("-n", switch.name, "link", "add", "sw", "mtu", str(mtu), "type", "bridge")
        _ip("-n", switch.name, "link", "set", "sw", "up")
        for index, host in enumerate(hosts):
            made.append(netns.create(host.path))
            _ip("link", "add", "eth0", "mtu", str(mtu), "netns", host.name, "type", "veth",
                "peer", "name", f"p{index}", "mtu", str(mtu), "netns", switch.name)
            _ip("-n", switch.name, "link", "set", f"p{index}", "master", "sw", "up")
            _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.name, "link", "set", "eth0", "up")
            _ip("-n", host.name, "link", "set", "lo", "up")
        yield hosts
    finally:
        for path in reversed(made):
            netns.delete(path)


class Site:
    """One host's Nova: NOVA_HOME, a project folder, the CLI inside the host."""

    def __init__(self, host: Host, root: Path, busybox: Path,
                 env: dict[str, str] | None = None) -> None:
        self.host = host
        self.env = env or {}  # more environment for its nova commands (and so its endpoint)
        self.home = root / f"{host.name}-home"
        self.folder = root / f"{host.name}-site"
        self.home.mkdir(parents=True)
        self.folder.mkdir(parents=True)
        (self.home / "config.toml").write_text('[images]\ndefault_registry = "127.0.0.1:9"\n')
        self.nova("image", "import", str(busybox), "local/busybox", check=True)

    def nova(self, *args: str, check: bool = False,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``nova ARGS`` in the project folder, inside the host's namespace."""
        done = subprocess.run(["nsenter", f"--net={self.host.path}", sys.executable, "-m",
                               "nova_core.cli.main", *args], cwd=self.folder,
                              env=dict(os.environ, NOVA_HOME=str(self.home), **self.env),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check:
            assert done.returncode == 0, f"nova {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def novafile(self, project: str, network: str, capsules: list[str]) -> None:
        """A NovaFile: ``network`` (the whole [network.NAME] table) and sleeping capsules."""
        name = network.split("]", 1)[0].split(".", 1)[1]
        parts = [f'project = "{project}"', network]
        for capsule in capsules:
            parts.append(f'[container.{capsule}]\ncapsule = "local/busybox:latest"\n'
                         f'network = "{name}"\ncommand = ["sh", "-c", "{LOOP}"]\n'
                         "stop_timeout = 1")
        (self.folder / "NovaFile").write_text("\n".join(parts) + "\n")

    def inspect(self, network: str) -> dict[str, object]:
        """``nova net inspect NETWORK --json``."""
        return json.loads(self.nova("net", "inspect", network, "--json", check=True).stdout)

    def connected(self, network: str) -> set[str]:
        """Names of the peers the endpoint is connected to."""
        host = self.inspect(network)["host"]
        return {p["name"] for p in host.get("peers", [])  # type: ignore[union-attr]
                if p["state"] == "connected"}

    def wait_connected(self, network: str, names: set[str], timeout: float = 20) -> None:
        """Wait until exactly ``names`` are connected."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.connected(network)
            if found == names:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.host.name}: connected {sorted(found)}, "
                                     f"wanted {sorted(names)}: {self.inspect(network)['host']}")
            time.sleep(0.2)

    def capsule_netns(self, network: str, capsule: str) -> tuple[str, str]:
        """(namespace path, address) of ``capsule`` on ``network``."""
        for item in self.inspect(network)["attached"]:  # type: ignore[union-attr]
            if item["instance"] == f"container.{capsule}":
                return item["netns"], item["ip"]
        raise AssertionError(f"{capsule} is not attached to {network}")

    def exec(self, capsule: str, script: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``sh -c SCRIPT`` inside a capsule."""
        return self.nova("exec", "container", capsule, "--", "sh", "-c", script,
                         timeout=timeout)


def endpoint_processes(home: Path) -> list[int]:
    """PIDs of overlay endpoints (and their loops) of NOVA_HOME ``home`` (one /proc scan)."""
    return [pid for pid, argv in command_lines()
            if str(home) in (line := "\0".join(argv)) and "nova_quic.endpoint" in line]


def _configuration(identity: Identity, is_client: bool,
                   suite: CipherSuite | None = None) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=is_client, alpn_protocols=[ALPN],
                                      connection_id_length=CID_LENGTH, idle_timeout=10.0,
                                      max_datagram_frame_size=65536, verify_mode=ssl.CERT_NONE)
    configuration.load_cert_chain(identity.cert_path, identity.key_path)
    if suite is not None:
        configuration.cipher_suites = [suite]
    return configuration


def connected(tmp_path: Path,
              suite: CipherSuite | None = None) -> tuple[_Connection, _Connection]:
    """A client and a server connection after their handshake, datagrams passed by hand
    in memory: certificates from a CA made in ``tmp_path``, mutual TLS as between hosts."""
    alpha = OverlayStore(tmp_path / "a").init_ca("mesh", "alpha")
    bundle = tmp_path / "beta.bundle"
    write_bundle(bundle, OverlayStore(tmp_path / "a").issue("mesh", "beta"))
    beta = OverlayStore(tmp_path / "b").join(bundle)
    client = _Connection(configuration=_configuration(beta, is_client=True, suite=suite))
    now = 1000.0
    client.connect(ADDR, now=now)
    first = client.datagrams_to_send(now=now)
    cid = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=CID_LENGTH).destination_cid
    server = _Connection(configuration=_configuration(alpha, is_client=False, suite=suite),
                         original_destination_connection_id=cid)
    done: set[int] = set()
    outgoing = {id(client): first}
    for _ in range(10):
        for sender, receiver in ((client, server), (server, client)):
            for data, _addr in outgoing.pop(id(sender), None) or sender.datagrams_to_send(now=now):
                receiver.receive_datagram(data, ADDR, now=now)
            while (event := receiver.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    done.add(id(receiver))
        if len(done) == 2:
            return client, server
    raise AssertionError("no handshake")
