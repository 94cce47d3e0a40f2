"""The OCI runtime (crun or runc) and the conmon monitor that keeps each capsule.

crun 1.8 refuses to run on a v1/v2 *hybrid* cgroup host ("drop all controllers
from cgroupv2"); there Nova runs it through a two-line wrapper that unmounts the
cgroup2 mount in a private mount namespace first, which makes crun use plain v1
(see HOST-FACTS.md). A runtime Nova starts itself (``nova run --rm``) gets that
namespace from a thread of the ``nova`` process instead (:meth:`Runtime.popen`).
runc works directly.

conmon (Debian's package) holds the capsule's stdio, writes the log with
timestamps and the exit code, and survives the ``nova`` process: no Python stays
resident per capsule.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova_capsule.cgroups import host_cgroup_layout
from nova_core.errors import NovaError
from nova_core.files import replace_file
from nova_core.names import home_digest

RUNTIMES = ("crun", "runc")


def run_root(nova_home: Path) -> Path:
    """Per-NOVA_HOME folder on /run for runtime state (cleared by a reboot, as it should be)."""
    return Path("/run") / f"nova-{home_digest(nova_home)}"


@dataclass(frozen=True)
class Runtime:
    """One OCI runtime, with its state under ``state_root``."""

    name: str
    binary: str
    executable: str  # what conmon runs: the binary, or the hybrid wrapper
    state_root: Path
    wrapper_argv: tuple[str, ...] = ()  # the wrapper's own command line, without its script
    hybrid_unmount: str = ""  # the cgroup2 mount the wrapper drops ("" without a wrapper)

    def _wrapped(self, args: tuple[str, ...]) -> bool:
        """Whether ``args`` need the hybrid-cgroup wrapper: only the commands that make
        cgroups (``create``, ``run``); crun's others work on hybrid hosts as they are, and
        skipping the wrapper's three execs saves each about 5 ms."""
        return bool(self.wrapper_argv) and bool(args) and args[0] in ("create", "run")

    def argv(self, *args: str) -> list[str]:
        """A runtime command line, through the hybrid-cgroup wrapper's command line where
        it is needed (the wrapper's script is for conmon, which takes one program)."""
        if self._wrapped(args):
            return [*self.wrapper_argv, *self._bare(args)]
        return self._bare(args)

    def _bare(self, args: tuple[str, ...]) -> list[str]:
        """The runtime's own command line, without any wrapper."""
        return [self.binary, f"--root={self.state_root}", *args]

    def popen(self, *args: str, **options: Any) -> subprocess.Popen[bytes]:
        """Start a runtime command as a child of this process. Where the wrapper is needed,
        this process does what it does: a short-lived thread takes a private copy of the
        mount namespace, unmounts the cgroup2 mount there and starts the runtime, which
        keeps that namespace. That spares the wrapper's three programs (about 3 ms)."""
        command = self._bare(args)
        if not self._wrapped(args):
            return subprocess.Popen(command, **options)
        from nova_core.hostinfo.threads import in_private_mounts

        return in_private_mounts(lambda: subprocess.Popen(command, **options),
                                 unmount=[self.hybrid_unmount])

    def call(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a runtime command; a failure is a NovaError with the runtime's message."""
        done = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            raise NovaError(f"{self.name} {args[0]} failed: {message[-1] if message else done.returncode}")
        return done

    def knows(self, capsule_id: str) -> bool:
        """False when the runtime surely has no such container (crun and runc keep each
        container's state in a folder named after it under ``--root``): no call needed."""
        return (self.state_root / capsule_id).exists()

    def remove(self, capsule_id: str) -> None:
        """Delete the container (forced, whatever its state) if the runtime knows it."""
        if self.knows(capsule_id):
            self.call("delete", "--force", capsule_id, check=False)

    def state(self, capsule_id: str) -> dict[str, object] | None:
        """The runtime's view of the container, or None if it does not know it."""
        if not self.knows(capsule_id):
            return None
        done = self.call("state", capsule_id, check=False)
        if done.returncode != 0:
            return None
        try:
            return json.loads(done.stdout)
        except ValueError:
            return None


def find_runtime(preferred: str, nova_home: Path) -> Runtime:
    """The runtime to use, preferring ``preferred``; a clear error if none is installed."""
    order = [preferred] + [r for r in RUNTIMES if r != preferred]
    for name in order:
        binary = shutil.which(name)
        if binary is None:
            continue
        state_root = run_root(nova_home) / name
        state_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        executable, wrapper, unmount = binary, (), ""
        layout = host_cgroup_layout()
        if name == "crun" and layout.mode == "hybrid" and layout.v2_mount:
            wrapper, unmount = _hybrid_wrapper_argv(layout.v2_mount), layout.v2_mount
            executable = str(_hybrid_wrapper(binary, wrapper, run_root(nova_home)))
        return Runtime(name, binary, executable, state_root, wrapper, unmount)
    raise NovaError(f"no OCI runtime found (wanted {preferred})",
                    hint="apt-get install crun (or runc)")


def _hybrid_wrapper_argv(unified: str) -> tuple[str, ...]:
    """What runs the runtime (the words after it) in a private mount namespace without
    the cgroup2 mount, where crun uses plain v1."""
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'umount {shlex.quote(unified)} 2>/dev/null; exec "$@"', "crun")


def _hybrid_wrapper(binary: str, argv: tuple[str, ...], root: Path) -> Path:
    """The wrapper as a script (for conmon, which takes one program): ``argv`` then the
    runtime and the script's arguments."""
    script = root / "crun-hybrid"
    text = ("#!/bin/sh\n"
            "# crun refuses hybrid cgroups: drop the cgroup2 mount in a private mount namespace\n"
            f"exec {shlex.join(argv)} {shlex.quote(binary)} \"$@\"\n")
    if not script.exists() or script.read_text() != text:
        replace_file(script, text, mode=0o755)
    return script


def launch_with_conmon(runtime: Runtime, capsule_id: str, bundle: Path, log: Path,
                       exit_dir: Path, socket_dir: Path, exit_command: list[str] | None,
                       timeout: float = 30.0) -> int:
    """Create the container under a new conmon; return the container's PID.

    conmon reports the outcome of ``runtime create`` on the sync pipe; a failure
    carries the runtime's message.
    """
    conmon = shutil.which("conmon")
    if conmon is None:
        raise NovaError("conmon is not installed", hint="apt-get install conmon")
    for folder in (exit_dir, socket_dir):
        folder.mkdir(parents=True, exist_ok=True)
    (exit_dir / capsule_id).unlink(missing_ok=True)
    argv = [conmon, "--api-version", "1", "-c", capsule_id, "-u", capsule_id, "-n", capsule_id,
            "-r", runtime.executable, "-b", str(bundle), "-p", str(bundle / "pidfile"),
            "-l", f"k8s-file:{log}", "--exit-dir", str(exit_dir),
            "--socket-dir-path", str(socket_dir), "--conmon-pidfile", str(bundle / "conmon.pid"),
            "--log-level", "error", "--runtime-arg", f"--root={runtime.state_root}"]
    if exit_command:
        argv += ["--exit-command", exit_command[0]]
        for arg in exit_command[1:]:
            argv += ["--exit-command-arg", arg]
    sync_read, sync_write = os.pipe()
    try:
        env = dict(os.environ, _OCI_SYNCPIPE=str(sync_write))
        process = subprocess.Popen(argv, env=env, pass_fds=(sync_write,), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        os.close(sync_write)
        sync_write = -1
        process.wait(timeout)
        deadline = time.monotonic() + timeout
        data = b""
        while not data.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([sync_read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(sync_read, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        if sync_write >= 0:
            os.close(sync_write)
        os.close(sync_read)
    if not data:
        raise NovaError(f"conmon did not report the creation of {capsule_id} "
                        f"(exit status {process.returncode})")
    answer = json.loads(data.splitlines()[0])
    pid = int(answer.get("data", -1))
    if pid <= 0:
        raise NovaError(f"{runtime.name} could not create the capsule: "
                        f"{answer.get('message', 'no message').strip()}")
    return pid


def launch_attached(runtime: Runtime, capsule_id: str, bundle: Path,
                    timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """``runtime run`` the container as a child of this process, its stdout and stderr on
    pipes (no conmon: for one-shot runs whose caller stays, ``nova run --rm``).

    Returns once the container was created (the runtime wrote its pid file), so that a
    failure to create it (a missing executable, say) is an error here, as it is for
    :func:`launch_with_conmon`, and not the exit status of a run. The runtime runs in
    its own session: the terminal's Ctrl-C reaches the caller, which decides.
    """
    pidfile = bundle / "pidfile"
    pidfile.unlink(missing_ok=True)
    process = runtime.popen("run", "--bundle", str(bundle), f"--pid-file={pidfile}", capsule_id,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    # polled each millisecond (creating takes 10-20). Sleeping until inotify said the file
    # was written (or a pidfd that crun exited) made `nova run --rm` 11 ms slower here, 40
    # runs in turns: the runtime's create, not this loop, got slower with this process idle.
    while not pidfile.exists():
        if process.poll() is not None and not pidfile.exists():
            message = process.stderr.read().decode(errors="replace").strip().splitlines()
            process.stdout.close()
            process.stderr.close()
            raise NovaError(f"{runtime.name} could not create the capsule: "
                            f"{message[-1] if message else f'exit status {process.returncode}'}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise NovaError(f"{runtime.name} did not create {capsule_id} within {timeout:.0f} s")
        time.sleep(0.001)
    return process
