"""The ``process`` compute driver: a container's ``command`` as a host process.

No isolation at all: it exists to show, end to end, how a third party writes,
packages and tests a Nova driver (docs/writing-a-driver.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from nova_core.drivers.compute import ComputeDriver
from nova_core.drivers.models import (
    DriverOptions,
    InstanceSpec,
    Lifecycle,
    LogLine,
    LogRequest,
    RenderedDetail,
    ResourceKind,
    ResourceStatus,
    SnapshotInfo,
)
from nova_core.errors import NovaError


class ProcessOptions(DriverOptions):
    """Keys this driver adds to ``[container.NAME]`` tables."""

    workdir_from_novafile: bool = True  # run in the NovaFile's folder (else in the state folder)


class ProcessDriver(ComputeDriver):
    """Runs ``command`` detached, logs to a file, records the PID."""

    instance_kinds: ClassVar[frozenset[ResourceKind]] = frozenset({ResourceKind.CONTAINER})
    options_model: ClassVar[type[DriverOptions]] = ProcessOptions

    def _dir(self, spec: InstanceSpec) -> Path:
        return self.context.driver_dir(self.name) / spec.ref.project / spec.ref.name

    def _argv(self, spec: InstanceSpec) -> list[str]:
        if not spec.command:
            raise NovaError(f"{spec.ref.key}: the process driver needs a command",
                            hint='add command = "..." to the table')
        return list(spec.command)

    def _pid(self, spec: InstanceSpec) -> int | None:
        try:
            pid = int((self._dir(spec) / "pid").read_text())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None
        return None if state == "Z" else pid

    def render(self, spec: InstanceSpec) -> list[RenderedDetail]:
        """The argv that will run."""
        return [RenderedDetail(title="argv", body="\n".join(self._argv(spec)), format="argv")]

    def create(self, spec: InstanceSpec) -> ResourceStatus:
        """Make the state folder and remember the argv."""
        folder = self._dir(spec)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "argv.json").write_text(json.dumps(self._argv(spec)))
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED)

    def start(self, spec: InstanceSpec) -> ResourceStatus:
        """Start the process in its own session, output appended to ``output.log``."""
        if self._pid(spec) is None:
            folder = self._dir(spec)
            options = spec.options
            cwd = spec.base_dir if getattr(options, "workdir_from_novafile", True) else folder
            with open(folder / "output.log", "ab") as log:
                process = subprocess.Popen(self._argv(spec), stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, cwd=cwd,
                                           env={**os.environ, **spec.env}, start_new_session=True)
            (folder / "pid").write_text(str(process.pid))
        return self.status(spec)

    def stop(self, spec: InstanceSpec, timeout: float) -> ResourceStatus:
        """SIGTERM the process group, SIGKILL after ``timeout``."""
        pid = self._pid(spec)
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._pid(spec) is not None and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.02)
            if self._pid(spec) is not None:
                os.killpg(pid, signal.SIGKILL)
            _reap(pid, block=True)
        return self.status(spec)

    def delete(self, spec: InstanceSpec) -> None:
        """Stop it if needed and remove its folder (fine if it never existed)."""
        self.stop(spec, 1.0)
        shutil.rmtree(self._dir(spec), ignore_errors=True)

    def status(self, spec: InstanceSpec) -> ResourceStatus:
        """running (with the PID), stopped, created or missing."""
        folder = self._dir(spec)
        if not folder.is_dir():
            return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
        pid = self._pid(spec)
        if pid is not None:
            return ResourceStatus(ref=spec.ref, state=Lifecycle.RUNNING, data={"pid": str(pid)})
        started = (folder / "pid").exists()
        return ResourceStatus(ref=spec.ref, state=Lifecycle.STOPPED if started else Lifecycle.CREATED)

    def snapshot(self, spec: InstanceSpec, name: str) -> SnapshotInfo:
        """A copy of the output so far (a process has no disk to snapshot)."""
        folder = self._dir(spec)
        (folder / "snapshots").mkdir(exist_ok=True)
        log = folder / "output.log"
        target = folder / "snapshots" / f"{name}.log"
        shutil.copyfile(log, target) if log.exists() else target.write_bytes(b"")
        return SnapshotInfo(ref=spec.ref, name=name, created_at=datetime.now(UTC),
                            size=target.stat().st_size)

    def restore_snapshot(self, spec: InstanceSpec, name: str) -> ResourceStatus:
        """Put the saved output back (the process itself keeps running)."""
        saved = self._dir(spec) / "snapshots" / f"{name}.log"
        if not saved.exists():
            raise NovaError(f"{spec.ref.key} has no snapshot {name}")
        shutil.copyfile(saved, self._dir(spec) / "output.log")
        return self.status(spec)

    def delete_snapshot(self, spec: InstanceSpec, name: str) -> None:
        """Remove the saved output."""
        (self._dir(spec) / "snapshots" / f"{name}.log").unlink(missing_ok=True)

    def logs(self, spec: InstanceSpec, request: LogRequest) -> Iterator[LogLine]:
        """Lines of ``output.log``; with ``follow``, keep reading while it runs."""
        log = self._dir(spec) / "output.log"
        if not log.exists():
            return
        with open(log, errors="replace") as handle:
            lines = handle.read().splitlines()
            if request.tail is not None:
                lines = lines[-request.tail:] if request.tail else []
            for line in lines:
                yield LogLine(text=line)
            while request.follow and self._pid(spec) is not None:
                line = handle.readline()
                if line:
                    yield LogLine(text=line.rstrip("\n"))
                else:
                    time.sleep(0.1)


def _reap(pid: int, block: bool = False) -> None:
    """Collect the exit status if the process is our child (it is, in tests)."""
    try:
        os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        pass
