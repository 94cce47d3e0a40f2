"""A capsule run attached to the ``nova`` process (``nova run --rm``): no conmon.

The runtime's ``run`` is a child of ``nova``; this relays the capsule's stdout and
stderr as they come and appends them to the capsule's log in conmon's k8s-file
format (``nova logs`` works the same during the run), records the exit code where
conmon would, and cleans up as the exit hook does. A capsule that must outlive the
command (``nova up``, ``nova run`` without ``--rm``) keeps its conmon.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from nova_capsule.capsules import CapsuleFiles, CapsuleLock, CapsuleMeta, teardown
from nova_capsule.runtime import Runtime
from nova_core.drivers.compute import AttachedRun
from nova_core.drivers.models import LogLine, ResourceStatus

LONGEST_LINE = 64 * 1024  # longer output without a newline is relayed in pieces, as conmon does


class CapsuleRun(AttachedRun):
    """One attached run of a capsule (see the module's docstring)."""

    def __init__(self, nova_home: Path, files: CapsuleFiles, meta: CapsuleMeta,
                 runtime: Runtime, run_id: str, process: subprocess.Popen[bytes],
                 status: ResourceStatus) -> None:
        self.status = status
        self._nova_home = nova_home
        self._files = files
        self._meta = meta
        self._runtime = runtime
        self._run_id = run_id
        self._process = process
        self._drained = False
        self._code: int | None = None

    def output(self) -> Iterator[LogLine]:
        """Relay and log each line of stdout and stderr until both are closed."""
        if self._drained:
            return
        assert self._process.stdout is not None and self._process.stderr is not None
        streams = {self._process.stdout.fileno(): "stdout",
                   self._process.stderr.fileno(): "stderr"}
        pending = dict.fromkeys(streams, b"")
        with open(self._files.log, "ab") as log:
            while streams:
                ready, _, _ = select.select(list(streams), [], [])
                for fd in ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:  # closed: what is left is a last line without a newline
                        if pending[fd]:
                            yield _logged(log, streams[fd], pending[fd])
                        del streams[fd]
                        continue
                    *lines, rest = (pending[fd] + chunk).split(b"\n")
                    while len(rest) > LONGEST_LINE:
                        lines.append(rest[:LONGEST_LINE])
                        rest = rest[LONGEST_LINE:]
                    pending[fd] = rest
                    for line in lines:
                        yield _logged(log, streams[fd], line)
        self._drained = True
        self._process.stdout.close()
        self._process.stderr.close()

    def wait(self) -> int:
        """The exit status; the first call records it and cleans up after the run."""
        if self._code is not None:
            return self._code
        for _ in self.output():  # unread output is still logged (and the pipes never fill)
            pass
        code = self._process.wait()
        files = self._files
        with CapsuleLock(self._nova_home, self._meta.id):
            if files.is_latest_run(self._run_id):
                files.record_exit(self._meta.id, code)
            if files.is_current_run(self._run_id):  # else nova stopped it and cleaned up
                teardown(self._runtime, self._meta.id, files)
        self._code = code
        return code


def _logged(log: IO[bytes], stream: str, raw: bytes) -> LogLine:
    """Append one line to the log as conmon writes it; the line for the caller."""
    now = time.time_ns()
    stamp = (datetime.fromtimestamp(now // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
             + f".{now % 10**9:09d}+00:00")
    log.write(f"{stamp} {stream} F ".encode() + raw + b"\n")
    log.flush()
    return LogLine(text=raw.decode(errors="replace"), stream=stream,  # type: ignore[arg-type]
                   timestamp=datetime.fromtimestamp(now / 10**9, UTC))
