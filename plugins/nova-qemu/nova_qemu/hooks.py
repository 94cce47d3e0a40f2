"""nova-qemu's hooks: host checks for ``nova doctor``."""

from __future__ import annotations

from typing import Any

from nova_core.hookspecs import hookimpl
from nova_core.hooktypes import CheckResult, program_check

CATEGORY = "nova-qemu"


@hookimpl
def nova_cli_commands() -> list[Any]:
    """``nova console vm NAME``."""
    from nova_qemu.cli import console_command

    return [console_command]


@hookimpl
def nova_image_kinds() -> list[Any]:
    """Disk images for VMs."""
    from nova_qemu.images import VmImages

    return [VmImages()]


@hookimpl
def nova_doctor_checks() -> list[CheckResult]:
    """QEMU programs, firmware, and whether KVM really runs guests (a boot probe)."""
    from pathlib import Path

    from nova_qemu.kvm_probe import probe_kvm

    results = [
        program_check(CATEGORY, "qemu-system-x86_64", "runs VMs",
                      "apt-get install qemu-system-x86"),
        program_check(CATEGORY, "qemu-img", "makes disks and snapshots",
                      "apt-get install qemu-utils"),
        program_check(CATEGORY, "libvirtd", "the libvirt driver's daemon",
                      "apt-get install libvirt-daemon-system (only for driver = \"libvirt\")"),
    ]
    ovmf = Path("/usr/share/OVMF/OVMF_CODE.fd")
    results.append(CheckResult(CATEGORY, "OVMF", "ok" if ovmf.exists() else "warn",
                               str(ovmf) if ovmf.exists() else "not found (firmware = \"uefi\")",
                               None if ovmf.exists() else "apt-get install ovmf"))
    verdict = probe_kvm()
    results.append(CheckResult(
        CATEGORY, "kvm usable", "ok" if verdict.usable else "warn", verdict.reason,
        None if verdict.usable else "VMs use TCG (software emulation) with accel = \"auto\"; "
        "accel = \"kvm\" will refuse to start"))
    return results
