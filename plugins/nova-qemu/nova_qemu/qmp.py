"""A small synchronous QMP client over a unix socket (no daemon, no extra package).

Reads the greeting, negotiates capabilities, matches replies to requests by ``id``
and sets asynchronous events aside (``events``), as QEMU's protocol asks.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from pathlib import Path
from typing import Any

from nova_core.errors import NovaError


class QmpError(NovaError):
    """QEMU refused a command, or its QMP socket is unusable."""


class Qmp:
    """One QMP connection; use as a context manager."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._buffer = b""
        self.sock = self._connect()
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
                return sock
            except OSError as error:
                sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"QEMU's QMP socket {self.path} does not answer: {error}",
                                   hint="nova logs vm NAME shows what QEMU said") from error
                time.sleep(0.02)

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError as error:
                raise QmpError(f"QEMU did not answer on {self.path} within {self.timeout:.0f}s") \
                    from error
            except OSError as error:  # QEMU went away mid-conversation
                raise QmpError(f"QEMU's QMP socket {self.path} failed: {error}") from error
            if not chunk:
                raise QmpError(f"QEMU closed its QMP socket {self.path}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run a command; its ``return`` value, or a :class:`QmpError`."""
        ident = next(self._ids)
        message: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            message["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as error:
            raise QmpError(f"QEMU's QMP socket {self.path} failed: {error}") from error
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != ident:
                continue
            if "error" in reply:
                raise QmpError(f"QEMU refused {command}: {reply['error'].get('desc', reply)}")
            return reply.get("return")

    def run_job(self, command: str, job_id: str, timeout: float = 120.0, **arguments: Any) -> None:
        """Start a job (``snapshot-save``...), wait until it concludes, dismiss it."""
        self.execute(command, **{"job-id": job_id, **arguments})
        deadline = time.monotonic() + timeout
        while True:
            jobs = {job["id"]: job for job in self.execute("query-jobs")}
            job = jobs.get(job_id)
            if job is None or job["status"] == "concluded":
                error = job.get("error") if job else None
                if job is not None:
                    self.execute("job-dismiss", id=job_id)
                if error:
                    raise QmpError(f"QEMU's {command} failed: {error}")
                return
            if time.monotonic() > deadline:
                raise QmpError(f"QEMU's {command} did not finish within {timeout:.0f}s")
            time.sleep(0.02)

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
