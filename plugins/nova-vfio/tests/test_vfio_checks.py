"""nova-vfio's IOMMU check, against synthetic sysfs trees and this machine's real /sys.

The synthetic trees are shaped like real sysfs (``/sys/kernel/iommu_groups/N``);
there is no passthrough hardware on the test machines.
"""

from __future__ import annotations

from pathlib import Path

from nova_vfio.hooks import iommu_check, nova_doctor_checks


def test_groups_present(tmp_path: Path) -> None:
    for group in ("0", "1", "13"):
        (tmp_path / "kernel" / "iommu_groups" / group / "devices").mkdir(parents=True)
    result = iommu_check(tmp_path)
    assert result.status == "ok" and result.summary == "3 groups"


def test_no_groups_says_what_to_change(tmp_path: Path) -> None:
    (tmp_path / "kernel").mkdir()
    result = iommu_check(tmp_path)
    assert result.status == "warn"
    assert "intel_iommu=on iommu=pt" in (result.hint or "")
    assert "amd_iommu=on" in (result.hint or "")


def test_real_sys_never_crashes() -> None:
    checks = {c.name: c for c in nova_doctor_checks()}
    groups = Path("/sys/kernel/iommu_groups")
    has_groups = groups.is_dir() and any(groups.iterdir())
    assert (checks["IOMMU groups"].status == "ok") == has_groups
