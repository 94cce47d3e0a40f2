"""NAT, isolation and published ports in nftables: Nova's own tables only, replaced atomically.

Each NOVA_HOME owns two tables of one name, ``inet nova_<hash>`` and ``bridge
nova_<hash>``, rebuilt from the ledger on every change and loaded as a single
transaction ("add table; delete table; add table; chains; rules"), so the host never
sees half a ruleset and rules Nova did not make are never read, flushed or edited.
With no networks left, the tables go.

- bridge prerouting (every frame entering a bridge port, before br_netfilter hands
  it to the ``inet`` hooks): each instance port's anti-spoofing chain; no connection
  tracking for instance-to-instance traffic (never NATed), decided here so the
  frames pass the ``inet`` chains as untracked; no loopback addresses from a bridge.
- inet raw prerouting and output: no connection tracking for the VXLAN underlay.
- input: an instance reaches only its own network's gateway; an isolated network
  only DNS and DHCP.
- forward: an ``isolated`` network's traffic stays on its bridge; others let in only
  replies and published ports, and cannot reach other Nova bridges (``nvb*``,
  whichever NOVA_HOME made them).
- postrouting: masquerade what leaves a NAT network; masquerade what reaches it from
  127.0.0.0/8 (ports published on localhost) and hairpinned published traffic.
- prerouting and output: DNAT published ports of running instances, for traffic from
  other hosts and from the host itself.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Container
from pathlib import Path
from typing import Any

from nova_bridge.links import BRIDGE_PREFIX
from nova_bridge.records import Lease, NetworkRecord
from nova_core.errors import NovaError
from nova_core.names import home_digest

Rule = dict[str, Any]


def table_name(nova_home: Path) -> str:
    """The nftables table of one NOVA_HOME."""
    return "nova_" + home_digest(nova_home, 8)


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


def _label(record: NetworkRecord) -> str:
    """The prefix of every rule comment of ``record`` (how status finds its rules)."""
    return f"{record.project}/{record.name}"


Rules = list[tuple[list[Rule], str]]


def forward_rules(record: NetworkRecord) -> tuple[Rules, Rules, Rules]:
    """(isolation, accepts, drops) of the forward chain for one network.

    Isolated networks: nothing leaves or enters the bridge. Others: replies and
    published ports (DNAT) enter, nothing else does (a LAN host routing to the
    subnet gets nowhere); nothing leaves towards another Nova bridge.
    """
    bridge, label = record.bridge, _label(record)
    inside, outside = _match(_meta("iifname"), bridge), _match(_meta("oifname"), bridge, "!=")
    entering = [_match(_meta("oifname"), bridge), _match(_meta("iifname"), bridge, "!=")]
    if record.isolated:
        return ([([inside, outside, {"drop": None}], f"{label}: isolated, nothing leaves"),
                 ([*entering, {"drop": None}], f"{label}: isolated, nothing enters")], [], [])
    accepts = [([*entering, _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                 {"accept": None}], f"{label}: replies enter"),
               ([*entering, _match({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None}],
                f"{label}: published ports enter")]
    drops = [([inside, outside, _match(_meta("oifname"), BRIDGE_PREFIX + "*"), {"drop": None}],
              f"{label}: no traffic to other Nova networks"),
             ([*entering, {"drop": None}], f"{label}: nothing else enters")]
    return [], accepts, drops


def input_rules(record: NetworkRecord) -> Rules:
    """What instances may send to the host itself.

    An instance reaches its own gateway (DNS, DHCP, the host), never another
    network's gateway (and so never another network's dnsmasq); an isolated
    network reaches only DNS, DHCP and IPv6 neighbour discovery on its bridge.
    """
    bridge, label = record.bridge, _label(record)
    rules: Rules = []
    for gateway in (record.gateway, record.gateway6):
        if gateway:
            family = _family(gateway)
            rules.append(([_match(_meta("iifname"), BRIDGE_PREFIX + "*"),
                           _match(_meta("iifname"), bridge, "!="),
                           _match(_payload(family, "daddr"), gateway), {"drop": None}],
                          f"{label}: its gateway is only for its own bridge"))
    if record.isolated:
        inside = _match(_meta("iifname"), bridge)
        rules += [([inside, _match(_payload("udp", "dport"), {"set": [53, 67, 547]}),
                    {"accept": None}],
                   f"{label}: isolated, DNS and DHCP only"),
                  ([inside, _match(_payload("tcp", "dport"), 53), {"accept": None}],
                   f"{label}: isolated, DNS over TCP"),
                  ([inside, _match(_meta("l4proto"), "ipv6-icmp"), {"accept": None}],
                   f"{label}: isolated, IPv6 neighbour discovery"),
                  ([inside, {"drop": None}], f"{label}: isolated, nothing else reaches the host")]
    return rules


def nat_rules(record: NetworkRecord) -> Rules:
    """(expressions, comment) of the postrouting chain for one network."""
    if record.isolated:
        return []
    rules = []
    bridge, label = record.bridge, _label(record)
    for subnet in (record.subnet, record.subnet6):
        if not subnet:
            continue
        family = _family(subnet)
        if record.nat:
            rules.append(([_match(_payload(family, "saddr"), _prefix(subnet)),
                           _match(_meta("oifname"), bridge, "!="), {"masquerade": None}],
                          f"{label}: outbound NAT"))
        rules.append(([_match(_meta("oifname"), bridge), _match(_payload(family, "saddr"),
                                                                 _prefix(subnet)),
                       _match({"ct": {"key": "status"}}, "dnat", "in"), {"masquerade": None}],
                      f"{label}: hairpin to published ports"))
    if record.subnet and _family(record.subnet) == "ip":
        rules.append(([_match(_meta("oifname"), bridge),
                       _match(_payload("ip", "saddr"), _prefix("127.0.0.0/8")),
                       {"masquerade": None}], f"{label}: ports published on localhost"))
    return rules


WILDCARD_ADDRESSES = ("0.0.0.0", "::")


def port_rules(record: NetworkRecord, lease: Lease) -> Rules:
    """(expressions, comment) that DNAT ``lease``'s published ports (prerouting and output)."""
    if record.isolated or not lease.published:
        return []
    rules = []
    for port in lease.ports:
        host_ip = port.get("host_ip")
        host_ip = None if host_ip in WILDCARD_ADDRESSES else host_ip
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
                          f"{_label(record)}: {lease.instance} "
                          f"{str(host_ip) + ':' if host_ip else ''}{port['host_port']}"
                          f" -> {port['target_port']}/{protocol}"))
    return rules


def own_dns_rules(record: NetworkRecord) -> Rules:
    """(expressions, comment) that keep DNS to ``record``'s gateways with its dnsmasq:
    placed before every DNAT rule, since a gateway is a local address of the host too,
    which a port published on all addresses (``53:53/udp``) would otherwise take over."""
    if not record.dns:
        return []
    rules = []
    for family, gateway in (("ip", record.gateway), ("ip6", record.gateway6)):
        if gateway:
            rules.append(([_match(_payload(family, "daddr"), gateway),
                           _match(_meta("l4proto"), {"set": ["tcp", "udp"]}),
                           _match(_payload("th", "dport"), 53), {"accept": None}],
                          f"{_label(record)}: DNS at its gateway is its own"))
    return rules


def _neighbours(record: NetworkRecord) -> list[tuple[str, str, str | None]]:
    """(family, subnet, gateway) of each of ``record``'s subnets."""
    return [(_family(subnet), subnet, gateway)
            for subnet, gateway in ((record.subnet, record.gateway),
                                    (record.subnet6, record.gateway6)) if subnet]


def _to_neighbours(family: str, subnet: str, gateway: str | None) -> list[Rule]:
    """Matches a packet for another address of ``subnet`` (not the gateway, where
    masqueraded hairpin replies arrive and so need connection tracking)."""
    where = [_match(_payload(family, "daddr"), _prefix(subnet))]
    if gateway:
        where.append(_match(_payload(family, "daddr"), gateway, "!="))
    return where


UNTRACKED = [{"notrack": None}, {"accept": None}]

#: Every port Nova plugs into a bridge is named ``nv`` + a letter + a hash (``nvv`` veth,
#: ``nvt`` tap, ``nvx`` VXLAN, ``nvq`` quic), whichever NOVA_HOME made it.
NOVA_PORTS = "nv*"


def _loopback_drops(label: str, *where: Rule) -> Rules:
    return [([*where, _match(_meta("protocol"), "ip"),
              _match(_payload("ip", field), _prefix("127.0.0.0/8")), {"drop": None}],
             f"{label}: no loopback {field} from the bridge") for field in ("saddr", "daddr")]


def shared_ports(record: NetworkRecord) -> list[str]:
    """``record``'s bridge ports that are no instance's: uplinks, the VXLAN device, the
    quic endpoint's TAP."""
    ports = list(record.interfaces)
    for extra, key in ((record.vxlan, "device"), (record.overlay, "tap")):
        if extra and extra.get(key):
            ports.append(str(extra[key]))
    return ports


def shared_port_rules(record: NetworkRecord) -> Rules:
    """The chain for frames entering ``record``'s bridge from its :func:`shared_ports`.

    - Traffic within the bridge's subnet (except to a gateway address, where
      masqueraded hairpin replies arrive) is never NATed, so it skips connection
      tracking, which costs about a tenth of the throughput.
    - Nothing may claim or target 127.0.0.0/8 (see :func:`bridge_chain_rules`).
    """
    label = _label(record)
    rules: Rules = [([_match(_meta("protocol"), family),
                      _match(_payload(family, "saddr"), _prefix(subnet)),
                      *_to_neighbours(family, subnet, gateway), *UNTRACKED],
                     f"{label}: instance to instance") for family, subnet, gateway in
                    _neighbours(record)]
    return rules + _loopback_drops(label)


def port_chains(records: list[NetworkRecord]) -> dict[str, str]:
    """Bridge port -> the ``bridge`` table chain its frames jump to: an instance's port to
    its own chain (named after the port), a shared port to its bridge's chain."""
    chains = {lease.link: lease.link for record in records for lease in record.leases.values()}
    chains.update((port, record.bridge) for record in records for port in shared_ports(record))
    return chains


def bridge_chain_rules(records: list[NetworkRecord]) -> dict[str, Rules]:
    """Every chain's rules in the ``bridge`` table.

    The base chain, ``ports``, sees every frame entering a bridge port, before
    br_netfilter hands it to the ``inet`` hooks. Its first rule (added by
    :func:`_bridge_commands`) is a verdict map from each of Nova's ports to its chain
    (:func:`port_chains`), where frames between two instances of a network are marked
    untracked and accepted at once, so they pass the ``inet`` chains as cheaply as
    they can. What comes back from a port's chain meets the last rules: nothing from
    a Nova port (any NOVA_HOME's, started or not) may claim or target 127.0.0.0/8. The
    bridges have ``route_localnet`` (for ports published on localhost), which would
    otherwise let an instance reach the host's loopback-only services, or, through
    DNAT, ports other instances publish on localhost only.
    """
    chains: dict[str, Rules] = {"ports": _loopback_drops("nova", _match(_meta("iifname"),
                                                                        NOVA_PORTS))}
    chains.update(antispoof_chains(records))
    chains.update((record.bridge, shared_port_rules(record)) for record in records
                  if shared_ports(record))
    return chains


def raw_rules(record: NetworkRecord) -> tuple[Rules, Rules]:
    """(prerouting, output) rules before connection tracking: the VXLAN underlay to and
    from the peers is never NATed, so it skips connection tracking."""
    pre: Rules = []
    out: Rules = []
    label = _label(record)
    vxlan = record.vxlan or {}
    for peer in vxlan.get("peers", []):  # type: ignore[union-attr]
        family = _family(str(peer))
        port = int(vxlan["port"])  # type: ignore[arg-type]
        pre.append(([_match(_payload(family, "saddr"), peer), _match(_payload("udp", "dport"), port),
                     {"notrack": None}], f"{label}: VXLAN from {peer}"))
        out.append(([_match(_payload(family, "daddr"), peer), _match(_payload("udp", "dport"), port),
                     {"notrack": None}], f"{label}: VXLAN to {peer}"))
    return pre, out


CHAINS = {
    "raw_prerouting": ("filter", "prerouting", -300),
    "raw_output": ("filter", "output", -300),
    "input": ("filter", "input", 0),
    "forward": ("filter", "forward", 0),
    "prerouting": ("nat", "prerouting", -100),
    "output": ("nat", "output", -100),
    "postrouting": ("nat", "postrouting", 100),
}


def chain_rules(records: list[NetworkRecord]) -> dict[str, Rules]:
    """Every chain's rules for ``records``.

    In forward, every network's isolation comes first, then every network's accepts
    (replies, published ports: reachable from anywhere, as from other hosts), then the
    drops, so the outcome never depends on the order of the networks.
    """
    chains: dict[str, Rules] = {name: [] for name in CHAINS}
    isolation: Rules = []
    accepts: Rules = []
    drops: Rules = []
    own_dns: Rules = []
    published: Rules = []
    for record in records:
        own_dns += own_dns_rules(record)
        pre, out = raw_rules(record)
        chains["raw_prerouting"] += pre
        chains["raw_output"] += out
        chains["input"] += input_rules(record)
        isolated, accepted, dropped = forward_rules(record)
        isolation += isolated
        accepts += accepted
        drops += dropped
        chains["postrouting"] += nat_rules(record)
        for lease in record.leases.values():
            published += port_rules(record, lease)
    # DNS to the gateways stays with dnsmasq: before any network's DNAT
    chains["prerouting"], chains["output"] = own_dns + published, own_dns + published
    bridged: Rules = []
    if records:  # traffic that stays on its bridge (br_netfilter shows it here): done at once
        pairs = [[{"concat": [record.bridge, record.bridge]}, {"accept": None}]
                 for record in records]
        bridged.append(([{"vmap": {"key": {"concat": [_meta("iifname"), _meta("oifname")]},
                                   "data": {"set": pairs}}}], "nova: traffic within a bridge"))
    chains["forward"] = bridged + isolation + accepts + drops
    return chains


def table_rules(records: list[NetworkRecord],
                links: Container[str] | None = None) -> dict[str, Rules]:
    """"FAMILY CHAIN" -> rules, of both tables; instance port chains only of ``links``
    (all when None)."""
    instance_ports = {lease.link for record in records for lease in record.leases.values()}
    chains = {f"inet {chain}": rules for chain, rules in chain_rules(records).items()}
    chains.update((f"bridge {chain}", rules) for chain, rules in bridge_chain_rules(records).items()
                  if links is None or chain not in instance_ports or chain in links)
    return chains


def rule_comments(records: list[NetworkRecord], record: NetworkRecord) -> list[tuple[str, str]]:
    """("FAMILY CHAIN", comment) of ``record``'s rules as :func:`transaction` loads them.

    An instance port's chain counts once its lease is ``guarded``: attaching an
    instance does not reload the tables, starting it does.
    """
    prefix = _label(record) + ":"
    guarded = {lease.link for lease in record.leases.values() if lease.guarded}
    return sorted((chain, comment[:128]) for chain, rules in table_rules(records, guarded).items()
                  for _, comment in rules if comment.startswith(prefix))


def loaded_comments(table: str, record: NetworkRecord) -> list[tuple[str, str]] | None:
    """("FAMILY CHAIN", comment) of ``record``'s rules in the host's tables; None when
    either table is missing."""
    prefix = _label(record) + ":"
    found = []
    for family in ("inet", "bridge"):
        try:
            done = subprocess.run(["nft", "-j", "list", "table", family, table],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            return None
        if done.returncode != 0:
            return None
        for item in json.loads(done.stdout).get("nftables", []):
            rule = item.get("rule")
            if rule and str(rule.get("comment", "")).startswith(prefix):
                found.append((f"{family} {rule['chain']}", rule["comment"]))
    return sorted(found)


def antispoof_chains(records: list[NetworkRecord]) -> dict[str, Rules]:
    """Per instance port: frames must carry the lease's MAC and addresses.

    Capsule root holds CAP_NET_RAW over its own network namespace (ping works), so it
    could forge frames; these rules keep it from taking over another instance's or the
    gateway's address on the shared bridge. A VM may also send from 0.0.0.0 / :: (DHCP,
    duplicate address detection) and every instance from IPv6 link-local addresses.
    """
    chains: dict[str, Rules] = {}
    for record in records:
        for lease in record.leases.values():
            label = f"{_label(record)}: {lease.instance}"
            mac = {"payload": {"protocol": "ether", "field": "saddr"}}
            rules: Rules = []
            for family, subnet, gateway in _neighbours(record):  # the common case first
                address = lease.ip if family == "ip" else lease.ip6
                if address:
                    rules.append(([_match(mac, lease.mac), _match(_meta("protocol"), family),
                                   _match(_payload(family, "saddr"), address),
                                   *_to_neighbours(family, subnet, gateway), *UNTRACKED],
                                  f"{label} to instances"))
            rules.append(([_match(mac, lease.mac, "!="), {"drop": None}], f"{label} MAC"))
            ipv4 = [lease.ip] if lease.ip else []
            if lease.endpoint == "tap":
                ipv4.append("0.0.0.0")
            rules.append(([_match(_meta("protocol"), "arp"),
                           _match({"payload": {"protocol": "arp", "field": "saddr ip"}},
                                  {"set": ipv4} if ipv4 else "0.0.0.0", "!="),
                           {"drop": None}], f"{label} ARP"))
            rules.append(([_match(_meta("protocol"), "ip"),
                           _match(_payload("ip", "saddr"), {"set": ipv4} if ipv4 else "0.0.0.0",
                                  "!="), {"drop": None}], f"{label} IPv4"))
            ipv6: list[Any] = [{"prefix": {"addr": "fe80::", "len": 10}}, "::"]
            if lease.ip6:
                ipv6.insert(0, lease.ip6)
            rules.append(([_match(_meta("protocol"), "ip6"),
                           _match(_payload("ip6", "saddr"), {"set": ipv6}, "!="),
                           {"drop": None}], f"{label} IPv6"))
            chains[lease.link] = rules
    return chains


def _rule(family: str, table: str, chain: str, expressions: list[Rule],
          comment: str) -> dict[str, Any]:
    return {"add": {"rule": {"family": family, "table": table, "chain": chain,
                             "expr": expressions, "comment": comment[:128]}}}


def _bridge_commands(table: str, records: list[NetworkRecord]) -> list[dict[str, Any]]:
    """The ``bridge`` table: the frames entering Nova's bridges, per port."""
    ref = {"family": "bridge", "name": table}
    commands: list[dict[str, Any]] = [{"add": {"table": ref}}, {"delete": {"table": ref}}]
    if not records:
        return commands
    commands.append({"add": {"table": ref}})
    chains = bridge_chain_rules(records)
    for name in chains:
        hook = {"type": "filter", "hook": "prerouting", "prio": -200,
                "policy": "accept"} if name == "ports" else {}
        commands.append({"add": {"chain": {"family": "bridge", "table": table, "name": name,
                                           **hook}}})
    jumps = port_chains(records)
    if jumps:
        commands.append(_rule("bridge", table, "ports", [{"vmap": {
            "key": _meta("iifname"),
            "data": {"set": [[port, {"jump": {"target": chain}}]
                             for port, chain in jumps.items()]}}}], "each port of Nova's"))
    commands += [_rule("bridge", table, chain, *rule)
                 for chain, rules in chains.items() for rule in rules]
    return commands


def transaction(table: str, records: list[NetworkRecord]) -> dict[str, Any]:
    """The nft JSON document that replaces Nova's tables with the rules for ``records``."""
    ref = {"family": "inet", "name": table}
    commands: list[dict[str, Any]] = [*_bridge_commands(table, records),
                                      {"add": {"table": ref}}, {"delete": {"table": ref}}]
    if records:
        commands.append({"add": {"table": ref}})
        chains = chain_rules(records)
        for name, (kind, hook, priority) in CHAINS.items():
            if not chains[name]:
                continue  # an empty base chain would still cost every packet a hook call
            commands.append({"add": {"chain": {"family": "inet", "table": table, "name": name,
                                               "type": kind, "hook": hook, "prio": priority,
                                               "policy": "accept"}}})
        commands += [_rule("inet", table, chain, *rule)
                     for chain, rules in chains.items() for rule in rules]
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


class _Libnftables:
    """libnftables through ctypes: one transaction without starting an ``nft`` process
    (every attach and detach reloads the tables, so this is on the hot path)."""

    def __init__(self) -> None:
        import ctypes

        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_output_set_flags",):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def run(self, document: str) -> str | None:
        """Run a JSON document; the error text on failure, else None."""
        ctx = self.lib.nft_ctx_new(0)
        try:
            self.lib.nft_ctx_output_set_flags(ctx, 1 << 4)  # NFT_CTX_OUTPUT_JSON
            self.lib.nft_ctx_buffer_output(ctx)
            self.lib.nft_ctx_buffer_error(ctx)
            if self.lib.nft_run_cmd_from_buffer(ctx, document.encode()) != 0:
                return (self.lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            return None
        finally:
            self.lib.nft_ctx_free(ctx)


_LIBNFTABLES: list[_Libnftables | None] = []


def _run_document(document: str) -> str | None:
    """Load a JSON document through libnftables, or ``nft -j -f -`` without it."""
    if not _LIBNFTABLES:
        try:
            _LIBNFTABLES.append(_Libnftables())
        except (OSError, AttributeError):
            _LIBNFTABLES.append(None)
    if _LIBNFTABLES[0] is not None:
        return _LIBNFTABLES[0].run(document)
    try:
        done = subprocess.run(["nft", "-j", "-f", "-"], input=document, capture_output=True,
                              text=True, timeout=30)
    except FileNotFoundError:
        raise NovaError("nft is not installed; Nova's networks need nftables",
                        hint="apt-get install nftables") from None
    return done.stderr if done.returncode != 0 else None


def apply(table: str, records: list[NetworkRecord]) -> None:
    """Load the tables for ``records`` in one transaction (removes them when there are none)."""
    error = _run_document(json.dumps(transaction(table, records)))
    if error is not None:
        raise NovaError(f"nftables refused Nova's rules: {error.strip()[:400]}",
                        hint="nova doctor checks nftables; run with --debug for details")


def table_exists(table: str) -> bool:
    """True if the host has Nova's table (for status and tests)."""
    try:
        done = subprocess.run(["nft", "-j", "list", "table", "inet", table], capture_output=True,
                              text=True)
    except FileNotFoundError:
        return False
    return done.returncode == 0


class Forwarding:
    """The IP forwarding sysctls: turned on when Nova's networks need them, and recorded.

    Forwarding is per network namespace. Nova enables ``net.ipv4.ip_forward`` (and
    ``net.ipv6.conf.all.forwarding`` when a network has an IPv6 subnet) when it makes
    a network that is not isolated, and records the value it found in ``sysctl.json``
    (``nova doctor`` shows it). It never turns forwarding back off: another NOVA_HOME,
    or docker or libvirt started since, may rely on it; the forward chain keeps
    unpublished instances unreachable either way.
    """

    KEYS = {4: "net/ipv4/ip_forward", 6: "net/ipv6/conf/all/forwarding"}

    def __init__(self, root: Path, proc: Path = Path("/proc/sys")) -> None:
        self.path = root / "sysctl.json"
        self.proc = proc

    def _recorded(self) -> dict[str, str]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def sync(self, records: list[NetworkRecord]) -> dict[str, str]:
        """Turn forwarding on for what ``records`` need; return what Nova changed, ever."""
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
        if recorded:
            self.path.write_text(json.dumps(recorded, indent=1))
        return recorded
