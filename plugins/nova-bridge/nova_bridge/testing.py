"""Test helpers for network drivers: a snapshot of the host's network objects, and
stand-in "other hosts" (network namespaces joined to the host by a veth pair).

Everything a test makes here lives in namespaces the test created, so no packet
leaves the machine.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nova_core.hostinfo import netns
from nova_core.hostinfo.processes import command_lines


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def host_snapshot() -> dict[str, object]:
    """Links, named namespaces, the nft ruleset (without counters), dnsmasq processes and
    the supervising loops of nova_bridge.supervise (dnsmasq's, nova-quic's endpoints)."""
    links = sorted(Path("/sys/class/net").iterdir())
    namespaces = sorted(p.name for p in netns.NETNS_DIR.iterdir()) if netns.NETNS_DIR.is_dir() else []
    ruleset = _run("nft", "-s", "list", "ruleset").stdout
    dnsmasq, supervised = [], []
    for pid, argv in command_lines():
        if os.path.basename(argv[0]) == "dnsmasq":
            dnsmasq.append(pid)
        elif argv[0] == "sh" and len(argv) > 3 and argv[3].startswith("nova-"):
            supervised.append(pid)
    return {"links": [p.name for p in links], "netns": namespaces, "nft": ruleset,
            "dnsmasq": sorted(dnsmasq), "supervised": sorted(supervised)}


@contextmanager
def host_unchanged(settle: float = 3.0) -> Iterator[None]:
    """Fail unless the host's network objects are as before once the block is done
    (veth and namespace teardown finish asynchronously: up to ``settle`` seconds)."""
    before = host_snapshot()
    yield
    deadline = time.monotonic() + settle
    while host_snapshot() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_snapshot() == before


def run_in_netns(path: Path, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """Run a command in the network namespace at ``path`` (stdin empty, output captured)."""
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def snmp_counters(text: str, group: str) -> dict[str, int]:
    """The ``group`` counters ("Ip", "Udp", ...) of a namespace's /proc/net/snmp ``text``:
    a line of names, then a line of values, each after ``GROUP:``."""
    names, values = [line.split()[1:] for line in text.splitlines()
                     if line.startswith(f"{group}:")][:2]
    return {name: int(value) for name, value in zip(names, values, strict=True)}


@dataclass
class OutsideHost:
    """A namespace standing in for another machine, on a /30 with the host.

    ``address`` is its own address, ``host_address`` the host's end of the link.
    """

    name: str
    host_link: str
    address: str
    host_address: str

    @property
    def path(self) -> Path:
        """The namespace's path."""
        return netns.NETNS_DIR / self.name

    def run(self, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """Run a command inside (network namespace only)."""
        return run_in_netns(self.path, *argv, timeout=timeout)

    def remove(self) -> None:
        """Delete the namespace and the host's end of the link."""
        _run("ip", "link", "del", self.host_link, check=False)
        netns.delete(self.path)


def make_outside_host(name: str, prefix: str, route_to_host: bool = True) -> OutsideHost:
    """A namespace ``name`` linked to the host: host ``prefix.1/30``, inside ``prefix.2/30``.

    With ``route_to_host`` its default route points at the host; either way it has
    no route to Nova's subnets, so it can answer a capsule only through NAT.
    """
    host_link = f"{name[:10]}-h"
    outside = OutsideHost(name=name, host_link=host_link, address=f"{prefix}.2",
                          host_address=f"{prefix}.1")
    try:
        netns.create(outside.path)
        _run("ip", "link", "add", host_link, "type", "veth", "peer", "name", "eth0", "netns", name)
        _run("ip", "addr", "add", f"{prefix}.1/30", "dev", host_link)
        _run("ip", "link", "set", host_link, "up")
        _run("ip", "-n", name, "addr", "add", f"{prefix}.2/30", "dev", "eth0")
        _run("ip", "-n", name, "link", "set", "eth0", "up")
        _run("ip", "-n", name, "link", "set", "lo", "up")
        if route_to_host:
            _run("ip", "-n", name, "route", "add", "default", "via", f"{prefix}.1")
    except BaseException:
        outside.remove()
        raise
    return outside
