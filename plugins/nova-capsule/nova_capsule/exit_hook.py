"""Run by conmon when a capsule's main process exits (``--exit-command``).

Honours the restart policy (``always``, ``unless-stopped``, ``on-failure``)
unless Nova itself stopped the capsule, and otherwise cleans up (runtime state,
mounts, cgroup) and records the capsule as stopped in Nova's state. A short
process: nothing of Nova stays resident per capsule.

    python -m nova_capsule.exit_hook NOVA_HOME PROJECT NAME RUN_ID

RUN_ID names the start that launched this conmon: a hook whose run has since
been replaced (stopped and started again, or removed) does nothing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

RESTART_BACKOFF_MAX = 10.0


def main(argv: list[str]) -> int:
    """Entry point: never fails loudly (the capsule may be removed while this runs)."""
    try:
        return _handle(Path(argv[0]), argv[1], argv[2], argv[3])
    except Exception:  # noqa: BLE001 - conmon only logs our status; nothing to report to
        return 0


def _handle(nova_home: Path, project: str, name: str, run_id: str) -> int:
    # light imports only: this runs once per capsule exit
    from nova_capsule.capsules import CapsuleLock, capsule_files, capsule_id
    from nova_capsule.runtime import run_root

    if not run_root(nova_home).is_dir():  # everything was torn down (e.g. after a reboot)
        return 0
    files = capsule_files(nova_home, project, name)
    if not files.is_current_run(run_id):
        return 0
    meta = files.read()
    code = files.exit_code(meta.id)
    restart = (meta.restart in ("always", "unless-stopped") or
               (meta.restart == "on-failure" and code not in (0, None)))
    if restart:  # wait outside the lock, so that a stop meanwhile is not held up
        time.sleep(min(0.1 * 2 ** min(meta.restarts + 1, 10), RESTART_BACKOFF_MAX))
    with CapsuleLock(nova_home, capsule_id(project, name), create=False):
        if not files.is_current_run(run_id):  # stopped, restarted or removed meanwhile
            return 0
        return _after_exit(nova_home, project, name, restart, code)


def _after_exit(nova_home: Path, project: str, name: str, restart: bool, code: int | None) -> int:
    from nova_capsule.capsules import capsule_files, exit_command, teardown
    from nova_capsule.runtime import find_runtime, launch_with_conmon, run_root

    files = capsule_files(nova_home, project, name)
    meta = files.read()
    runtime = find_runtime(meta.runtime, nova_home)
    if restart:
        meta.restarts += 1
        files.write(meta)
        runtime.remove(meta.id)
        new_run = os.urandom(8).hex()
        files.run_id.write_text(new_run)
        (files.root / "conmon.pid").unlink(missing_ok=True)
        try:
            launch_with_conmon(runtime, meta.id, files.root, files.log, files.exits,
                               run_root(nova_home) / "sock",
                               exit_command=exit_command(nova_home, project, name, new_run))
            runtime.call("start", meta.id)
        except Exception as error:  # noqa: BLE001 - recorded for the user, then cleaned up
            files.run_id.unlink(missing_ok=True)
            teardown(runtime, meta.id, files)
            _record(nova_home, project, name, "stopped", f"restart {meta.restarts} failed: {error}")
            return 0
        _record(nova_home, project, name, "running", f"restarted ({meta.restarts})")
        return 0
    teardown(runtime, meta.id, files)
    _record(nova_home, project, name, "stopped", f"exited with code {code}")
    return 0


def _record(nova_home: Path, project: str, name: str, state: str, detail: str) -> None:
    from nova_core.state.store import Store

    store = Store(nova_home)
    try:
        if store.resource(project, "container", name) is not None:
            with store.transaction() as conn:
                store.set_state(conn, project, "container", name, state, detail)
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
