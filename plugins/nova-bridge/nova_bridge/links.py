"""Links, addresses and routes through netlink (pyroute2), never by parsing ``ip``.

An instance's veth pair, its addresses and routes, and its deletion are pyroute2's
messages sent in batches of one datagram each (:func:`rtnl_batch`); the rest goes
through pyroute2's IPRoute.

Interface names are short hashes (IFNAMSIZ is 15): ``nvb*`` bridges, ``nvv*``
host ends of veth pairs, ``nvt*`` taps, ``nvx*`` VXLAN devices. The hash covers
NOVA_HOME, so two Nova homes on one host (or one test per home) never collide.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import os
import socket
import struct
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from nova_core.errors import NovaError
from nova_core.hostinfo import netns
from nova_core.names import mac_address

BRIDGE_PREFIX = "nvb"


def link_name(prefix: str, nova_home: Path, *parts: str) -> str:
    """``prefix`` plus 10 hex digits of a hash of NOVA_HOME and ``parts``."""
    digest = hashlib.sha256("\0".join([str(nova_home.resolve()), *parts]).encode())
    return prefix + digest.hexdigest()[:10]


def _index(name: str) -> int | None:
    """The index of link ``name`` in the calling thread's network namespace, None without
    one: an ioctl, where a netlink lookup through pyroute2 takes about 1 ms."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _fail(what: str, error: NetlinkError) -> NovaError:
    return NovaError(f"{what}: {os.strerror(error.code) if error.code else error}")


RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_NEWROUTE, NLMSG_ERROR = 16, 17, 20, 24, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1


def _link_up(index: int) -> ifinfmsg:
    message = ifinfmsg()
    message["header"]["type"] = RTM_NEWLINK
    message["index"], message["flags"], message["change"] = index, IFF_UP, IFF_UP
    return message


def _address(index: int, address: str, prefix: int) -> ifaddrmsg:
    message = ifaddrmsg()
    message["header"]["type"] = RTM_NEWADDR
    message["header"]["flags"] = NLM_F_CREATE | NLM_F_REPLACE
    message["family"] = socket.AF_INET6 if ":" in address else socket.AF_INET
    message["prefixlen"], message["index"] = prefix, index
    message["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
    return message


def _default_route(index: int, gateway: str) -> rtmsg:
    message = rtmsg()
    message["header"]["type"] = RTM_NEWROUTE
    message["header"]["flags"] = NLM_F_CREATE | NLM_F_REPLACE
    message["family"] = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    message["table"], message["proto"], message["type"] = RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST
    message["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", index)]
    return message


#: Seconds to wait for the kernel's acknowledgements of one batch.
RTNL_TIMEOUT = 10.0


def rtnl_batch(messages: list[ifinfmsg | ifaddrmsg | rtmsg]) -> None:
    """Send rtnetlink requests in one datagram, in the calling thread's network namespace,
    and wait for every acknowledgement; raise the first error as a NetlinkError.

    pyroute2's messages, without its IPRoute: opening one costs about 1.2 ms and each
    request through it 0.6-1 ms, where the kernel's own work is a fraction of that. The
    kernel handles the requests in order (an address before the route that needs it).
    """
    data = bytearray()
    for sequence, message in enumerate(messages, 1):
        header = message["header"]
        header["flags"] = header.get("flags", 0) | NLM_F_REQUEST | NLM_F_ACK
        header["sequence_number"] = sequence
        message.encode()
        data += message.data
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.settimeout(RTNL_TIMEOUT)  # the kernel answers at once; never hang on it
        sock.send(data)
        errors: dict[int, int] = {}
        while len(errors) < len(messages):
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                raise NetlinkError(errno.ETIMEDOUT, f"no answer from rtnetlink in "
                                                    f"{RTNL_TIMEOUT:g} s") from None
            offset = 0
            while offset + 16 <= len(reply):
                length, kind, _flags, sequence, _pid = struct.unpack_from("=IHHII", reply, offset)
                if kind == NLMSG_ERROR:
                    errors[sequence] = -struct.unpack_from("=i", reply, offset + 16)[0]
                offset += (length + 3) & ~3 or len(reply)
    for sequence in sorted(errors):
        if errors[sequence]:
            raise NetlinkError(errors[sequence])


class Links:
    """pyroute2's IPRoute in the host's network namespace, opened when first needed:
    attaching and detaching an instance need none (:func:`rtnl_batch`), and opening one
    takes about 2 ms."""

    def __init__(self) -> None:
        self._ipr: IPRoute | None = None

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        """Close the socket, if one was opened."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observing -----------------------------------------------------------------
    def exists(self, name: str) -> bool:
        """True if a link called ``name`` exists."""
        return _index(name) is not None

    def is_up(self, name: str) -> bool:
        """True if the link exists and is administratively up."""
        index = _index(name)
        if index is None:
            return False
        return bool(self.ipr.get_links(index)[0]["flags"] & 1)

    def taken_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Every routed destination and every address's network on the host."""
        taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for route in self.ipr.get_routes(table=0):  # all tables
            dst = route.get("dst")
            if dst and route["dst_len"] > 0:
                taken.append(ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False))
        for addr in self.ipr.get_addr():
            taken.append(ipaddress.ip_network(f"{addr.get('address')}/{addr['prefixlen']}",
                                              strict=False))
        return taken

    def uplink_problem(self, name: str) -> str | None:
        """Why enslaving ``name`` would cut the host off, or None if it would not."""
        index = _index(name)
        if index is None:
            return f"interface {name} does not exist"
        addresses = [a.get("address") for a in self.ipr.get_addr(index=index)
                     if not str(a.get("address", "")).startswith("fe80:")]
        defaults = [r for r in self.ipr.get_routes(table=254) if r["dst_len"] == 0 and
                    r.get("oif") == index]
        reasons = []
        if addresses:
            reasons.append(f"it has the host's address{'es' if len(addresses) > 1 else ''} "
                           f"{', '.join(map(str, addresses))}")
        if defaults:
            reasons.append("the host's default route goes through it")
        return " and ".join(reasons) or None

    # -- making ----------------------------------------------------------------------
    def ensure_bridge(self, name: str, mtu: int | None,
                      addresses: list[tuple[str, int]]) -> None:
        """Make the bridge (up, with ``addresses``); repairs a half-made one.

        Its MAC address is set explicitly: otherwise a bridge takes the lowest MAC of
        its ports, so plugging in an instance could change the gateway's MAC under
        every other instance's ARP cache (seconds without connectivity).
        """
        try:
            if _index(name) is None:
                fields = {"mtu": mtu} if mtu else {}
                self.ipr.link("add", ifname=name, kind="bridge", state="up",
                              address=mac_address("bridge", name), **fields)
            index = _index(name)
            self.ipr.link("set", index=index, state="up")
            have = {(a.get("address"), a["prefixlen"]) for a in self.ipr.get_addr(index=index)}
            for address, prefix in addresses:
                if (address, prefix) not in have:
                    self.ipr.addr("add", index=index, address=address, prefixlen=prefix)
        except NetlinkError as error:
            raise _fail(f"making bridge {name}", error) from error

    def delete(self, name: str) -> None:
        """Delete a link; fine if it is gone."""
        index = _index(name)
        if index is None:
            return
        message = ifinfmsg()
        message["header"]["type"] = RTM_DELLINK
        message["index"] = index
        try:
            rtnl_batch([message])
        except NetlinkError as error:
            if error.code != errno.ENODEV:  # gone meanwhile
                raise _fail(f"deleting {name}", error) from error

    def enslave(self, name: str, bridge: str) -> None:
        """Put an uplink under the bridge."""
        try:
            self.ipr.link("set", index=_index(name), master=_index(bridge),
                          state="up")
        except NetlinkError as error:
            raise _fail(f"adding {name} to {bridge}", error) from error

    def keep_mtu(self, bridge: str, mtu: int) -> None:
        """Give the bridge ``mtu`` again if a port changed it. A bridge follows the
        smallest MTU of its ports (an uplink at 1500 under a bridge made with 1400 takes
        it to 1500) until its MTU is set on the running bridge: then it keeps that."""
        index = _index(bridge)
        try:
            if index is not None and self.ipr.get_links(index)[0].get("mtu") != mtu:
                self.ipr.link("set", index=index, mtu=mtu)
        except NetlinkError as error:
            raise _fail(f"setting the MTU of {bridge} to {mtu}", error) from error

    def release(self, name: str) -> None:
        """Take an uplink out of its bridge; fine if it is gone."""
        index = _index(name)
        if index is not None:
            self.ipr.link("set", index=index, master=0)

    def add_veth(self, host: str, bridge: str, namespace: Path, inner: str, mac: str,
                 mtu: int | None) -> None:
        """A veth pair: ``host`` on the bridge, ``inner`` (with ``mac``) in ``namespace``."""
        master = _index(bridge)
        if master is None:
            raise NovaError(f"bridge {bridge} is missing", hint="nova up remakes it")
        fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
        try:
            mtu_attrs = [("IFLA_MTU", mtu)] if mtu else []
            peer = {"attrs": [("IFLA_IFNAME", inner), ("IFLA_NET_NS_FD", fd),
                              ("IFLA_ADDRESS", mac), *mtu_attrs]}
            message = ifinfmsg()
            message["header"]["type"] = RTM_NEWLINK
            message["header"]["flags"] = NLM_F_CREATE | NLM_F_EXCL
            message["flags"] = message["change"] = IFF_UP
            message["attrs"] = [("IFLA_IFNAME", host), ("IFLA_MASTER", master), *mtu_attrs,
                                ("IFLA_LINKINFO", {"attrs": [
                                    ("IFLA_INFO_KIND", "veth"),
                                    ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]})]
            rtnl_batch([message])
        except NetlinkError as error:
            raise _fail(f"making veth {host} into {namespace}", error) from error
        finally:
            os.close(fd)

    def add_tap(self, name: str, bridge: str, mtu: int | None) -> None:
        """A persistent tap (no packet-info header, vnet header on: what QEMU opens)."""
        if _index(name) is None:
            make_tap(name)
        try:
            fields = {"mtu": mtu} if mtu else {}
            self.ipr.link("set", index=_index(name), master=_index(bridge),
                          state="up", **fields)
        except NetlinkError as error:
            raise _fail(f"adding tap {name} to {bridge}", error) from error

    def ensure_vxlan(self, name: str, bridge: str, vni: int, port: int, local: str | None,
                     peers: list[str], mtu: int | None) -> None:
        """A VXLAN device on the bridge that floods to each of ``peers``."""
        try:
            if _index(name) is None:
                fields: dict[str, object] = {"vxlan_id": vni, "vxlan_port": port,
                                             "vxlan_learning": 1}
                if local:
                    fields["vxlan_local"] = local
                if mtu:
                    fields["mtu"] = mtu
                self.ipr.link("add", ifname=name, kind="vxlan", master=_index(bridge),
                              state="up", **fields)
            index = _index(name)
            have = {entry.get("NDA_DST") for entry in self.ipr.fdb("dump", ifindex=index)
                    if entry.get("NDA_LLADDR") == "00:00:00:00:00:00"}
            for peer in peers:
                if peer not in have:
                    self.ipr.fdb("append", ifindex=index, lladdr="00:00:00:00:00:00", dst=peer)
        except NetlinkError as error:
            raise _fail(f"making VXLAN device {name}", error) from error


UNPRIVILEGED_SYSCTLS = {"net/ipv4/ip_unprivileged_port_start": "0",
                        "net/ipv4/ping_group_range": "0 2147483647"}


def configure_inside(namespace: Path, inner: str, addresses: list[tuple[str, int]],
                     gateways: list[str], default_route: bool) -> None:
    """Bring ``inner`` and lo up inside ``namespace``, with addresses and default routes."""

    def work() -> None:
        # A capsule's namespace belongs to its own user namespace (its root may bind low
        # ports and ping there anyway); one the driver made itself belongs to host root,
        # so let unprivileged processes bind low ports and ping in it, as docker and
        # podman configure theirs. Written from inside the namespace.
        for knob, value in UNPRIVILEGED_SYSCTLS.items():
            Path("/proc/sys", knob).write_text(value + "\n")
        index = _index(inner)
        loopback = _index("lo")
        if index is None or loopback is None:
            raise NovaError(f"{inner} is missing in {namespace}")
        requests = [_link_up(loopback), *(_address(index, address, prefix)
                                          for address, prefix in addresses), _link_up(index)]
        if default_route:
            requests += [_default_route(index, gateway) for gateway in gateways]
        rtnl_batch(requests)

    try:
        netns.run_inside(namespace, work)
    except NetlinkError as error:
        raise _fail(f"configuring {inner} in {namespace}", error) from error


def links_inside(namespace: Path) -> list[str]:
    """Interface names inside ``namespace`` (besides lo)."""

    def work() -> list[str]:  # libc's if_nameindex: no pyroute2 socket to set up
        return [name for _number, name in socket.if_nameindex() if name != "lo"]

    return netns.run_inside(namespace, work)


TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def make_tap(name: str) -> None:
    """Create a persistent tap device through /dev/net/tun (netlink cannot make taps)."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        raise NovaError(f"cannot open /dev/net/tun to make tap {name}: {error.strerror}",
                        hint="modprobe tun") from error
    try:
        request = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, request)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as error:
        raise NovaError(f"making tap {name}: {error.strerror}") from error
    finally:
        os.close(fd)
