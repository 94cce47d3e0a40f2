"""`nova run --rm` of a capsule through the real CLI: output as it comes, exit status,
nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from nova_capsule.runtime import run_root


def test_run_rm_streams_output_and_returns_the_exit_status(run_nova, capsule_home: Path,
                                                           tmp_path: Path) -> None:
    (tmp_path / "NovaFile").write_text(
        'project = "stream"\n[container.job]\ncapsule = "test/busybox:1"\n'
        'command = ["sh", "-c", "echo first; echo oops >&2; sleep 2; echo second; exit 3"]\n')
    run_nova("image", "pull", "test/busybox:1", check=True)
    started = time.monotonic()
    job = subprocess.Popen([sys.executable, "-m", "nova_core.cli.main", "run", "--rm",
                            "container", "job"], cwd=tmp_path, env=dict(os.environ),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = job.stdout.readline()
        assert first == "first\n"
        assert job.poll() is None, "the first line came only after the capsule exited"
        assert time.monotonic() - started < 30
        rest, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert rest == "second\n" and "oops" in err
    assert job.returncode == 3
    listing = json.loads(run_nova("ls", "--json", cwd=tmp_path, check=True).stdout)
    assert listing == []  # --rm removed it
    containers = run_root(capsule_home) / "crun"  # crun's state: one folder per container
    assert not containers.is_dir() or not any(containers.iterdir())
