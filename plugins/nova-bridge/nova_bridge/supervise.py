"""A daemon kept alive by a two-line ``sh`` loop: no Python process stays resident.

The loop restarts the daemon a second after it dies; :meth:`Supervised.start` is
called again by ``nova up`` (through a driver's status) if the loop itself died.
dnsmasq (one per network) and nova-quic's overlay endpoint run this way.

Processes are recognised by a ``marker`` in their command line (a configuration
file's path), so a daemon whose loop was killed is found and stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from nova_core.hostinfo import processes

LOOP = ("trap 'kill -TERM $child 2>/dev/null; wait $child; exit 0' TERM INT\n"
        "while :; do \"$@\" & child=$!; wait $child; sleep 1; done\n")


def alive(pid: int, marker: str) -> bool:
    """True if process ``pid`` runs with ``marker`` in its command line."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def exited(pid: int) -> bool:
    """True once process ``pid`` is gone or a zombie.

    A dying process loses its command line (its memory) before it closes its files, so a
    killed daemon can still hold its ports while :func:`alive` already says no; only the
    zombie state, or no process at all, means its sockets are closed.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].startswith(("Z", "X"))


def wait_exited(pids: list[int], timeout: float) -> bool:
    """Wait until every process in ``pids`` has :func:`exited`; False on timeout."""
    deadline = time.monotonic() + timeout
    while not all(map(exited, pids)):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def find_processes(marker: str, program: str | None = None,
                   without: tuple[str, ...] = ()) -> list[int]:
    """PIDs whose command line holds ``marker`` and none of the arguments ``without``
    (and whose argv[0] is ``program``)."""
    return [pid for pid, _ in processes.find_processes((program or "*",), marker, without)]


class Supervised:
    """One supervised daemon: ``argv`` run by the loop, its PID file and log."""

    def __init__(self, argv: list[str], marker: str, program: str, pidfile: Path,
                 log: Path, label: str) -> None:
        self.argv = argv
        self.marker = marker  # in the daemon's (and the loop's) command line
        self.program = program  # the daemon's argv[0] base name, to tell it from the loop
        self.pidfile = pidfile
        self.log = log
        self.label = label  # "nova-dns", "nova-quic": the loop's $0

    def supervisor_pid(self) -> int | None:
        """The loop's PID, if it is alive."""
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid, self.marker) else None

    def child_pid(self) -> int | None:
        """The running daemon's PID, if any."""
        supervisor = self.supervisor_pid()
        if supervisor is None:
            return None
        try:
            children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        except OSError:
            return None
        return next((int(c) for c in children if self._is_daemon(int(c))), None)

    def _is_daemon(self, pid: int) -> bool:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            return False
        return os.path.basename(argv0).decode(errors="replace") == self.program and \
            alive(pid, self.marker)

    def strays(self) -> list[int]:
        """Daemons with this marker, whoever started them."""
        return find_processes(self.marker, self.program)

    def kill_strays(self) -> None:
        """SIGKILL daemons left by a loop that was killed, and wait until they have exited
        (so their ports are free for the next one)."""
        killed = self.strays()
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_exited(killed, 2.0)

    def start(self) -> subprocess.Popen[bytes]:
        """Start the loop (after removing strays); the caller waits for readiness."""
        self.kill_strays()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            process = subprocess.Popen(["sh", "-c", LOOP, self.label, *self.argv],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)
        self.pidfile.write_text(str(process.pid))
        return process

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the loop and the daemon (SIGTERM, then SIGKILL), and any stray."""
        supervisor = self.supervisor_pid()
        if supervisor is not None:
            child = self.child_pid()
            os.kill(supervisor, signal.SIGTERM)
            both = [pid for pid in (supervisor, child) if pid]
            if not wait_exited(both, timeout):
                for pid in both:
                    if alive(pid, self.marker):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                wait_exited(both, timeout)
            try:
                os.waitpid(supervisor, os.WNOHANG)  # reap it if it was ours
            except ChildProcessError:
                pass
        self.kill_strays()
        self.pidfile.unlink(missing_ok=True)
