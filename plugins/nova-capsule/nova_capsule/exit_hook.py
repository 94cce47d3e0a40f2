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
    from nova_capsule.capsules import CapsuleLock, capsule_id

    with CapsuleLock(nova_home, capsule_id(project, name), create=False):
        return _after_exit(nova_home, project, name, run_id)


def _after_exit(nova_home: Path, project: str, name: str, run_id: str) -> int:
    from nova_capsule.capsules import capsule_files
    from nova_capsule.cgroups import remove_cgroup
    from nova_capsule.runtime import find_runtime, launch_with_conmon, run_root

    files = capsule_files(nova_home, project, name)
    if not files.exists() or not files.run_id.exists() or files.run_id.read_text() != run_id:
        return 0
    meta = files.read()
    runtime = find_runtime(meta.runtime, nova_home)
    code = files.exit_code(meta.id)
    stopped_by_nova = files.stopping.exists()
    wanted = (meta.restart in ("always", "unless-stopped") or
              (meta.restart == "on-failure" and code not in (0, None)))
    if wanted and not stopped_by_nova:
        meta.restarts += 1
        files.write(meta)
        time.sleep(min(0.1 * 2 ** min(meta.restarts, 10), RESTART_BACKOFF_MAX))
        if files.stopping.exists():  # stopped while we waited
            return 0
        runtime.call("delete", "--force", meta.id, check=False)
        new_run = os.urandom(8).hex()
        files.run_id.write_text(new_run)
        launch_with_conmon(runtime, meta.id, files.root, files.log, files.exits,
                           run_root(nova_home) / "sock",
                           exit_command=[sys.executable, "-m", "nova_capsule.exit_hook",
                                         str(nova_home), project, name, new_run])
        runtime.call("start", meta.id)
        _record(nova_home, project, name, "running", f"restarted ({meta.restarts})")
        return 0
    if not stopped_by_nova:
        runtime.call("delete", "--force", meta.id, check=False)
        files.unmount()
        remove_cgroup(meta.id)
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
