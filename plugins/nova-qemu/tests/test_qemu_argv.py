"""NovaFile -> QEMU command line (qemu driver) and NovaFile -> domain XML (libvirt driver),
pinned by golden files; runs without any hypervisor.

Each case is a NovaFile in tests/golden/NAME.toml; tests/golden/NAME.argv holds the argv
nova renders for its VM (one argument per line) and tests/golden/NAME.xml the domain
XML (or, where libvirt cannot run the VM, the error). NOVA_GOLDEN_UPDATE=1 rewrites
them; review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nova_qemu.domain import LibvirtDriver, LibvirtOptions
from nova_qemu.driver import QemuDriver

from nova_core.drivers.base import DriverContext
from nova_core.drivers.models import DeviceAssignment, NetworkAttachment, VmSpec
from nova_core.errors import NovaError
from nova_core.novafile.loader import load_novafile
from nova_core.plugins import PluginRegistry

GOLDEN = Path(__file__).parent / "golden"
HOME = Path("/var/lib/nova-golden")  # never created: render touches nothing
CASES = sorted(p.stem for p in GOLDEN.glob("*.toml"))


def golden_spec(case: str) -> VmSpec:
    loaded = load_novafile(GOLDEN / f"{case}.toml", PluginRegistry(disabled=()))
    [spec] = [s for s in loaded.specs.values() if isinstance(s, VmSpec)]
    if "tap" in case:  # as nova-bridge hands it over
        spec = spec.model_copy(update={"attachments": [NetworkAttachment(
            network="lan", driver="bridge", instance=spec.ref, endpoint="tap",
            details={"tap": "nvt0123456789", "mac": "52:54:00:12:34:56"})]})
    if "sriov" in case:  # as nova-vfio's sriov network hands a VF over
        spec = spec.model_copy(update={"attachments": [NetworkAttachment(
            network="lan", driver="sriov", instance=spec.ref, endpoint="vf",
            mac="52:54:00:ab:cd:ef",
            details={"address": "0000:04:01.1", "mac": "52:54:00:ab:cd:ef", "pf": "0000:04:00.0",
                     "interface": "enp6s0", "vf": "1", "vlan": "100"})]})
    if "passthrough" in case:  # as nova-vfio hands them over (a GPU, its audio, a NIC, a VF)
        spec = spec.model_copy(update={"assigned_devices": [
            DeviceAssignment(address="0000:01:00.0", driver="vfio", kind="pci",
                             options={"gpu": "1", "multifunction": "on", "x-vga": "on",
                                      "romfile": "/srv/rtx3090.rom"}),
            DeviceAssignment(address="0000:01:00.1", driver="vfio", kind="pci"),
            DeviceAssignment(address="0000:05:00.0", driver="vfio", kind="pci",
                             options={"rombar": "off"}),
            DeviceAssignment(address="0000:04:01.2", driver="sriov", kind="vf",
                             options={"pf": "0000:04:00.0"})]})
    return spec


def accel(spec: VmSpec) -> str:
    return spec.options.accel if spec.options.accel != "auto" else "tcg"


def check(case: str, suffix: str, text: str) -> None:
    text = text.replace(str(GOLDEN.resolve()), "GOLDEN")
    golden = GOLDEN / f"{case}.{suffix}"
    if os.environ.get("NOVA_GOLDEN_UPDATE"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("case", CASES)
def test_novafile_renders_to_the_pinned_argv(case: str) -> None:
    spec = golden_spec(case)
    driver = QemuDriver("qemu", DriverContext(nova_home=HOME))
    argv = driver.argv(spec, accel(spec), driver.planned_disks(spec))
    check(case, "argv", "\n".join(argv) + "\n")


@pytest.mark.parametrize("case", CASES)
def test_novafile_renders_to_the_pinned_domain_xml(case: str) -> None:
    spec = golden_spec(case)
    spec = spec.model_copy(update={"driver": "libvirt", "options": LibvirtOptions(
        **spec.options.model_dump())})
    driver = LibvirtDriver("libvirt", DriverContext(nova_home=HOME))
    try:
        xml = driver.domain_xml(spec, accel(spec), driver.planned_disks(spec))
    except NovaError as error:  # microvm: libvirt cannot run it, and says so
        xml = f"error: {error.message}\n"
    check(case, "xml", xml)


def test_there_are_cases_for_machines_firmware_disks_and_networks() -> None:
    assert {"q35-kernel", "pc-image-disks", "microvm-tap", "uefi-user-net",
            "q35-cloud-init", "q35-tap-libvirt", "q35-passthrough", "q35-sriov-net"} <= set(CASES)
    assert (GOLDEN / "microvm-tap.xml").read_text().startswith("error: ")
    assert "<nova:home>" in (GOLDEN / "q35-kernel.xml").read_text()
    assert not Path(HOME).exists()


def test_a_novafile_chooses_the_libvirt_driver_and_its_uri() -> None:
    spec = golden_spec("q35-tap-libvirt")
    assert spec.driver == "libvirt" and spec.options.uri == "qemu:///session"
    details = LibvirtDriver("libvirt", DriverContext(nova_home=HOME)).render(spec)
    assert details[-1].format == "xml" and "<interface type=\"ethernet\">" in details[-1].body


def test_plan_says_when_passthrough_devices_are_chosen() -> None:
    spec = golden_spec("q35-kernel").model_copy(update={"gpu_passthrough": True,
                                                       "devices": ["0000:03:00.0"]})
    for driver in (QemuDriver("qemu", DriverContext(nova_home=HOME)),
                   LibvirtDriver("libvirt", DriverContext(nova_home=HOME))):
        details = driver.render(spec)
        [note] = [d for d in details if d.title == "passthrough"]
        assert "a GPU (gpu_passthrough), 0000:03:00.0" in note.body
        assert "vfio-pci" not in details[-1].body  # nothing is bound before create
