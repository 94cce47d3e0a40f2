"""The host's processes by command line (``/proc/PID/cmdline``; processes that exit
meanwhile, kernel threads and zombies are skipped): how supervised daemons are found,
and how tests and benchmarks check what a command left running."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def command_lines() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process that can be read."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if raw:
                yield int(entry), raw.decode(errors="replace").rstrip("\0").split("\0")


def find_processes(programs: tuple[str, ...], marker: str,
                   without: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """(pid, program) of processes running one of ``programs`` (by basename, or a
    basename prefix ending in ``*``; ``"*"`` is any program) whose command line contains
    ``marker`` and none of the arguments ``without``."""
    found = []
    for pid, argv in command_lines():
        program = os.path.basename(argv[0])
        if any(program == p or (p.endswith("*") and program.startswith(p[:-1]))
               for p in programs) and marker in "\0".join(argv) \
                and not any(arg in argv for arg in without):
            found.append((pid, program))
    return found
