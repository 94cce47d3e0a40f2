"""Host ports: which are taken by listening programs, and when two published ports clash."""

from __future__ import annotations

import ipaddress
from collections.abc import Container
from pathlib import Path

from nova_core.drivers.models import PortMapping

_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"


def overlaps(one: PortMapping, other: PortMapping) -> bool:
    """True if both would take the same host port (a missing host address means all)."""
    if one.protocol != other.protocol or one.host_port != other.host_port:
        return False
    return one.host_ip in (None, other.host_ip) or other.host_ip is None


def _address(hex_text: str) -> str:
    raw = bytes.fromhex(hex_text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)


def sockets(protocol: str, proc: Path = Path("/proc/net")) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP or bound UDP socket in this network namespace."""
    state = _TCP_LISTEN if protocol == "tcp" else _UDP_UNCONNECTED
    found = []
    for name in (protocol, protocol + "6"):
        try:
            lines = (proc / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == state:
                address, _, port = fields[1].partition(":")
                found.append((_address(address), int(port, 16)))
    return found


def listening(port: PortMapping, ignored: Container[tuple[str, str, int]] = ()) -> bool:
    """True if a program on the host already holds ``port``'s host side; sockets in
    ``ignored`` ((protocol, address, port), as NetworkDriver.own_sockets) do not count."""
    wildcard = {"0.0.0.0", "::"}
    for address, number in sockets(port.protocol):
        if number != port.host_port or (port.protocol, address, number) in ignored:
            continue
        if port.host_ip is None or address in wildcard or address == port.host_ip:
            return True
    return False
