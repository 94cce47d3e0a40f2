#!/usr/bin/env python3
"""Capsule start-up: Nova against raw crun and against podman, side by side.

1. Command to exit of /bin/true in a throwaway container, median of --runs rounds; each
   round runs each of these once, in turn, after a pause of a quarter second (as between
   commands a person types; see "Method" below):
   * raw `crun run` of the same bundle Nova runs (its config.json and overlay root
     filesystem, prepared and cleaned up by Nova outside the clock; the issue's baseline),
   * raw `crun run` of `crun spec`'s default bundle on the plain busybox rootfs (no user
     namespace, seccomp or overlay: a lower floor, for reference),
   * `nova run --rm container t` (NovaFile with capsule = the image), as users run it
     (with the warm helper, docs/architecture.md),
   * `podman run --rm --network none IMAGE /bin/true` (Debian's podman 4.3) with the same
     crun Nova uses: on a hybrid-cgroup host podman's own crun refuses to run, so podman
     is handed Nova's crun wrapper (--runtime); a capsule also has a private, loopback-only
     network, hence --network none.
   Then, for reference: the `crun spec` bundle back to back (no pause) and Nova with
   NOVA_WARM=0 (a cold Python).
2. Twenty long-running capsules: `nova up` against `podman-compose up -d` of the
   equivalent compose file (each then taken down, untimed).
3. Host memory a running capsule costs beyond its workload: RSS of the monitor
   (conmon) per capsule; and the warm helper's RSS (one per user, not per capsule).

Method: the first write to a cgroup.procs file after a quiet spell waits for a whole RCU
grace period in the kernel (13-20 ms here; crun makes that write for every container),
and writes in the grace period after it do not. Runs back to back, less than a grace
period apart, therefore measure crun about 13 ms faster than anybody runs it once; the
pause keeps every tool's runs apart, and the back-to-back floor is printed beside it.
Rounds interleave the tools so that the machine's drift weighs on all alike, each round
starting with the next tool (a run straight after another tool's was several ms faster
here); the ratio and the difference are medians over rounds. NOVA_HOME is on disk in
/var/tmp, as a user's /var/lib/nova is (timing.scratch_folder).

Targets from the issue: Nova at most 30 ms over raw crun; at most 0.3 of podman.

    sudo .venv/bin/python bench/capsule_start.py [--runs 20]

Needs root, crun, conmon, docker-registry and busybox-static (scripts/setup.sh
installs them) and, for the peer columns, podman and podman-compose
(apt-get install podman podman-compose); without them those columns are skipped.
Everything runs on 127.0.0.1 in temporary folders and is removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nova_capsule.layers import extract_layer
from nova_capsule.runtime import find_runtime
from nova_capsule.testing import LocalRegistry, busybox_layer, image_config, push_image
from timing import (
    Command,
    Timed,
    helper_rss_kib,
    interleaved_seconds,
    median_ratio,
    median_seconds,
    scratch_folder,
    warm_helper,
)

from nova_core.hostinfo.processes import find_processes

PODMAN_LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
PAUSE = 0.25  # seconds between timed runs (see "Method")


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def conmon_pids(marker: str) -> list[int]:
    """PIDs of conmon processes whose command line contains ``marker``."""
    return [pid for pid, _ in find_processes(("conmon",), marker)]


def crun_floor(tmp: Path, layer: bytes) -> Command:
    """Raw `crun run` of a bundle with the busybox rootfs running /bin/true."""
    blob = tmp / "layer.tar.gz"
    blob.write_bytes(layer)
    bundle = tmp / "bundle"
    bundle.mkdir()
    extract_layer(blob, bundle / "rootfs")
    home = tmp / "crun-home"  # made, so that scratch_folder finds its /run folder
    home.mkdir()
    runtime = find_runtime("crun", home)
    subprocess.run([runtime.binary, "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=["/bin/true"])
    config["linux"]["cgroupsPath"] = "/nova-bench/floor"
    (bundle / "config.json").write_text(json.dumps(config))
    return Command(runtime.argv("run", "-b", str(bundle), "nova-bench-floor"))


class NovasBundle:
    """Raw `crun run` of the very bundle Nova makes for a throwaway capsule (the issue's
    "same bundle"): its config.json (user namespace, capabilities, seccomp, masked paths,
    cgroup) and its overlay root filesystem with idmapped layers. Only the runtime's run
    is timed: before it, untimed, Nova mounts the root filesystem and writes the config
    as `nova run --rm` does, then a quarter second of idle; after it, untimed, Nova
    unmounts and removes the cgroup. crun is started as Nova starts it on this host
    (Runtime.popen: no wrapper programs)."""

    def __init__(self, home: Path, image: str, folder: Path) -> None:
        from nova_capsule.driver import CapsuleDriver

        from nova_core.drivers.base import DriverContext
        from nova_core.drivers.models import ContainerSpec, ResourceKind, ResourceRef

        self.driver = CapsuleDriver("capsule", DriverContext(nova_home=home))
        self.spec = ContainerSpec(ref=ResourceRef(project="benchraw", kind=ResourceKind.CONTAINER,
                                                  name="t"),
                                  driver="capsule", base_dir=folder, image=image,
                                  command=["/bin/true"])
        self.driver.create(self.spec)

    def run(self) -> float:
        """One timed `crun run` of the bundle; its wall time in seconds."""
        prepared = self.driver._prepare_run(self.spec, throwaway=True)  # noqa: SLF001
        assert prepared is not None
        files, meta, runtime, _ = prepared
        try:
            # the preparation's cgroup priming (cgroups.prime_migration) would spare crun
            # the RCU grace period (see "Method"); idle it away, as before every timed run
            time.sleep(PAUSE)
            start = time.perf_counter()
            process = runtime.popen("run", "--bundle", str(files.root), meta.id,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            if process.wait() != 0:
                raise RuntimeError(f"crun run of Nova's bundle exited {process.returncode}")
            return time.perf_counter() - start
        finally:
            self.driver._teardown(runtime, meta, files)  # noqa: SLF001

    def close(self) -> None:
        self.driver.delete(self.spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--many", type=int, default=20, help="capsules for the `up` comparison")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (capsules need it)", file=sys.stderr)
        return 1
    nova = [str(Path(sys.executable).parent / "nova")]
    # pip's script, where scripts/setup.sh put the compiled client in its place
    python_nova = Path(sys.executable).parent / "nova-python"
    podman = shutil.which("podman")
    compose = shutil.which("podman-compose")
    results: dict[str, float] = {}
    samples: dict[str, list[float]] = {}
    with scratch_folder("nova-bench-") as tmp:  # also removes what Nova kept under /run
        registry = LocalRegistry(tmp / "registry").start()
        home = tmp / "home"
        home.mkdir()
        (home / "config.toml").write_text(f'[images]\ndefault_registry = "{registry.address}"\n')
        env = dict(os.environ, NOVA_HOME=str(home))
        project = tmp / "project"
        project.mkdir()
        try:
            layer = busybox_layer()
            push_image(registry.address, "bench/busybox", "1", [layer],
                       image_config(["/bin/sh"], layers=[layer]))
            image = f"{registry.address}/bench/busybox:1"
            floor = crun_floor(tmp, layer)
            (project / "NovaFile").write_text(
                f'project = "bench"\n[container.t]\ncapsule = "{image}"\ncommand = ["/bin/true"]\n')
            subprocess.run([*nova, "image", "pull", image], env=dict(env, NOVA_WARM="0"),
                           check=True, capture_output=True)
            run_rm = [*nova, "run", "--rm", "container", "t"]
            runtime = find_runtime("crun", home).executable
            same = NovasBundle(home, image, project)
            compared: dict[str, Timed] = {"raw crun run": same,
                                          "raw crun run, crun spec bundle": floor}
            if podman:
                subprocess.run([podman, "pull", "--tls-verify=false", image], check=True,
                               capture_output=True)
                compared["podman run --rm"] = Command(
                    [podman, "run", "--rm", *PODMAN_LIMITS, "--network", "none",
                     "--runtime", runtime, image, "/bin/true"])
            with warm_helper(nova, env, project) as warm_env:
                compared["nova run --rm"] = Command(run_rm, warm_env, project)
                if python_nova.exists():
                    compared["nova run --rm, Python client"] = Command(
                        [str(python_nova), *run_rm[1:]], warm_env, project)
                samples = interleaved_seconds(compared, args.runs, PAUSE)
                helper_kib = helper_rss_kib(nova, warm_env)
                many_up, many_rss = nova_many(nova, warm_env, project, image, args.many)
            results.update((name, statistics.median(times)) for name, times in samples.items())
            results["raw crun run, crun spec bundle, back to back"] = median_seconds(floor.argv,
                                                                                     args.runs)
            results["nova run --rm, NOVA_WARM=0"] = statistics.median(interleaved_seconds(
                {"cold": Command(run_rm, dict(env, NOVA_WARM="0"), project)},
                max(5, args.runs // 2), PAUSE)["cold"])
            results[f"nova up ({args.many} capsules)"] = many_up
            if podman and compose:
                results[f"podman-compose up ({args.many})"] = compose_many(
                    compose, tmp, image, args.many, runtime)
        finally:
            if "same" in locals():
                same.close()
            registry.stop()
            for parent in [*Path("/sys/fs/cgroup").glob("*/nova-bench"),  # the floor's, emptied
                           *Path("/sys/fs/cgroup").glob("nova-bench")]:   # by crun (v1, v2)
                with contextlib.suppress(OSError):
                    parent.rmdir()
            if podman:
                subprocess.run([podman, "rmi", "-f", f"{registry.address}/bench/busybox:1"],
                               capture_output=True)
    client = "the compiled client" if python_nova.exists() else "pip's Python script"
    print(f"nova is {client} ({nova[0]})\n")
    print(f"{'what':<46} {'median':>10}")
    for name, seconds in results.items():
        print(f"{name:<46} {seconds * 1000:8.1f}ms")
    over = statistics.median(ours - crun for ours, crun in
                             zip(samples["nova run --rm"], samples["raw crun run"], strict=True))
    print(f"\nnova run --rm over raw crun: {over * 1000:+.1f} ms (target <= +30 ms: "
          f"{'met' if over <= 0.030 else 'MISSED'})")
    if "podman run --rm" in samples:
        ratio = median_ratio(samples, "nova run --rm", "podman run --rm")
        print(f"nova run --rm / podman run --rm: {ratio:.2f} (target <= 0.30: "
              f"{'met' if ratio <= 0.30 else 'MISSED'})")
    key = f"podman-compose up ({args.many})"
    if key in results:
        print(f"nova up / podman-compose up ({args.many} capsules): "
              f"{results[f'nova up ({args.many} capsules)'] / results[key]:.2f}")
    print(f"host RSS per running capsule (conmon): {many_rss:.0f} KiB "
          f"(target <= 2048 KiB: {'met' if many_rss <= 2048 else 'MISSED'}); "
          "Nova keeps no other process per capsule")
    print(f"the warm helper (one per user and context, not per capsule; exits after 10 idle "
          f"minutes): {helper_kib / 1024:.0f} MiB RSS")
    return 0


def nova_many(nova: list[str], env: dict[str, str], project: Path, image: str,
              count: int) -> tuple[float, float]:
    """`nova up` of ``count`` sleeping capsules; returns (seconds, mean conmon RSS KiB)."""
    text = ['project = "many"']
    for index in range(count):
        text.append(f'[container.s{index}]\ncapsule = "{image}"\nstop_timeout = 2\n'
                    "command = [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]")
    folder = project.parent / "many"
    folder.mkdir()
    (folder / "NovaFile").write_text("\n".join(text) + "\n")
    start = time.perf_counter()
    subprocess.run([*nova, "up"], env=env, cwd=folder, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    pids = conmon_pids(env["NOVA_HOME"])
    rss = statistics.mean(rss_kib(pid) for pid in pids) if pids else 0.0
    subprocess.run([*nova, "down"], env=env, cwd=folder, check=True, capture_output=True)
    return seconds, rss


def compose_many(compose: str, tmp: Path, image: str, count: int, runtime: str) -> float:
    """`podman-compose up -d` of the same ``count`` services."""
    folder = tmp / "compose"
    folder.mkdir()
    lines = ["services:"]
    for index in range(count):
        lines += [f"  s{index}:", f"    image: {image}",
                  "    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]",
                  "    ulimits: {nofile: {soft: 1024, hard: 1024}, nproc: {soft: 1024, hard: 1024}}",
                  "    network_mode: none"]
    (folder / "docker-compose.yml").write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    subprocess.run([compose, f"--podman-run-args=--runtime={runtime}", "up", "-d"], cwd=folder,
                   check=True, capture_output=True)
    seconds = time.perf_counter() - start
    subprocess.run([compose, "down", "-t", "2"], cwd=folder, capture_output=True)
    return seconds


if __name__ == "__main__":
    sys.exit(main())
