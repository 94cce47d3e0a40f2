"""``nova device ls|bind|release|vfs``: the host's PCI devices and passthrough by hand."""

from __future__ import annotations

import click

from nova_core.cli.output import print_json, table


def _host():  # noqa: ANN202 - lazily imported types
    from nova_core.drivers.base import DriverContext
    from nova_core.state.store import default_nova_home
    from nova_vfio.driver import VfioDriver

    return VfioDriver("vfio", DriverContext(nova_home=default_nova_home()))


@click.group("device")
def device_group() -> None:
    """Host PCI devices: inventory, vfio-pci binding, SR-IOV VFs."""


@device_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--gpu", is_flag=True, help="Only GPUs (with their companion functions).")
def device_ls(as_json: bool, gpu: bool) -> None:
    """Every PCI device: names, class, driver, IOMMU group, SR-IOV, holder."""
    driver = _host()
    host = driver.host
    held = driver.ledger.read()
    rows = []
    for device in host.devices():
        if gpu and not device.is_gpu:
            continue
        members = [m.address for m in host.group_members(device) if m.address != device.address]
        rows.append({**device.as_json(),
                     "group_members": members,
                     "group_isolated": host.isolated(device),
                     "companions": [c.address for c in host.companions(device)] if device.is_gpu
                     else [],
                     "reserved_by": (held.get(device.address) or {}).get("holder")})
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no PCI devices found" if not gpu else "no GPUs found")
        return
    click.echo(table(
        ["ADDRESS", "CLASS", "DEVICE", "DRIVER", "GROUP", "SR-IOV", "HELD BY"],
        [(r["address"] + (" *" if r["is_gpu"] else ""), r["class_name"],
          f"{r['vendor']} {r['name']}", r["driver"] or "-",
          (r["group"] or "-") + ("" if r["group_isolated"] or not r["group"] else " (shared)"),
          f"{r['sriov_current']}/{r['sriov_total']}" if r["sriov_total"] is not None else "-",
          r["reserved_by"] or "-") for r in rows]))
    if any(r["is_gpu"] for r in rows):
        click.echo("\n* GPU; its companions (same card): "
                   + "; ".join(f"{r['address']}: {', '.join(r['companions']) or 'none'}"
                               for r in rows if r["is_gpu"]))


@device_group.command("bind")
@click.argument("address")
@click.option("--force", is_flag=True, help="Also take a device the host itself uses.")
def device_bind(address: str, force: bool) -> None:
    """Move a device and every endpoint of its IOMMU group to vfio-pci."""
    from nova_vfio.driver import MANUAL
    from nova_vfio.sysfs import normalise

    driver = _host()
    device = driver.host.device(normalise(address))
    driver.take([device], MANUAL, force)
    moved = [m.address for m in driver.host.endpoints(device)]
    click.echo(f"bound to vfio-pci: {', '.join(moved)} (nova device release {device.address} "
               "gives them back)")


@device_group.command("release")
@click.argument("address")
def device_release(address: str) -> None:
    """Give a device bound by hand (and its group) back to its original drivers."""
    from nova_core.errors import NovaError
    from nova_vfio.driver import MANUAL
    from nova_vfio.sysfs import normalise

    driver = _host()
    address = normalise(address)
    held = driver.ledger.read()
    entry = held.get(address)
    if entry is None:
        raise NovaError(f"{address} is not bound by Nova", hint="nova device ls shows holders")
    if entry.get("holder") != MANUAL:
        raise NovaError(f"{address} is held by {entry['holder']}",
                        hint="it is given back when that VM is removed (nova down)")
    device = driver.host.device(address)
    group = [m.address for m in driver.host.endpoints(device)
             if (held.get(m.address) or {}).get("holder") == MANUAL]
    driver.give_back(group)
    restored = {a: (held[a].get("original") or "no driver") for a in group}
    click.echo("released: " + ", ".join(f"{a} -> {d}" for a, d in restored.items()))


@device_group.command("vfs")
@click.argument("address")
@click.option("--count", type=click.IntRange(min=0), required=True,
              help="How many VFs the physical function should have (0 removes them).")
def device_vfs(address: str, count: int) -> None:
    """Create or remove SR-IOV virtual functions of a physical function."""
    from nova_core.errors import NovaError
    from nova_vfio.sysfs import normalise

    driver = _host()
    device = driver.host.device(normalise(address))
    busy = [vf for vf in device.vfs if vf in driver.ledger.read()]
    if busy:
        raise NovaError(f"VFs of {device.address} are held: {', '.join(busy)}",
                        hint="remove the VMs that use them first")
    driver.host.set_vfs(device, count)
    after = driver.host.device(device.address)
    click.echo(f"{device.address}: {len(after.vfs)} VFs" + (f" ({', '.join(after.vfs)})"
                                                           if after.vfs else ""))
