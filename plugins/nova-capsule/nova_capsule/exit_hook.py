"""Run by conmon when a capsule's main process exits (``--exit-command``).

Honours the restart policy (``always``, ``unless-stopped``, ``on-failure``)
unless Nova itself stopped the capsule, and otherwise cleans up (runtime state,
mounts, cgroup) and records the capsule as stopped in Nova's state. A short
process: nothing of Nova stays resident per capsule.

    python -m nova_capsule.exit_hook NOVA_HOME PROJECT NAME
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

RESTART_BACKOFF_MAX = 10.0


def main(argv: list[str]) -> int:
    """Entry point."""
    nova_home, project, name = Path(argv[0]), argv[1], argv[2]
    from nova_capsule.cgroups import remove_cgroup
    from nova_capsule.driver import capsule_files
    from nova_capsule.runtime import find_runtime, launch_with_conmon, run_root

    files = capsule_files(nova_home, project, name)
    if not files.exists():
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
        launch_with_conmon(runtime, meta.id, files.root, files.log, files.exits,
                           run_root(nova_home) / "sock",
                           exit_command=[sys.executable, "-m", "nova_capsule.exit_hook",
                                         str(nova_home), project, name])
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
