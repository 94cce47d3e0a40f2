"""One dnsmasq per network: DNS for instance names, DHCP reservations for VMs.

```
NOVA_HOME/drivers/bridge/dns/PROJECT-NAME/
  dnsmasq.conf  leases          (opened by dnsmasq as root, before it drops privileges)
  dnsmasq.log   supervisor.pid
/run/nova-net-HASH/BRIDGE/      (0755: dnsmasq re-reads these as nobody)
  hosts/KIND.NAME               "IP NAME NAME.PROJECT.nova" (hostsdir: read on change)
  dhcp/KIND.NAME                "MAC,IP,NAME" (dhcp-hostsdir: read on change)
```

dnsmasq binds only the bridge's addresses. A two-line ``sh`` loop supervises it
(nova_bridge.supervise: restarting it a second after it dies);
:meth:`DnsService.ensure_running` restarts the supervisor itself if that died too,
and ``nova up`` calls it through the driver's status. New names are picked up by
dnsmasq's inotify on the folders; a removed name needs a SIGHUP (a reload, not a
restart).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from nova_bridge.records import Lease, NetworkRecord
from nova_bridge.supervise import Supervised
from nova_core.errors import NovaError
from nova_core.files import replace_file
from nova_core.hostinfo.ports import sockets


class DnsService:
    """The dnsmasq of one network."""

    def __init__(self, folder: Path, state: Path) -> None:
        self.folder = folder  # the watched folders, on /run
        self.state = state  # configuration, leases, log: under NOVA_HOME
        self.conf = state / "dnsmasq.conf"
        self.hosts = folder / "hosts"
        self.dhcp = folder / "dhcp"
        self.pidfile = state / "supervisor.pid"
        self.log = state / "dnsmasq.log"
        self.daemon = Supervised([shutil.which("dnsmasq") or "dnsmasq", "-k",
                                  f"--conf-file={self.conf}"], marker=f"--conf-file={self.conf}",
                                 program="dnsmasq", pidfile=self.pidfile, log=self.log,
                                 label="nova-dns")

    @staticmethod
    def wanted(record: NetworkRecord) -> bool:
        """A network runs dnsmasq for DNS (``dns = true``) or DHCP (a VM is attached)."""
        return bool(record.dns or any(lease.endpoint == "tap" for lease in record.leases.values()))

    def config(self, record: NetworkRecord) -> str:
        """dnsmasq's configuration for ``record``."""
        # Only the bridge: DNS on its addresses (the gateways, and its link-local IPv6),
        # DHCP on a socket bound to the bridge device, so one dnsmasq per network coexists
        # with the others and with a resolver on the host's loopback.
        lines = ["bind-interfaces", f"interface={record.bridge}", "except-interface=lo",
                 "no-hosts",
                 f"hostsdir={self.hosts}", f"dhcp-hostsdir={self.dhcp}",
                 f"dhcp-leasefile={self.state / 'leases'}", "log-facility=-", "pid-file=",
                 f"domain={record.domain}", "local=/nova/", "domain-needed", "bogus-priv"]
        if not record.dns:
            lines.append("port=0")
        if record.subnet and ipaddress.ip_network(record.subnet).version == 4:
            network = ipaddress.ip_network(record.subnet)
            lines += [f"dhcp-range={network.network_address},static,{network.netmask},12h",
                      f"dhcp-option=option:router,{record.gateway}"]
            if record.dns:
                lines.append(f"dhcp-option=option:dns-server,{record.gateway}")
        if record.subnet6:
            # DHCPv6 hands a VM the address IPAM reserved for its MAC (DUID-LL/LLT, or
            # the neighbour table); router advertisements say to ask (the M flag), make
            # the prefix on-link and the bridge the router. No SLAAC: its addresses
            # would not be the ones in DNS.
            network6 = ipaddress.ip_network(record.subnet6)
            lines += [f"dhcp-range={network6.network_address},static,{network6.prefixlen},12h",
                      "enable-ra"]
            if record.dns:
                lines.append(f"dhcp-option=option6:dns-server,[{record.gateway6}]")
        return "\n".join(lines) + "\n"

    def _write(self, path: Path, text: str) -> None:
        replace_file(path, text, mode=0o644,
                     tmp=path.parent.parent / f".{path.parent.name}-{path.name}.tmp")  # not watched

    def sync_files(self, record: NetworkRecord) -> None:
        """Write the configuration and one hosts (and DHCP) file per lease."""
        self.state.mkdir(parents=True, exist_ok=True)
        for folder in (self.folder.parent, self.folder, self.hosts, self.dhcp):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o755)  # dnsmasq reads it after dropping to nobody
        self._write(self.conf, self.config(record))
        for lease in record.leases.values():
            self.add(record, lease, signal_reload=False)

    def add(self, record: NetworkRecord, lease: Lease, signal_reload: bool = True) -> None:
        """Publish ``lease``'s name (and its DHCP reservation for a VM)."""
        if not self.hosts.is_dir():
            return
        names = f"{lease.name} {lease.name}.{record.domain}"
        lines = [f"{address} {names}" for address in (lease.ip, lease.ip6) if address]
        self._write(self.hosts / lease.instance, "\n".join(lines) + "\n")
        if lease.endpoint == "tap" and (lease.ip or lease.ip6):
            addresses = [a for a in (lease.ip, f"[{lease.ip6}]" if lease.ip6 else None) if a]
            self._write(self.dhcp / lease.instance,
                        ",".join([lease.mac, *addresses, lease.name]) + "\n")

    def remove(self, instance: str) -> None:
        """Withdraw an instance's name; dnsmasq reloads (SIGHUP), it does not restart."""
        removed = False
        for folder in (self.hosts, self.dhcp):
            if (folder / instance).exists():
                (folder / instance).unlink()
                removed = True
        pid = self.dnsmasq_pid()
        if removed and pid:
            os.kill(pid, signal.SIGHUP)

    def supervisor_pid(self) -> int | None:
        """The supervising shell's PID, if it is alive."""
        return self.daemon.supervisor_pid()

    def dnsmasq_pid(self) -> int | None:
        """The running dnsmasq's PID, if any."""
        return self.daemon.child_pid()

    def ensure_running(self, record: NetworkRecord, timeout: float = 5.0) -> None:
        """Start the supervised dnsmasq unless it runs; wait until it serves."""
        if self.supervisor_pid() is not None:
            return
        self.daemon.kill_strays()  # a dnsmasq whose supervisor was killed holds the ports
        binary = shutil.which("dnsmasq")
        if binary is None:
            raise NovaError(f"network {record.name} needs dnsmasq for DNS/DHCP, which is not "
                            "installed", hint="apt-get install dnsmasq-base")
        self.sync_files(record)
        for _ in range(3):  # a run ended by a signal (not its verdict) is run again
            test = subprocess.run([binary, "--test", f"--conf-file={self.conf}"],
                                  capture_output=True, text=True)
            if test.returncode >= 0:
                break
        if test.returncode != 0:
            said = test.stderr.strip() or (f"dnsmasq --test ended by signal {-test.returncode}"
                                           if test.returncode < 0 else
                                           f"dnsmasq --test exited {test.returncode}")
            raise NovaError(f"dnsmasq refuses the configuration of network {record.name}: "
                            f"{said}")
        self.daemon.argv[0] = binary
        process = self.daemon.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if self._serving(record):
                return
            time.sleep(0.02)
        self.stop()
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        raise NovaError(f"dnsmasq for network {record.name} did not start: "
                        f"{' / '.join(tail) or 'no output'}",
                        hint=f"is something else bound to {record.gateway} port 53 or 67?")

    def _serving(self, record: NetworkRecord) -> bool:
        pid = self.dnsmasq_pid()
        if pid is None:
            return False
        if not record.dns:
            return True
        bound = {address for address, port in sockets("udp") if port == 53}
        return bool({record.gateway, record.gateway6} & bound)

    def stop(self) -> None:
        """Stop the supervisor and dnsmasq, and remove the folder."""
        self.daemon.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
        for name in ("dnsmasq.conf", "leases", "supervisor.pid"):  # the log stays
            (self.state / name).unlink(missing_ok=True)
        try:
            self.folder.parent.rmdir()  # the NOVA_HOME's folder, once its last network is gone
        except OSError:
            pass
