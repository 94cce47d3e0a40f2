"""`nova run --rm` of a capsule through the real CLI: the capsule runs attached to the
``nova`` process (the runtime's ``run``, no conmon); output as it comes, also in
``nova logs``; its exit status; Ctrl-C; a failed start; nothing left behind (the
autouse fixture in conftest checks mounts, cgroups and runtime processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nova_capsule.runtime import run_root


def one_capsule(run_nova, folder: Path, project: str, name: str, command: str,  # noqa: ANN001
                extra: str = "") -> None:
    """A NovaFile in ``folder`` with one busybox capsule running ``command`` (TOML), and the
    image pulled."""
    (folder / "NovaFile").write_text(
        f'project = "{project}"\n[container.{name}]\ncapsule = "test/busybox:1"\n'
        f"{extra}command = {command}\n")
    run_nova("image", "pull", "test/busybox:1", check=True)


@contextmanager
def nova_job(run_nova, folder: Path, name: str) -> Iterator[subprocess.Popen[str]]:  # noqa: ANN001
    """``nova run --rm container NAME`` in the background, its output on pipes; if the
    test fails while it runs, the job is killed and the project taken down."""
    job = subprocess.Popen([sys.executable, "-m", "nova_core.cli.main", "run", "--rm",
                            "container", name], cwd=folder, env=dict(os.environ),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield job
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
            run_nova("down", cwd=folder)


def test_run_rm_streams_output_and_returns_the_exit_status(run_nova, capsule_home: Path,
                                                           tmp_path: Path) -> None:
    one_capsule(run_nova, tmp_path, "stream", "job",
                '["sh", "-c", "echo first; echo oops >&2; sleep 2; echo second; exit 3"]')
    started = time.monotonic()
    with nova_job(run_nova, tmp_path, "job") as job:
        first = job.stdout.readline()
        assert first == "first\n"
        assert job.poll() is None, "the first line came only after the capsule exited"
        assert time.monotonic() - started < 30
        logs = run_nova("logs", "container", "job", "--timestamps", cwd=tmp_path, check=True)
        assert "first" in logs.stdout and "oops" in logs.stderr, logs  # logged as it came
        assert "second" not in logs.stdout
        rest, err = job.communicate(timeout=60)
    assert rest == "second\n" and "oops" in err
    assert job.returncode == 3
    listing = json.loads(run_nova("ls", "--json", cwd=tmp_path, check=True).stdout)
    assert listing == []  # --rm removed it
    containers = run_root(capsule_home) / "crun"  # crun's state: one folder per container
    assert not containers.is_dir() or not any(containers.iterdir())




def test_run_rm_refuses_an_instance_that_already_exists(run_nova, capsule_home: Path,
                                                        tmp_path: Path) -> None:
    """--rm would remove it afterwards, started or stopped, with its writable layer."""
    one_capsule(run_nova, tmp_path, "kept", "web", '["sh", "-c", "echo up; sleep 300"]')
    run_nova("up", cwd=tmp_path, check=True)
    try:
        # refused at once, not waiting for it to stop (the timeout would raise)
        done = run_nova("run", "--rm", "container", "web", cwd=tmp_path, timeout=20)
        assert done.returncode == 1, done
        assert "container.web already exists (running)" in done.stderr, done.stderr
        assert "nova down web" in done.stderr and "Traceback" not in done.stderr
        rows = json.loads(run_nova("ls", "--json", cwd=tmp_path, check=True).stdout)
        assert [(r["name"], r["state"]) for r in rows] == [("web", "running")]
        run_nova("stop", "container", "web", cwd=tmp_path, check=True)
        done = run_nova("run", "--rm", "container", "web", cwd=tmp_path)
        assert "container.web already exists (stopped)" in done.stderr, done.stderr
        rows = json.loads(run_nova("ls", "--json", cwd=tmp_path, check=True).stdout)
        assert [(r["name"], r["state"]) for r in rows] == [("web", "stopped")]
    finally:
        run_nova("down", cwd=tmp_path)


def test_ctrl_c_stops_and_removes_the_capsule(run_nova, capsule_home: Path,
                                              tmp_path: Path) -> None:
    one_capsule(run_nova, tmp_path, "ctrlc", "long",
                '["sh", "-c", "trap \'echo terminated; exit 0\' TERM; echo started; '
                'while true; do sleep 0.1; done"]', "stop_timeout = 5\n")
    with nova_job(run_nova, tmp_path, "long") as job:
        assert job.stdout.readline() == "started\n"
        job.send_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
        out, err = job.communicate(timeout=60)
    assert job.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert "terminated" in out  # stopped with SIGTERM, its last words still relayed
    assert json.loads(run_nova("ls", "--json", cwd=tmp_path, check=True).stdout) == []


def test_a_failed_start_is_a_clear_error_and_removes_the_capsule(run_nova, capsule_home: Path,
                                                                 tmp_path: Path) -> None:
    one_capsule(run_nova, tmp_path, "failing", "bad", '["/no/such/program"]')
    done = run_nova("run", "--rm", "container", "bad", cwd=tmp_path)
    assert done.returncode == 1
    assert "/no/such/program" in done.stderr and "not found" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(run_nova("ls", "--json", cwd=tmp_path, check=True).stdout) == []
    capsules = capsule_home / "drivers" / "capsule" / "capsules" / "failing"
    assert not capsules.exists()  # the writable layer and bundle went with it
