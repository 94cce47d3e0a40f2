"""nova_core.afterwards: work deferred until a command's result is out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nova_core import afterwards


def test_deferred_work_runs_in_order_and_a_failure_does_not_stop_the_rest(tmp_path: Path) -> None:
    done: list[str] = []
    afterwards.defer(done.append, "first")
    afterwards.defer(lambda: 1 / 0)
    afterwards.defer(done.append, "third")
    assert done == []
    afterwards.run_pending()
    assert done == ["first", "third"]
    afterwards.run_pending()  # nothing twice
    assert done == ["first", "third"]


def test_without_a_helper_deferred_work_runs_at_exit(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    script = ("import sys; from nova_core.afterwards import defer; "
              f"defer(open({str(marker)!r}, 'w').write, 'done'); sys.exit(3)")
    done = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert done.returncode == 3 and marker.read_text() == "done"


def test_discard_moves_the_folder_away_at_once_and_deletes_it_later(tmp_path: Path) -> None:
    folder = tmp_path / "capsule"
    (folder / "upper" / "etc").mkdir(parents=True)
    (folder / "upper" / "etc" / "hostname").write_text("c1\n")
    trash = tmp_path / "trash"
    dead = trash / "999999999-abc"  # left by a process that no longer runs
    alive = trash / f"{os.getppid()}-def"  # being deleted by a process that still runs
    for entry in (dead, alive):
        (entry / "x").mkdir(parents=True)
    afterwards.discard(folder, trash)
    assert not folder.exists()
    moved = [e for e in trash.iterdir() if e.name.startswith(f"{os.getpid()}-")]
    assert len(moved) == 1 and (moved[0] / "upper" / "etc" / "hostname").read_text() == "c1\n"
    afterwards.run_pending()
    assert sorted(trash.iterdir()) == [alive]


def test_discard_across_filesystems_deletes_at_once(tmp_path: Path) -> None:
    """/dev/shm is a tmpfs, tmp_path is not: the rename cannot work there."""
    folder = tmp_path / "capsule"
    (folder / "sub").mkdir(parents=True)
    shm = Path("/dev/shm") / f"nova-test-trash-{os.getpid()}"
    try:
        afterwards.discard(folder, shm)
        assert not folder.exists()
        assert list(shm.iterdir()) == []
    finally:
        subprocess.run(["rm", "-rf", str(shm)], check=False)
    afterwards.discard(tmp_path / "never-made", tmp_path / "trash")  # nothing to do: no error
