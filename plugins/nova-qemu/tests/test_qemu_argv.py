"""NovaFile -> QEMU command line, pinned by golden files (runs without any hypervisor).

Each case is a NovaFile in tests/golden/NAME.toml and the argv nova renders for its
VM in tests/golden/NAME.argv (one argument per line). NOVA_GOLDEN_UPDATE=1 rewrites
them; review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nova_qemu.driver import QemuDriver

from nova_core.drivers.base import DriverContext
from nova_core.drivers.models import NetworkAttachment, VmSpec
from nova_core.novafile.loader import load_novafile
from nova_core.plugins import PluginRegistry

GOLDEN = Path(__file__).parent / "golden"
HOME = Path("/var/lib/nova-golden")  # never created: render touches nothing
CASES = sorted(p.stem for p in GOLDEN.glob("*.toml"))


def rendered(case: str) -> list[str]:
    loaded = load_novafile(GOLDEN / f"{case}.toml", PluginRegistry(disabled=()))
    [spec] = [s for s in loaded.specs.values() if isinstance(s, VmSpec)]
    if "tap" in case:  # as nova-bridge hands it over
        spec = spec.model_copy(update={"attachments": [NetworkAttachment(
            network="lan", driver="bridge", instance=spec.ref, endpoint="tap",
            details={"tap": "nvt0123456789", "mac": "52:54:00:12:34:56"})]})
    driver = QemuDriver("qemu", DriverContext(nova_home=HOME))
    argv = driver.argv(spec, spec.options.accel if spec.options.accel != "auto" else "tcg",
                       driver._planned_disks(spec))
    return [arg.replace(str(GOLDEN.resolve()), "GOLDEN") for arg in argv]


@pytest.mark.parametrize("case", CASES)
def test_novafile_renders_to_the_pinned_argv(case: str) -> None:
    argv = rendered(case)
    golden = GOLDEN / f"{case}.argv"
    if os.environ.get("NOVA_GOLDEN_UPDATE"):
        golden.write_text("\n".join(argv) + "\n")
    assert argv == golden.read_text().splitlines()


def test_there_are_cases_for_machines_firmware_disks_and_networks() -> None:
    assert {"q35-kernel", "pc-image-disks", "microvm-tap", "uefi-user-net",
            "q35-cloud-init"} <= set(CASES)
    assert not Path(HOME).exists()


def test_passthrough_is_a_clear_error_until_nova_vfio() -> None:
    loaded = load_novafile(GOLDEN / "q35-kernel.toml", PluginRegistry(disabled=()))
    [spec] = [s for s in loaded.specs.values() if isinstance(s, VmSpec)]
    details = QemuDriver("qemu", DriverContext(nova_home=HOME)).render(
        spec.model_copy(update={"gpu_passthrough": True}))
    assert details[0].title == "error" and "nova-vfio" in details[0].body
