"""nova-capsule registers and reports the programs capsules will need."""

from __future__ import annotations

import shutil
from pathlib import Path

from nova_capsule.hooks import nova_doctor_checks


def test_runtime_check_follows_path(tmp_path: Path, monkeypatch) -> None:
    checks = {c.name: c for c in nova_doctor_checks()}
    has_runtime = bool(shutil.which("crun") or shutil.which("runc"))
    assert (checks["OCI runtime"].status == "ok") == has_runtime
    monkeypatch.setenv("PATH", str(tmp_path))
    empty = {c.name: c for c in nova_doctor_checks()}
    assert empty["OCI runtime"].status == "fail"
    assert empty["OCI runtime"].hint == "apt-get install crun (or runc)"
    assert empty["program conmon"].status == "fail"


def test_overlayfs_check_matches_the_kernel() -> None:
    listed = "overlay" in Path("/proc/filesystems").read_text().split()
    checks = {c.name: c for c in nova_doctor_checks()}
    assert (checks["overlayfs"].status == "ok") == listed
