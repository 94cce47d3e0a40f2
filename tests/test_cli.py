"""Exit codes and messages of the CLI for bad input and bad environments."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest
from nova_test_helpers import REPO

QUICKSTART = str(REPO / "examples" / "quickstart" / "NovaFile")


@pytest.mark.parametrize("args", [
    ("bogus",), ("ls", "--jsn"), ("stop", "vm"), ("down", "-p", "../../etc/x"),
    ("ls", "-p", "a b"), ("logs", "pod", "x"),
])
def test_usage_errors_exit_2(run_nova, args: tuple[str, ...]) -> None:
    done = run_nova(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Usage:" in done.stderr


def test_ps_and_list_answer_as_ls_without_being_listed(run_nova) -> None:
    """docker/podman users type ``ps``, incus/virsh users ``list``."""
    listed = run_nova("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    for alias in ("ps", "list"):
        done = run_nova(alias, "--json")
        assert done.returncode == 0 and done.stdout == listed.stdout, done.stderr
    commands = run_nova("--help").stdout.split("Commands:", 1)[1].split()
    assert "ls" in commands and "ps" not in commands and "list" not in commands


def test_no_lock_file_is_made_outside_nova_home(run_nova, tmp_path: Path) -> None:
    run_nova("down", "-p", f"../../{tmp_path.name}/evil")
    assert not (tmp_path / "evil.lock").exists()


def test_bad_environment_is_a_clear_error(run_nova) -> None:
    timeout = run_nova("up", "-f", QUICKSTART, env={"NOVA_LOCK_TIMEOUT": "abc"})
    assert timeout.returncode == 1 and "NOVA_LOCK_TIMEOUT='abc' is not a number" in timeout.stderr
    home = run_nova("up", "-f", QUICKSTART, env={"NOVA_HOME": "/proc/no-such-place"})
    assert home.returncode == 1 and "check NOVA_HOME" in home.stderr
    for done in (timeout, home):
        assert "Traceback" not in done.stderr and "unexpected" not in done.stderr


def test_validate_json_is_json_on_every_path(run_nova) -> None:
    done = run_nova("validate", "--json", "-f", "/no/such/NovaFile")
    assert done.returncode == 1
    assert json.loads(done.stdout)["valid"] is False


def test_quickstart_round_trip(run_nova, nova_home: Path, tmp_path: Path) -> None:
    """The README's main job, with the image scripts/setup.sh imports (a real capsule)."""
    import time

    from nova_capsule.testing import busybox_layer

    tarball = tmp_path / "busybox.tar.gz"
    tarball.write_bytes(busybox_layer())
    run_nova("image", "import", str(tarball), "local/busybox", check=True)
    try:
        up = run_nova("up", "-f", QUICKSTART)
        assert up.returncode == 0, up.stderr
        assert (nova_home / "drivers/local/quickstart/data/data").is_dir()
        assert "up to date" in run_nova("up", "-f", QUICKSTART, check=True).stdout
        listing = json.loads(run_nova("ls", "--json", check=True).stdout)
        assert sorted((i["name"], i["state"]) for i in listing) == [("hello", "running"),
                                                                     ("web", "running")]
        ticks = nova_home / "drivers/local/quickstart/data/data/ticks"
        deadline = time.monotonic() + 10
        while not ticks.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ticks.read_text().strip()  # the capsule writes into the named volume
        logs = run_nova("logs", "container", "hello", check=True).stdout
        assert logs == "hello from hello\n"
        served = subprocess.run(["busybox", "wget", "-qO-", "http://127.0.0.1:8480/ticks"],
                                capture_output=True, text=True, timeout=10)
        assert served.returncode == 0 and served.stdout.splitlines()[0] == \
            ticks.read_text().splitlines()[0]  # the published port serves the shared volume
        by_name = run_nova("exec", "container", "web", "--", "ping", "-c1", "-W2", "hello",
                           check=True)
        assert "1 packets received" in by_name.stdout
        paused = run_nova("pause", "container", "web", check=True)
        assert paused.stdout == "container.web: paused\n"
        listing = json.loads(run_nova("ls", "--json", check=True).stdout)
        assert ("web", "paused") in [(i["name"], i["state"]) for i in listing]
        with pytest.raises(OSError):  # httpd is frozen: no answer (busybox wget -T crashes here)
            urllib.request.urlopen("http://127.0.0.1:8480/ticks", timeout=2).read()
        twice = run_nova("pause", "container", "web")
        assert twice.returncode == 1 and "is paused, not running" in twice.stderr
        resumed = run_nova("resume", "container", "web", check=True)
        assert resumed.stdout == "container.web: running\n"
        with urllib.request.urlopen("http://127.0.0.1:8480/ticks", timeout=10) as answer:
            assert answer.read().strip()
    finally:
        down = run_nova("down", "--volumes", "-f", QUICKSTART)
        import shutil

        from nova_capsule.runtime import run_root

        shutil.rmtree(run_root(nova_home), ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert "4 removed" in down.stdout
    assert not (nova_home / "drivers/local/quickstart/data").exists()
