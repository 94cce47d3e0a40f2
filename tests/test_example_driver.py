"""The third-party example from docs/writing-a-driver.md, registered and driven by `nova`."""

from __future__ import annotations

import os
import time
from pathlib import Path

from nova_test_helpers import REPO, write_novafile

EXAMPLE = REPO / "examples" / "nova-process-driver"


def test_a_third_party_driver_runs_end_to_end(fake_distribution, project_dir: Path, run_nova,
                                              nova_home: Path, monkeypatch) -> None:
    fake_distribution("nova-process", {"nova_core.compute": {
        "process": "nova_process.driver:ProcessDriver"}})
    monkeypatch.setenv("PYTHONPATH", f"{EXAMPLE}{os.pathsep}{os.environ['PYTHONPATH']}")
    write_novafile(project_dir, """
        project = "third"
        [container.ticker]
        driver = "process"
        command = ["sh", "-c", "echo started in $PWD; echo $GREETING; exec sleep 60"]
        env.GREETING = "hello-from-env"
    """)
    plan = run_nova("plan", cwd=project_dir)
    assert "sh\n" in plan.stdout.replace("        ", "") and "[process]" in plan.stdout
    up = run_nova("up", cwd=project_dir)
    assert up.returncode == 0, up.stderr
    pid = int((nova_home / "drivers/process/third/ticker/pid").read_text())
    assert Path(f"/proc/{pid}").exists()
    for _ in range(50):
        logs = run_nova("logs", "container", "ticker", cwd=project_dir).stdout
        if "hello-from-env" in logs:
            break
        time.sleep(0.1)
    assert logs.splitlines() == [f"started in {project_dir}", "hello-from-env"]
    down = run_nova("down", cwd=project_dir)
    assert down.returncode == 0, down.stderr
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert not (nova_home / "drivers/process/third/ticker").exists()
