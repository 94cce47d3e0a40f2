"""The ``quic`` network driver: ``[network.NAME] type = "overlay", driver = "quic"``.

A quic network is a nova-bridge network (bridge, addresses, firewall share,
dnsmasq) plus an overlay endpoint (nova_quic.endpoint): a supervised process that
puts a TAP on the bridge and carries its frames to the other hosts over QUIC,
encrypted and mutually authenticated with certificates from the network's CA.
Capsules and VMs attach exactly as to a bridge network.

Every host runs its own Nova with the same subnet. The host's credentials
(``nova overlay ca init`` / ``nova overlay join``) give it an index *i*: its
bridge gets the address ``subnet + i`` and its instances the *i*-th sixteenth of
the subnet, so no two hosts hand out the same address (``gateway`` and ``ip_range``
override both).

```
NOVA_HOME/drivers/bridge/quic/PROJECT/NAME/
  endpoint.json   what the endpoint is told      endpoint.log  its log
  supervisor.pid  the sh loop keeping it alive   status.json   peers, counters (1 s)
  peers.json      peer addresses learned from other members
```
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from pathlib import Path
from typing import ClassVar

from nova_bridge.driver import BridgeDriver, BridgeOptions
from nova_bridge.links import Links, link_name
from nova_bridge.records import NetworkRecord
from nova_bridge.supervise import Supervised
from pydantic import Field, field_validator
from pyroute2.netlink.exceptions import NetlinkError

from nova_core.drivers.models import DriverOptions, NetworkSpec, RenderedDetail
from nova_core.errors import NovaError
from nova_quic.endpoint import ETHERNET, QUIC_OVERHEAD, format_addr, parse_addr
from nova_quic.pki import MAX_HOSTS, OverlayStore

DEFAULT_PORT = 4433
# Inner MTU for a 1500-byte underlay: 1500 - IPv6 header 40 (the larger one) - UDP 8
# - QUIC overhead 41 - Ethernet header 14 and a VLAN tag 4 = 1393; 1380 leaves slack.
DEFAULT_MTU = 1380
assert DEFAULT_MTU <= 1500 - 40 - 8 - QUIC_OVERHEAD - ETHERNET - 4
READY_TIMEOUT = 10.0


def _address(value: str) -> str:
    try:
        host, port = parse_addr(value, DEFAULT_PORT)
    except ValueError:
        raise ValueError(f"'{value}' is not host:port") from None
    if not host or not 0 < port < 65536:
        raise ValueError(f"'{value}' is not host:port (port 1-65535)")
    return format_addr((host, port))


class QuicOptions(BridgeOptions):
    """Keys the quic driver adds to ``[network.NAME]``."""

    listen: str = Field(f"0.0.0.0:{DEFAULT_PORT}",
                        description="UDP address:port the endpoint listens and dials from")
    peers: list[str] = Field(default_factory=list,
                             description="host:port of other members (one is enough to join)")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        address = _address(value)
        try:
            ipaddress.ip_address(parse_addr(address)[0])
        except ValueError:
            raise ValueError(f"listen = '{value}': give an IP address (0.0.0.0 for all)") from None
        return address

    @field_validator("peers")
    @classmethod
    def _peers(cls, peers: list[str]) -> list[str]:
        return [_address(peer) for peer in peers]


class QuicDriver(BridgeDriver):
    """The encrypted overlay: a bridge network whose TAP an endpoint joins to peers."""

    options_model: ClassVar[type[DriverOptions]] = QuicOptions

    def _mtu(self, spec: NetworkSpec) -> int | None:
        return spec.mtu or DEFAULT_MTU

    def _folder(self, project: str, name: str) -> Path:
        return self.ledger.root / "quic" / project / name

    def _endpoint(self, project: str, name: str) -> Supervised:
        folder = self._folder(project, name)
        config = folder / "endpoint.json"
        return Supervised([sys.executable, "-m", "nova_quic.endpoint", str(config)],
                          marker=str(config), program=Path(sys.executable).name,
                          pidfile=folder / "supervisor.pid", log=folder / "endpoint.log",
                          label="nova-quic")

    def _new_record(self, spec: NetworkSpec, taken: list) -> NetworkRecord:  # noqa: ANN001
        if not spec.subnet:
            raise NovaError(f"network {spec.ref.name}: an overlay needs subnet = \"...\"",
                            hint="every host on the overlay uses the same subnet")
        identity = OverlayStore(self.context.nova_home).identity(spec.ref.name)
        network = ipaddress.ip_network(spec.subnet, strict=False)
        if network.version != 4:
            raise NovaError(f"network {spec.ref.name}: the quic overlay takes an IPv4 subnet",
                            hint="e.g. subnet = \"10.77.0.0/24\"")
        options = spec.options
        assert isinstance(options, QuicOptions)
        update: dict[str, object] = {}
        if spec.gateway is None:
            update["gateway"] = str(network.network_address + identity.index)
        if options.ip_range is None:
            if network.prefixlen > 28:
                raise NovaError(f"network {spec.ref.name}: subnet {spec.subnet} is too small to "
                                f"share among {MAX_HOSTS} hosts",
                                hint="use a /28 or larger, or set gateway and ip_range per host")
            share = list(network.subnets(prefixlen_diff=4))[identity.index]
            update["options"] = options.model_copy(update={"ip_range": str(share)})
        record = super()._new_record(spec.model_copy(update=update) if update else spec, taken)
        record.overlay = {"tap": link_name("nvq", self.context.nova_home, spec.ref.project,
                                           spec.ref.name),
                          "listen": options.listen, "peers": list(options.peers),
                          "hostname": identity.hostname, "index": identity.index}
        return record

    def render(self, spec: NetworkSpec) -> list[RenderedDetail]:  # type: ignore[override]
        """The bridge's details, and the endpoint's settings."""
        detail = super().render(spec)
        try:
            identity = OverlayStore(self.context.nova_home).identity(spec.ref.name)
        except NovaError as error:
            return [*detail, RenderedDetail(title="overlay", body=error.message)]
        options = spec.options
        assert isinstance(options, QuicOptions)
        return [*detail, RenderedDetail(title="overlay", body=(
            f"endpoint {identity.hostname} (host {identity.index}) on UDP {options.listen}, "
            f"peers {', '.join([*identity.peers, *options.peers]) or 'none yet'}, "
            f"inner mtu {self._mtu(spec)}"))]

    def _config(self, record: NetworkRecord) -> dict[str, object]:
        overlay = record.overlay or {}
        dns = self.dns_service(record)
        return {"network": record.name, "project": record.project,
                "nova_home": str(self.context.nova_home), "tap": overlay["tap"],
                "bridge": record.bridge, "mtu": record.mtu or DEFAULT_MTU,
                "listen": overlay["listen"], "peers": overlay.get("peers", []),
                "state_dir": str(self._folder(record.project, record.name)),
                "hosts_dir": str(dns.hosts) if record.dns else None,
                "dnsmasq_conf": str(dns.conf) if record.dns else None}

    def _make_extra(self, links: Links, record: NetworkRecord, spec: NetworkSpec) -> None:
        """Start the endpoint (unless it runs with the same settings) and wait for its TAP."""
        folder = self._folder(record.project, record.name)
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "endpoint.json"
        config = json.dumps(self._config(record), indent=1)
        endpoint = self._endpoint(record.project, record.name)
        running = endpoint.supervisor_pid() is not None
        if running and config_path.exists() and config_path.read_text() == config:
            return
        if running:
            endpoint.stop()
        config_path.write_text(config)
        logged = endpoint.log.stat().st_size if endpoint.log.exists() else 0
        process = endpoint.start()
        tap = str((record.overlay or {})["tap"])
        deadline = time.monotonic() + READY_TIMEOUT
        errors: list[str] = []
        while time.monotonic() < deadline and process.poll() is None and not errors:
            try:
                if links.is_up(tap):
                    return
            except (NovaError, NetlinkError):  # the endpoint died, its TAP with it
                pass
            time.sleep(0.05)
            with open(endpoint.log, "rb") as log:  # a failed start says why, then exits
                log.seek(logged)
                errors = [line for line in log.read().decode(errors="replace").splitlines()
                          if " ERROR " in line]
        endpoint.stop()
        tail = [e.split(" ERROR ", 1)[1] for e in errors] or (endpoint.log.read_text(
            errors="replace").strip().splitlines()[-3:] if endpoint.log.exists() else [])
        raise NovaError(f"the overlay endpoint of network {record.name} did not start: "
                        f"{' / '.join(tail) or 'no output'}",
                        hint=f"is UDP {(record.overlay or {}).get('listen')} taken by another "
                             f"program? set listen = \"ADDRESS:PORT\"; full log: {endpoint.log}")

    def _remove_extra(self, links: Links, record: NetworkRecord) -> None:
        self._endpoint(record.project, record.name).stop()
        if record.overlay:
            links.delete(str(record.overlay["tap"]))  # gone with the endpoint; to be sure
        folder = self._folder(record.project, record.name)
        for name in ("endpoint.json", "status.json", "peers.json"):  # the log stays
            (folder / name).unlink(missing_ok=True)

    def delete(self, spec: NetworkSpec) -> None:
        """Remove the network; also stops an endpoint whose record was never written."""
        recorded = self.ledger.get(spec.ref.project, spec.ref.name) is not None
        super().delete(spec)  # a recorded network's endpoint goes with _remove_extra
        if not recorded:
            self._endpoint(spec.ref.project, spec.ref.name).stop()

    def _extra_problems(self, record: NetworkRecord) -> list[str]:
        if self._endpoint(record.project, record.name).supervisor_pid() is None:
            return ["its overlay endpoint is not running"]
        return []

    def _extra_inspect(self, record: NetworkRecord) -> dict[str, object]:
        """The endpoint's own account: peers with state, RTT, counters; refusals."""
        path = self._folder(record.project, record.name) / "status.json"
        endpoint = self._endpoint(record.project, record.name)
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            status = {}
        pid = endpoint.child_pid()
        info: dict[str, object] = {"overlay_endpoint_pid": pid,
                                   "overlay_log": str(endpoint.log)}
        if pid is not None and status.get("pid") == pid:
            info.update({"overlay_host": status.get("hostname"),
                         "overlay_listen": status.get("listen"),
                         "overlay_tap": status.get("tap"), "overlay_mtu": status.get("mtu"),
                         "overlay_datapath": status.get("datapath"),
                         "overlay_channel_drops": status.get("channel_drops"),
                         "peers": status.get("peers", []),
                         "refused": status.get("refused", [])})
        else:
            info["peers"] = []
        return info


__all__ = ["QuicDriver", "QuicOptions"]
