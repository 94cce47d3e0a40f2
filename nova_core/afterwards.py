"""Work a command may finish after its caller has the result.

Some of a command's work changes nothing anybody can see any more: deleting a folder
that was already renamed out of the way, say. :func:`defer` queues such work. A
command served by a warm helper (:mod:`nova_core.warm`) runs it after the caller has
its exit status and its output has ended, so ``nova run --rm`` returns without waiting
for it; a command run in its own process runs it at exit, as before.

Deferred work must be safe to lose (a killed process never runs it): whatever it
cleans must also be found and cleaned later by the code that queued it.
"""

from __future__ import annotations

import atexit
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

_pending: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []


def defer(work: Callable[..., Any], *args: Any) -> None:
    """Run ``work(*args)`` once the command's result is out (at the latest at exit)."""
    if not _pending:
        atexit.register(run_pending)
    _pending.append((work, args))


def run_pending() -> None:
    """Run the queued work now, in order; a failure is ignored (see the module's rule)."""
    atexit.unregister(run_pending)
    while _pending:
        work, args = _pending.pop(0)
        try:
            work(*args)
        except Exception:  # noqa: BLE001,S112 - safe to lose by contract
            continue


def take_pending() -> Callable[[], None]:
    """Keep the queued work from running at exit; returns what runs it (for a warm
    helper's child, which runs it once the caller has the exit status)."""
    atexit.unregister(run_pending)
    return run_pending


def discard(folder: Path, trash: Path) -> None:
    """Delete ``folder``: renamed into ``trash`` (a folder on the same filesystem) at once,
    its contents deleted once the command's result is out (:func:`defer`). What a process
    that was killed left in ``trash`` goes with the next discard there. Where renaming
    fails (another filesystem, say) the folder is deleted at once."""
    target = trash / f"{os.getpid()}-{os.urandom(6).hex()}"
    try:
        trash.mkdir(parents=True, exist_ok=True)
        leftovers = [entry for entry in trash.iterdir() if not _alive(entry.name)]
        folder.rename(target)
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in (target, *leftovers):
        defer(shutil.rmtree, entry, True)


def _alive(name: str) -> bool:
    """Whether the process that named a trash entry ``PID-...`` still runs (and so deletes it)."""
    pid = name.partition("-")[0]
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")
