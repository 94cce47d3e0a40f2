"""nova-vfio's hooks: ``nova device`` and the passthrough checks of ``nova doctor``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nova_core.hookspecs import hookimpl
from nova_core.hooktypes import CheckResult

CATEGORY = "nova-vfio"
KERNEL_FLAGS = ("boot with intel_iommu=on iommu=pt (Intel) or amd_iommu=on (AMD), and enable "
                "VT-d/AMD-Vi (IOMMU) in the firmware setup")


def iommu_check(sysfs: Path = Path("/sys")) -> CheckResult:
    """Whether the kernel made IOMMU groups (needed for any passthrough)."""
    groups = sysfs / "kernel" / "iommu_groups"
    count = len(list(groups.iterdir())) if groups.is_dir() else 0
    if count:
        return CheckResult(CATEGORY, "IOMMU groups", "ok", f"{count} groups")
    return CheckResult(CATEGORY, "IOMMU groups", "warn", "none: PCI passthrough is not possible",
                       KERNEL_FLAGS)


def interrupt_remapping_check(sysfs: Path = Path("/sys")) -> CheckResult:
    """Interrupt remapping: without it vfio refuses devices unless told it is unsafe."""
    unsafe = sysfs / "module" / "vfio_iommu_type1" / "parameters" / "allow_unsafe_interrupts"
    caps = list((sysfs / "class" / "iommu").glob("*/intel-iommu/ecap"))
    if caps:
        ok = all(int(p.read_text().strip(), 16) & 0x8 for p in caps)  # ecap bit 3: IR
        return CheckResult(CATEGORY, "interrupt remapping", "ok" if ok else "warn",
                           "supported" if ok else "not supported by this IOMMU",
                           None if ok else "a newer platform, or vfio_iommu_type1 "
                                           "allow_unsafe_interrupts=1 (unsafe)")
    if unsafe.exists() and unsafe.read_text().strip() == "Y":
        return CheckResult(CATEGORY, "interrupt remapping", "warn", "unsafe interrupts allowed")
    amd = (sysfs / "class" / "iommu").is_dir() and any((sysfs / "class" / "iommu").iterdir())
    return CheckResult(CATEGORY, "interrupt remapping", "ok" if amd else "info",
                       "AMD-Vi remaps interrupts" if amd else "no IOMMU: nothing to check")


def gpu_checks(root: Path = Path("/")) -> list[CheckResult]:
    """For each GPU: is its IOMMU group isolated (only its own functions, or bridges)?"""
    from nova_vfio.sysfs import PciHost

    host = PciHost(root)
    results = []
    for gpu in (d for d in host.devices() if d.is_gpu):
        name = f"GPU {gpu.address}"
        if gpu.group is None:
            results.append(CheckResult(CATEGORY, name, "warn", "no IOMMU group", KERNEL_FLAGS))
        elif host.isolated(gpu):
            results.append(CheckResult(CATEGORY, name, "ok", f"group {gpu.group} is isolated"
                                       + (" (drives the host console)" if gpu.boot_vga else "")))
        else:
            others = host.strangers(gpu)
            results.append(CheckResult(
                CATEGORY, name, "warn", f"group {gpu.group} also holds {', '.join(others)}",
                "move the card to a slot with its own group, or enable ACS in the firmware "
                "(pcie_acs_override is unsafe)"))
    return results


@hookimpl
def nova_cli_commands() -> list[Any]:
    """``nova device``."""
    from nova_vfio.cli import device_group

    return [device_group]


@hookimpl
def nova_doctor_checks() -> list[CheckResult]:
    """IOMMU groups, vfio-pci, interrupt remapping, and each GPU's group."""
    from nova_vfio.driver import sysfs_root

    root = sysfs_root()
    sysfs = root / "sys"
    module = (sysfs / "module" / "vfio_pci").exists() or \
        (sysfs / "bus" / "pci" / "drivers" / "vfio-pci").exists()
    return [iommu_check(sysfs), CheckResult(
        CATEGORY, "vfio-pci", "ok" if module else "info",
        "loaded" if module else "not loaded (nova device bind loads it when needed)"),
        interrupt_remapping_check(sysfs), *gpu_checks(root)]
