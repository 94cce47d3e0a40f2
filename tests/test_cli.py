"""Exit codes and messages of the CLI for bad input and bad environments."""

from __future__ import annotations

import json
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


def test_quickstart_round_trip(run_nova, nova_home: Path) -> None:
    up = run_nova("up", "-f", QUICKSTART)
    assert up.returncode == 0, up.stderr
    assert (nova_home / "drivers/local/quickstart/data/data").is_dir()
    assert "up to date" in run_nova("up", "-f", QUICKSTART, check=True).stdout
    assert run_nova("ls", check=True).stdout.startswith("no instances")
    down = run_nova("down", "--volumes", "-f", QUICKSTART, check=True)
    assert "2 removed" in down.stdout
    assert not (nova_home / "drivers/local/quickstart/data").exists()
