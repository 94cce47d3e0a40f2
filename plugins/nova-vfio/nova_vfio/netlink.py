"""SR-IOV VF settings made on the physical function, over netlink (``ip link set PF vf N``).

A VF's MAC address, VLAN and spoof check are set through its PF's driver: the VF is
then handed to a VM (vfio-pci), and the guest sees the MAC and is confined to the VLAN
whatever it does. pyroute2 sends the ``IFLA_VFINFO_LIST`` request.
"""

from __future__ import annotations

from pathlib import Path

from nova_core.errors import NovaError
from nova_core.hostinfo import netns

NO_MAC = "00:00:00:00:00:00"


def set_vf(interface: str, index: int, mac: str, vlan: int, namespace: Path | None = None) -> None:
    """Give VF ``index`` of PF ``interface`` this MAC and VLAN (0: none), spoof check on.

    ``namespace``: the network namespace holding ``interface`` (None: Nova's own).
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    def work() -> None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=interface)
            if not found:
                raise NovaError(f"no network interface {interface} on this host",
                                hint="ip link shows the interfaces; sriov names the PF's")
            try:
                ipr.link("set", index=found[0], vf={"vf": index, "mac": mac})
                ipr.link("set", index=found[0], vf={"vf": index, "vlan": vlan})
                if mac != NO_MAC:  # a VF with no MAC may not be checked (some drivers refuse)
                    ipr.link("set", index=found[0], vf={"vf": index, "spoofchk": 1})
            except NetlinkError as error:
                reason = error.args[1] if len(error.args) > 1 else str(error)
                raise NovaError(f"{interface} did not accept the settings of its VF {index} "
                                f"(MAC {mac}, VLAN {vlan}): {reason}",
                                hint="the PF's driver must support SR-IOV with VFs enabled "
                                     "(nova device vfs ADDR --count N); ip link show "
                                     f"{interface} lists its VFs") from None

    if namespace is None:
        work()
    else:
        netns.run_inside(namespace, work)
