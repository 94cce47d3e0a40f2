"""nova-vfio's hooks: host checks for ``nova doctor``."""

from __future__ import annotations

from pathlib import Path

from nova_core.hookspecs import hookimpl
from nova_core.hooktypes import CheckResult

CATEGORY = "nova-vfio"


def iommu_check(sysfs: Path = Path("/sys")) -> CheckResult:
    """Whether the kernel made IOMMU groups (needed for any passthrough)."""
    groups = sysfs / "kernel" / "iommu_groups"
    count = len(list(groups.iterdir())) if groups.is_dir() else 0
    if count:
        return CheckResult(CATEGORY, "IOMMU groups", "ok", f"{count} groups")
    return CheckResult(CATEGORY, "IOMMU groups", "warn", "none: PCI passthrough is not possible",
                       "enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on iommu=pt "
                       "(Intel) or amd_iommu=on (AMD)")


@hookimpl
def nova_doctor_checks() -> list[CheckResult]:
    """IOMMU groups and the vfio-pci module."""
    module = Path("/sys/module/vfio_pci").exists() or Path("/sys/bus/pci/drivers/vfio-pci").exists()
    return [iommu_check(), CheckResult(
        CATEGORY, "vfio-pci", "ok" if module else "info",
        "loaded" if module else "not loaded (nova device bind loads it when needed)")]
