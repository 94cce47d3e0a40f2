#!/usr/bin/env python3
"""How much time does the `nova` CLI add over starting Python at all?

Measures, side by side with the floor `python3 -c pass` (same interpreter):
  * nova --version
  * nova ls with 0 and with 1000 recorded instances
  * nova plan of a 200-resource NovaFile (100 volumes on the built-in `local`
    driver, 100 capsules on the test-only `fake` compute driver)
each once as a cold Python (NOVA_WARM=0, what the targets are about) and ls and plan
again with the warm helper users get by default (docs/architecture.md; with the compiled
client where scripts/setup.sh built it, and pip's Python script beside it), and prints
medians, the overhead over the floor and whether the targets hold (--version within
60 ms of the floor, ls at 1000 instances within 150 ms).

    .venv/bin/python bench/cli_latency.py [--runs 30]

Everything runs in a temporary NOVA_HOME; nothing on the host is touched.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from timing import median_seconds, scratch_folder, warm_helper

TARGETS = {"nova --version": 0.060, "nova ls (1000 instances)": 0.150}


def fill_state(home: Path, count: int) -> None:
    """Record ``count`` instances directly in the state database."""
    from nova_core.state.store import Store

    store = Store(home)
    with store.transaction() as conn:
        for index in range(count):
            store.put_resource(conn, f"bench{index % 10}", "container", f"c{index}", "capsule",
                               "{}", "h", "running", data={"pid": str(1000 + index)})
    store.close()


def fake_drivers_on_path(root: Path) -> str:
    """A test-only distribution that registers the fake compute driver as `fake`."""
    info = root / "nova_bench_fakes-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nova-bench-fakes\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[nova_core.compute]\nfake = nova_core.testing.fakes:FakeComputeDriver\n")
    return str(root)


def write_big_novafile(folder: Path) -> None:
    """200 resources."""
    lines = ['project = "bench"\n']
    for index in range(100):
        lines.append(f'[volume.v{index}]\nsize = "1Gi"\n')
    for index in range(100):
        lines.append(f'[container.c{index}]\ndriver = "fake"\ncapsule = "busybox"\n'
                     f'volumes = ["v{index}:/data"]\nmemory = "64Mi"\n')
    (folder / "NovaFile").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    script = Path(sys.executable).parent / "nova"  # the console script users run
    nova = [str(script)] if script.exists() else [sys.executable, "-m", "nova_core.cli.main"]
    with scratch_folder("nova-bench-") as tmp_path:
        env = dict(os.environ, NOVA_HOME=str(tmp_path / "home0"), NOVA_WARM="0")
        results: list[tuple[str, float]] = []
        floor = median_seconds([sys.executable, "-c", "pass"], args.runs, env)
        results.append(("python3 -c pass (floor)", floor))
        results.append(("nova --version", median_seconds([*nova, "--version"], args.runs, env)))
        results.append(("nova ls (0 instances)", median_seconds([*nova, "ls"], args.runs, env)))
        python_nova = script.parent / "nova-python"  # pip's script, beside the compiled client
        with warm_helper(nova, env) as warm_env:
            results.append(("nova ls (0), warm helper",
                            median_seconds([*nova, "ls"], args.runs, warm_env)))
            if python_nova.exists():
                results.append(("nova ls (0), warm, Python client",
                                median_seconds([str(python_nova), "ls"], args.runs, warm_env)))
        home = tmp_path / "home1000"
        fill_state(home, 1000)
        env1000 = dict(env, NOVA_HOME=str(home))
        results.append(("nova ls (1000 instances)",
                        median_seconds([*nova, "ls"], args.runs, env1000)))
        with warm_helper(nova, env1000) as warm_env:
            results.append(("nova ls (1000), warm helper",
                            median_seconds([*nova, "ls"], args.runs, warm_env)))
        project = tmp_path / "project"
        project.mkdir()
        write_big_novafile(project)
        env_plan = dict(env, PYTHONPATH=fake_drivers_on_path(tmp_path / "site"))
        results.append(("nova plan (200 resources)",
                        median_seconds([*nova, "plan"], max(5, args.runs // 3), env_plan,
                                       cwd=project)))
        with warm_helper(nova, env_plan, project) as warm_env:
            results.append(("nova plan (200), warm helper",
                            median_seconds([*nova, "plan"], max(5, args.runs // 3), warm_env,
                                           cwd=project)))
    print(f"{'command':<33} {'median':>9} {'over floor':>11} {'ratio':>7}  target")
    failed = False
    for name, seconds in results:
        over = seconds - floor
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"<= +{target * 1000:.0f} ms: " + ("met" if over <= target else "MISSED")
            failed |= over > target
        print(f"{name:<33} {seconds * 1000:7.1f}ms {over * 1000:+9.1f}ms {seconds / floor:6.2f}x  "
              f"{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
