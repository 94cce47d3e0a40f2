"""The warm helper (nova_core.warm): real `nova` processes, a real helper, real signals.

Each test gets its own socket folder (NOVA_WARM_DIR), so its helper serves only it,
and the fixture stops every helper started from that folder, also when the test fails.
Each test runs twice: with pip's Python `nova` script, and with the compiled client
(nova_core/warm_client.c), which this module builds with scripts/build-client.sh.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nova_core.hostinfo.processes import command_lines

BIN = Path(sys.executable).parent
#: pip's `nova` script: renamed nova-python where scripts/setup.sh built the client
PYTHON_NOVA = str(BIN / "nova-python") if (BIN / "nova-python").exists() else str(BIN / "nova")
ROOT = Path(__file__).resolve().parent.parent
HELPER_MARK = "nova_core.warm import serve"


def helpers(warm_dir: Path) -> list[int]:
    """PIDs of helpers started with this socket folder."""
    found = []
    for pid, argv in command_lines():
        if HELPER_MARK not in "\0".join(argv):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"NOVA_WARM_DIR={warm_dir}".encode() in environ:
            found.append(pid)
    return found


def wait_for(predicate, timeout: float = 30.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def compiled_nova(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The compiled client, built for this test run's virtual environment and Python script
    (the build compares its key with Python's and fails if they differ)."""
    output = tmp_path_factory.mktemp("client") / "nova"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-client.sh"), str(BIN.parent), str(output)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return str(output)


class Warm:
    """Runs a real `nova` client with the helper on, in one test's context."""

    def __init__(self, folder: Path, home: Path, client: str = PYTHON_NOVA) -> None:
        self.folder = folder
        self.client = client
        self.env = dict(os.environ, NOVA_WARM="1", NOVA_WARM_DIR=str(folder), NOVA_HOME=str(home),
                        NOVA_WARM_IDLE="120")

    def run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.client, *args], cwd=cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=60)

    def sockets(self) -> list[Path]:
        return sorted(self.folder.glob("*.sock")) if self.folder.is_dir() else []

    def status(self) -> dict[str, object]:
        done = self.run("warm", "status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def started(self) -> dict[str, object]:
        """Run a command the usual way, then wait for the helper it leaves behind."""
        self.run("ls")
        assert wait_for(lambda: self.status()["running"]), "no helper came up"
        return self.status()


@pytest.fixture(params=["python", "compiled"])
def warm(request: pytest.FixtureRequest, tmp_path: Path, nova_home: Path) -> Iterator[Warm]:
    folder = tmp_path / "warm"
    client = request.getfixturevalue("compiled_nova") if request.param == "compiled" else PYTHON_NOVA
    helper = Warm(folder, nova_home, client)
    try:
        yield helper
    finally:
        for pid in helpers(folder):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert wait_for(lambda: not helpers(folder), 10), "a helper survived SIGKILL"


def test_helper_runs_commands_with_the_callers_cwd_env_and_exit_status(
        warm: Warm, tmp_path: Path) -> None:
    first = warm.started()
    assert first["served"] == 0 and Path(str(first["socket"])).parent == warm.folder
    assert Path(f"/proc/{first['pid']}").exists()
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "NovaFile").write_text(f'project = "{name}"\n')
    alpha = warm.run("validate", "--json", cwd=tmp_path / "alpha")
    beta = warm.run("validate", "--json", cwd=tmp_path / "beta")
    assert alpha.returncode == 0 and beta.returncode == 0, (alpha.stderr, beta.stderr)
    assert json.loads(alpha.stdout)["project"] == "alpha"
    assert json.loads(beta.stdout)["project"] == "beta"
    # the caller's environment, not the helper's
    bad = warm.run("down", "-p", "alpha", env={"NOVA_LOCK_TIMEOUT": "abc"})
    assert bad.returncode == 1 and "NOVA_LOCK_TIMEOUT='abc' is not a number" in bad.stderr
    usage = warm.run("ls", "--jsn")
    assert usage.returncode == 2 and "Usage:" in usage.stderr and "Traceback" not in usage.stderr
    after = warm.status()
    assert after["pid"] == first["pid"] and after["served"] == 4
    # the same answers as without the helper
    cold = subprocess.run([warm.client, "validate", "--json"], cwd=tmp_path / "alpha", capture_output=True,
                          text=True, env={**warm.env, "NOVA_WARM": "0"}, timeout=60)
    assert cold.stdout == alpha.stdout and cold.returncode == alpha.returncode
    # help options the helper made beforehand (-h from the group's context settings)
    helped = warm.run("image", "ls", "-h")
    cold_help = subprocess.run([warm.client, "image", "ls", "-h"], capture_output=True, text=True,
                               env={**warm.env, "NOVA_WARM": "0"}, timeout=60)
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: nova image ls")
    assert helped.stdout == cold_help.stdout and "-h, --help" in helped.stdout


@contextmanager
def waiting_for_a_lock(warm: Warm, nova_home: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`nova down -p held` running in the helper, waiting for the project lock the test
    holds; yields the caller's process and the lock file's descriptor (to release it)."""
    locks = nova_home / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / "held.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = subprocess.Popen([warm.client, "down", "-p", "held"], env=warm.env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert wait_for(lambda: warm.status()["busy"] == 1, 20), "the helper got no command"
            # the compiled client waits for the helper itself: it did not fall back to Python
            program = os.path.realpath(f"/proc/{waiting.pid}/exe")
            assert (program == os.path.realpath(warm.client)) == (warm.client != PYTHON_NOVA), program
            time.sleep(0.3)  # the child waits for the lock now
            yield waiting, held.fileno()
        finally:
            waiting.kill()


def test_ctrl_c_reaches_the_command_in_the_helper(warm: Warm, nova_home: Path) -> None:
    warm.started()
    with waiting_for_a_lock(warm, nova_home) as (waiting, _lock):
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=20)
    assert waiting.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    assert wait_for(lambda: warm.status()["busy"] == 0, 10)


def test_changed_code_makes_the_helper_step_down(warm: Warm) -> None:
    """A helper whose imported modules changed on disk refuses work: the command runs in its
    own process (correctly), and the helper exits."""
    first = warm.started()
    import nova_core.warm

    source = Path(nova_core.warm.__file__)
    before = source.stat()
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1))  # same second: .pyc stays valid
    try:
        done = warm.run("ls", "--json")
        assert done.returncode == 0 and json.loads(done.stdout) == []
        assert wait_for(lambda: not Path(f"/proc/{first['pid']}").exists(), 10)
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_helper_steps_down_when_its_code_changes_without_a_command(warm: Warm) -> None:
    """The helper follows its modules' folders through inotify: a change ends it (and its
    spare) at once, not only when the next command asks."""
    first = warm.started()
    assert wait_for(lambda: len(helpers(warm.folder)) == 2, 10), "no spare child forked"
    import nova_core.errors

    source = Path(nova_core.errors.__file__)
    before = source.stat()
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    try:
        assert wait_for(lambda: not Path(f"/proc/{first['pid']}").exists(), 10), \
            "the helper kept serving after its code changed"
        assert wait_for(lambda: not helpers(warm.folder), 10), "the spare outlived it"
        assert warm.sockets() == []
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_stop_and_idle_timeout_end_the_helper(warm: Warm) -> None:
    first = warm.started()
    assert wait_for(lambda: len(helpers(warm.folder)) == 2, 10), "no spare child forked"
    stop = warm.run("warm", "stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert wait_for(lambda: not Path(f"/proc/{first['pid']}").exists(), 10)
    assert wait_for(lambda: not helpers(warm.folder), 10), "the spare child outlived the helper"
    assert warm.sockets() == []
    assert "no warm helper" in warm.run("warm", "status").stdout
    warm.env["NOVA_WARM_IDLE"] = "1"
    second = warm.started()
    assert second["idle_timeout_seconds"] == 1
    assert wait_for(lambda: not Path(f"/proc/{second['pid']}").exists(), 15)
    assert wait_for(lambda: not helpers(warm.folder), 10)
    assert warm.sockets() == []


def test_off_and_other_namespaces_start_no_helper(warm: Warm) -> None:
    off = warm.run("ls", env={"NOVA_WARM": "0"})
    assert off.returncode == 0
    namespace = f"nova-warm-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        inside = subprocess.run(["ip", "netns", "exec", namespace, warm.client, "ls"], env=warm.env,
                                capture_output=True, text=True, timeout=60)
        assert inside.returncode == 0, inside.stderr
        time.sleep(1.0)  # a helper would have been spawned by now
        assert helpers(warm.folder) == [] and warm.sockets() == []
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def test_the_command_finishes_and_reports_if_the_helper_dies(warm: Warm, nova_home: Path) -> None:
    """The child reports its own exit status: a helper killed mid-command costs nothing."""
    first = warm.started()
    with waiting_for_a_lock(warm, nova_home) as (waiting, lock):
        os.kill(int(first["pid"]), signal.SIGKILL)
        assert wait_for(lambda: not Path(f"/proc/{first['pid']}/cmdline").exists()
                        or not Path(f"/proc/{first['pid']}/cmdline").read_bytes(), 10)
        assert waiting.poll() is None  # still waiting for the lock, in the orphaned child
        fcntl.flock(lock, fcntl.LOCK_UN)
        out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert "project held: nothing to remove" in out


def test_children_share_the_helpers_plugins_but_not_its_warnings_or_disabled_set(
        warm: Warm, fake_distribution) -> None:
    """The helper builds the plugin registry once for its children (nova_core.plugins
    preload); a broken plugin's warning is still given by every command, and a caller's
    own NOVA_DISABLE_PLUGINS still decides."""
    fake_distribution("nova-badhooks", {"nova_core.plugins": {"badhooks": "badhooks_mod"}},
                      modules={"badhooks_mod": "raise RuntimeError('boom at import')\n"})
    warning = ("warning: plugin 'badhooks' from nova-badhooks 1.0 failed to load "
               "(RuntimeError: boom at import); its hooks are skipped")
    warm.env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # where the fake distribution lives
    first = warm.started()
    for _ in range(2):  # the second one surely in a child of the warmed-up helper
        done = warm.run("doctor", "--json")
        assert done.returncode == 0, done.stderr
        assert [line for line in done.stderr.splitlines() if line.startswith("warning:")] \
            == [warning]
    quiet = warm.run("doctor", "--json", env={"NOVA_DISABLE_PLUGINS": "nova-badhooks"})
    assert quiet.returncode == 0 and "warning:" not in quiet.stderr, quiet.stderr
    listed = warm.run("plugins", "ls", "--json")
    assert listed.returncode == 0 and warning in listed.stderr
    status = warm.status()
    assert status["pid"] == first["pid"] and status["served"] == 4


LATER_PLUGIN = '''
import os, time
from nova_core.hookspecs import hookimpl

def _slowly(path):
    time.sleep(1.0)
    with open(path, "w") as handle:
        handle.write("done")

@hookimpl
def nova_cli_commands():
    import click
    from nova_core.afterwards import defer
    @click.command("later", help="Print, then defer slow work.")
    def later():
        click.echo("result")
        defer(_slowly, os.environ["LATER_FILE"])
    return [later]
'''


def test_the_caller_gets_the_result_before_deferred_work(warm: Warm, fake_distribution,
                                                          tmp_path: Path) -> None:
    """Work deferred with nova_core.afterwards runs after the caller has its exit status and
    the end of its output (here a second of it); without the helper, before the exit."""
    fake_distribution("nova-later", {"nova_core.plugins": {"later": "later_hooks"}},
                      modules={"later_hooks": LATER_PLUGIN})
    warm.env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    warm.started()
    marker = tmp_path / "later.txt"
    done = warm.run("later", env={"LATER_FILE": str(marker)})  # reads the pipes to their end
    assert done.returncode == 0 and done.stdout == "result\n", done.stderr
    assert not marker.exists(), "the caller waited for the deferred work"
    assert warm.status()["served"] >= 1
    assert wait_for(marker.exists, 20) and marker.read_text() == "done"
    marker.unlink()
    cold = warm.run("later", env={"LATER_FILE": str(marker), "NOVA_WARM": "0"})
    assert cold.returncode == 0 and cold.stdout == "result\n" and marker.read_text() == "done"


def test_a_fast_command_runs_once(warm: Warm, tmp_path: Path) -> None:
    """The caller reads the child's P line before its X line, however fast the child is: a
    ready spare can finish a short command before the helper is done handing it over, and
    a caller that read X first used to run the command a second time itself."""
    (tmp_path / "NovaFile").write_text('project = "quick"\n')
    cold = subprocess.run([warm.client, "validate", "--json"], cwd=tmp_path, capture_output=True,
                          text=True, env={**warm.env, "NOVA_WARM": "0"}, timeout=60)
    first = warm.started()
    for _ in range(30):
        done = warm.run("validate", "--json", cwd=tmp_path)
        assert done.returncode == 0 and done.stdout == cold.stdout, done.stdout
    assert warm.status()["pid"] == first["pid"]


def test_a_package_installed_on_sys_path_makes_the_helper_step_down(warm: Warm, tmp_path: Path) -> None:
    """The key does not hold sys.path's folders: the helper watches them itself, and an entry
    added to one (pip installing a package, a new plugin) ends it; the next command runs
    and starts a helper that sees the new package."""
    site = tmp_path / "site"
    site.mkdir()
    warm.env["PYTHONPATH"] = str(site)
    first = warm.started()
    (site / "late_plugin-1.0.dist-info").mkdir()
    assert wait_for(lambda: not Path(f"/proc/{first['pid']}").exists(), 15), \
        "the helper kept serving after a package was installed"
    done = warm.run("ls", "--json")
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stderr
    assert wait_for(lambda: warm.status()["running"], 30)
    assert warm.status()["pid"] != first["pid"]


def test_the_compiled_client_computes_pythons_key(compiled_nova: str, tmp_path: Path) -> None:
    """The compiled client finds a helper only if it names the key exactly as Python does,
    in every context that goes into it: here the user's groups, umask, HOME and PYTHON*
    variables differ between runs (NOVA_WARM_PRINT_KEY prints the key)."""
    contexts = [
        {},
        {"env": {"PYTHONPATH": str(tmp_path), "PYTHONNOUSERSITE": "1", "HOME": str(tmp_path)}},
        {"umask": 0o077},
        {"extra_groups": [7, 3]},
    ]
    keys = []
    for context in contexts:
        env = {**os.environ, "NOVA_WARM_PRINT_KEY": "1", **context.get("env", {})}
        options = {key: value for key, value in context.items() if key != "env"}
        texts = [subprocess.run([client], env=env, capture_output=True, text=True, timeout=60,
                                check=True, **options).stdout
                 for client in (PYTHON_NOVA, compiled_nova)]
        assert texts[0] == texts[1], context
        keys.append(texts[0])
    assert len(set(keys)) == len(contexts)
    assert "flags=I0E0S0s1P0" in keys[1] and f"env.PYTHONPATH={tmp_path}" in keys[1]
    assert "umask=77" in keys[2] and "groups=[3, 7]" in keys[3]
