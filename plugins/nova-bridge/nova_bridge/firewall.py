"""NAT, isolation and published ports in nftables: Nova's own table only, replaced atomically.

Each NOVA_HOME owns one table, ``inet nova_<hash>``, rebuilt from the ledger on every
change and loaded as a single ``nft -j -f -`` transaction ("add table; delete table;
add table; chains; rules"), so the host never sees half a ruleset and rules Nova did
not make are never read, flushed or edited. With no networks left, the table goes.

- raw prerouting and output: no connection tracking for instance-to-instance traffic
  and the VXLAN underlay (nothing there is NATed).
- forward: an ``isolated`` network's traffic stays on its bridge; any other network
  cannot reach other Nova bridges (``nvb*``, whichever NOVA_HOME made them).
- postrouting: masquerade what leaves a NAT network; masquerade what reaches it from
  127.0.0.0/8 (ports published on localhost) and hairpinned published traffic.
- prerouting and output: DNAT published ports of running instances, for traffic from
  other hosts and from the host itself.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from nova_bridge.links import BRIDGE_PREFIX
from nova_bridge.records import Lease, NetworkRecord
from nova_core.errors import NovaError

Rule = dict[str, Any]


def table_name(nova_home: Path) -> str:
    """The nftables table of one NOVA_HOME."""
    return "nova_" + hashlib.sha256(str(nova_home.resolve()).encode()).hexdigest()[:8]


def _match(left: dict[str, Any], right: Any, op: str = "==") -> Rule:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _prefix(cidr: str) -> dict[str, Any]:
    address, _, length = cidr.partition("/")
    return {"prefix": {"addr": address, "len": int(length)}}


def _family(cidr_or_ip: str) -> str:
    return "ip6" if ":" in cidr_or_ip else "ip"


def forward_rules(record: NetworkRecord) -> list[tuple[list[Rule], str]]:
    """(expressions, comment) of the forward chain for one network."""
    bridge = record.bridge
    if record.isolated:
        return [([_match(_meta("iifname"), bridge), _match(_meta("oifname"), bridge, "!="),
                  {"drop": None}], f"{record.name}: isolated, nothing leaves"),
                ([_match(_meta("oifname"), bridge), _match(_meta("iifname"), bridge, "!="),
                  {"drop": None}], f"{record.name}: isolated, nothing enters")]
    return [([_match(_meta("iifname"), bridge), _match(_meta("oifname"), bridge, "!="),
              _match(_meta("oifname"), BRIDGE_PREFIX + "*"), {"drop": None}],
             f"{record.name}: no traffic to other Nova networks")]


def nat_rules(record: NetworkRecord) -> list[tuple[list[Rule], str]]:
    """(expressions, comment) of the postrouting chain for one network."""
    if record.isolated:
        return []
    rules = []
    bridge = record.bridge
    for subnet in (record.subnet, record.subnet6):
        if not subnet:
            continue
        family = _family(subnet)
        if record.nat:
            rules.append(([_match(_payload(family, "saddr"), _prefix(subnet)),
                           _match(_meta("oifname"), bridge, "!="), {"masquerade": None}],
                          f"{record.name}: outbound NAT"))
        rules.append(([_match(_meta("oifname"), bridge), _match(_payload(family, "saddr"),
                                                                 _prefix(subnet)),
                       _match({"ct": {"key": "status"}}, "dnat", "in"), {"masquerade": None}],
                      f"{record.name}: hairpin to published ports"))
    if record.subnet and _family(record.subnet) == "ip":
        rules.append(([_match(_meta("oifname"), bridge),
                       _match(_payload("ip", "saddr"), _prefix("127.0.0.0/8")),
                       {"masquerade": None}], f"{record.name}: ports published on localhost"))
    return rules


def port_rules(record: NetworkRecord, lease: Lease) -> list[tuple[list[Rule], str]]:
    """(expressions, comment) that DNAT ``lease``'s published ports (prerouting and output)."""
    if record.isolated or not lease.published:
        return []
    rules = []
    for port in lease.ports:
        host_ip = port.get("host_ip")
        protocol = str(port.get("protocol", "tcp"))
        for family, address in (("ip", lease.ip), ("ip6", lease.ip6)):
            if not address or (host_ip and _family(str(host_ip)) != family):
                continue
            nfproto = "ipv4" if family == "ip" else "ipv6"
            where = ([_match(_payload(family, "daddr"), host_ip)] if host_ip else
                     [_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")])
            rules.append(([_match(_meta("nfproto"), nfproto), *where,
                           _match(_payload(protocol, "dport"), int(port["host_port"])),
                           {"dnat": {"family": family, "addr": address,
                                     "port": int(port["target_port"])}}],
                          f"{record.name}: {lease.instance} "
                          f"{host_ip + ':' if host_ip else ''}{port['host_port']}"
                          f" -> {port['target_port']}/{protocol}"))
    return rules


def untracked_rules(record: NetworkRecord) -> dict[str, list[tuple[list[Rule], str]]]:
    """Traffic that needs no NAT skips connection tracking (raw prerouting and output).

    Conntrack costs about a tenth of the throughput between instances; only what is
    NATed needs it. Untracked: instance to instance within a subnet (not to a gateway
    address, where masqueraded hairpin replies arrive) and the VXLAN underlay to and
    from the peers.
    """
    pre: list[tuple[list[Rule], str]] = []
    out: list[tuple[list[Rule], str]] = []
    for subnet, gateway in ((record.subnet, record.gateway), (record.subnet6, record.gateway6)):
        if not subnet:
            continue
        family = _family(subnet)
        where = [_match(_payload(family, "saddr"), _prefix(subnet)),
                 _match(_payload(family, "daddr"), _prefix(subnet))]
        if gateway:
            where.append(_match(_payload(family, "daddr"), gateway, "!="))
        pre.append(([*where, {"notrack": None}], f"{record.name}: instance to instance"))
    vxlan = record.vxlan or {}
    for peer in vxlan.get("peers", []):  # type: ignore[union-attr]
        family = _family(str(peer))
        port = int(vxlan["port"])  # type: ignore[arg-type]
        pre.append(([_match(_payload(family, "saddr"), peer), _match(_payload("udp", "dport"), port),
                     {"notrack": None}], f"{record.name}: VXLAN from {peer}"))
        out.append(([_match(_payload(family, "daddr"), peer), _match(_payload("udp", "dport"), port),
                     {"notrack": None}], f"{record.name}: VXLAN to {peer}"))
    return {"raw_prerouting": pre, "raw_output": out}


CHAINS = {
    "raw_prerouting": ("filter", "prerouting", -300),
    "raw_output": ("filter", "output", -300),
    "forward": ("filter", "forward", 0),
    "prerouting": ("nat", "prerouting", -100),
    "output": ("nat", "output", -100),
    "postrouting": ("nat", "postrouting", 100),
}


def chain_rules(records: list[NetworkRecord]) -> dict[str, list[tuple[list[Rule], str]]]:
    """Every chain's rules for ``records``."""
    chains: dict[str, list[tuple[list[Rule], str]]] = {name: [] for name in CHAINS}
    for record in records:
        for chain, rules in untracked_rules(record).items():
            chains[chain] += rules
        chains["forward"] += forward_rules(record)
        chains["postrouting"] += nat_rules(record)
        for lease in record.leases.values():
            published = port_rules(record, lease)
            chains["prerouting"] += published
            chains["output"] += published
    return chains


def transaction(table: str, records: list[NetworkRecord]) -> dict[str, Any]:
    """The nft JSON document that replaces Nova's table with the rules for ``records``."""
    ref = {"family": "inet", "name": table}
    commands: list[dict[str, Any]] = [{"add": {"table": ref}}, {"delete": {"table": ref}}]
    if records:
        commands.append({"add": {"table": ref}})
        chains = chain_rules(records)
        for name, (kind, hook, priority) in CHAINS.items():
            if not chains[name]:
                continue  # an empty base chain would still cost every packet a hook call
            commands.append({"add": {"chain": {"family": "inet", "table": table, "name": name,
                                               "type": kind, "hook": hook, "prio": priority,
                                               "policy": "accept"}}})
        for chain, rules in chains.items():
            for expressions, comment in rules:
                commands.append({"add": {"rule": {"family": "inet", "table": table,
                                                  "chain": chain, "expr": expressions,
                                                  "comment": comment[:128]}}})
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


def apply(table: str, records: list[NetworkRecord]) -> None:
    """Load the table for ``records`` in one transaction (removes it when there are none)."""
    document = json.dumps(transaction(table, records))
    try:
        done = subprocess.run(["nft", "-j", "-f", "-"], input=document, capture_output=True,
                              text=True, timeout=30)
    except FileNotFoundError:
        raise NovaError("nft is not installed; Nova's networks need nftables",
                        hint="apt-get install nftables") from None
    if done.returncode != 0:
        raise NovaError(f"nftables refused Nova's rules: {done.stderr.strip()[:400]}",
                        hint="nova doctor checks nftables; run with --debug for details")


def table_exists(table: str) -> bool:
    """True if the host has Nova's table (for status and tests)."""
    done = subprocess.run(["nft", "-j", "list", "table", "inet", table], capture_output=True,
                          text=True)
    return done.returncode == 0


class Forwarding:
    """The IP forwarding sysctls: turned on for Nova's networks, recorded, and put back.

    Forwarding is per network namespace. Nova enables ``net.ipv4.ip_forward`` (and
    ``net.ipv6.conf.all.forwarding`` when a network has an IPv6 subnet) only while it
    has a network that is not isolated, remembers the value it found in
    ``sysctl.json``, and restores it when its last such network is removed.
    """

    KEYS = {4: "net/ipv4/ip_forward", 6: "net/ipv6/conf/all/forwarding"}

    def __init__(self, root: Path, proc: Path = Path("/proc/sys")) -> None:
        self.path = root / "sysctl.json"
        self.proc = proc

    def _recorded(self) -> dict[str, str]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def sync(self, records: list[NetworkRecord]) -> dict[str, str]:
        """Turn forwarding on for what ``records`` need, back off for what none needs."""
        recorded = self._recorded()
        needed = set()
        for record in records:
            if not record.isolated:
                needed.update(n.version for n in record.networks())
        for version, key in self.KEYS.items():
            knob = self.proc / key
            if not knob.exists():
                continue
            if version in needed:
                current = knob.read_text().strip()
                if current != "1":
                    recorded.setdefault(key, current)
                    knob.write_text("1\n")
            elif key in recorded:
                knob.write_text(recorded.pop(key) + "\n")
        if recorded:
            self.path.write_text(json.dumps(recorded, indent=1))
        else:
            self.path.unlink(missing_ok=True)
        return recorded
