"""nova-bridge's hooks: host checks for ``nova doctor``."""

from __future__ import annotations

from pathlib import Path

from nova_core.hookspecs import hookimpl
from nova_core.hooktypes import CheckResult, program_check

CATEGORY = "nova-bridge"


@hookimpl
def nova_doctor_checks() -> list[CheckResult]:
    """nftables, dnsmasq, and the forwarding sysctl."""
    results = [
        program_check(CATEGORY, "nft", "NAT, firewall and published ports",
                      "apt-get install nftables"),
        program_check(CATEGORY, "dnsmasq", "DHCP and DNS per network",
                      "apt-get install dnsmasq-base"),
    ]
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    value = forward.read_text().strip() if forward.exists() else "?"
    results.append(CheckResult(
        CATEGORY, "ip_forward", "info",
        f"{value} (nova-bridge enables it only for NAT networks, and records that it did)"))
    return results
