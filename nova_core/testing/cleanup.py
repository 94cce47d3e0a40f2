"""Cleanup helpers for tests and benchmarks, without pytest (benchmarks import them too)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nova_core.names import home_digest


def remove_run_folders(home: Path) -> None:
    """Remove ``/run/nova-HASH`` and ``/run/nova-*-HASH`` of ``home``, never crossing a mount
    (whatever a failed test left mounted stays, for the test's own leak checks to report)."""
    digest = home_digest(home)
    for folder in [Path("/run") / f"nova-{digest}", *Path("/run").glob(f"nova-*-{digest}")]:
        if not folder.is_dir() or os.path.ismount(folder):
            continue
        if not any(os.path.ismount(root) for root, _dirs, _files in os.walk(folder)):
            shutil.rmtree(folder, ignore_errors=True)
