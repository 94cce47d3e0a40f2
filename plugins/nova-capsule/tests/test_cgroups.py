"""The cgroup helpers of nova-capsule, on the host's real cgroup hierarchies."""

from __future__ import annotations

import os
from pathlib import Path

from nova_capsule.cgroups import own_procs_file, prime_migration


def test_own_procs_file_is_the_cgroup_this_process_is_in() -> None:
    procs = own_procs_file()
    assert procs is not None and procs.name == "cgroup.procs"
    assert str(os.getpid()) in procs.read_text().split()


def test_migration_head_start_writes_this_pid_and_moves_nothing(tmp_path: Path) -> None:
    """The head start is a write of this process's pid to its own cgroup.procs: shown on a
    stand-in file (what was written), then on the real one (the process stays put). What
    it saves is timing, which bench/capsule_start.py measures, not this test."""
    stand_in = tmp_path / "cgroup.procs"
    stand_in.write_text("")
    done = prime_migration(stand_in)
    assert done is not None and done.acquire(timeout=10)
    assert stand_in.read_text() == str(os.getpid())
    before = Path("/proc/self/cgroup").read_text()
    real = prime_migration()
    assert real is not None and real.acquire(timeout=10)
    assert Path("/proc/self/cgroup").read_text() == before
    assert str(os.getpid()) in own_procs_file().read_text().split()  # type: ignore[union-attr]
