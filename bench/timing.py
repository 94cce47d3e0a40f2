"""Timing helper shared by the benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: where scratch_folder makes its folders (see there)
SCRATCH_PARENT = "/var/tmp"


def median_seconds(argv: list[str], runs: int, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> float:
    """Median wall time of ``argv`` over ``runs`` runs, after one warm-up run."""
    return statistics.median(interleaved_seconds({"it": Command(argv, env, cwd)}, runs)["it"])


@dataclass(frozen=True)
class Command:
    """One command line to time, with its environment and folder."""

    argv: list[str]
    env: dict[str, str] | None = None
    cwd: Path | None = None

    def run(self) -> float:
        """Run it once (it must succeed); its wall time in seconds."""
        start = time.perf_counter()
        subprocess.run(self.argv, env=self.env, cwd=self.cwd, capture_output=True, check=True)
        return time.perf_counter() - start


class Timed(Protocol):
    """Anything that runs once and says how long it took (a :class:`Command`, say)."""

    def run(self) -> float: ...


def interleaved_seconds(commands: Mapping[str, Timed], runs: int, pause: float = 0.0,
                        ) -> dict[str, list[float]]:
    """Wall times of each command over ``runs`` rounds, one run of each per round in turn
    (after one untimed warm-up run each), so that the machine's drift over the minutes a
    benchmark takes weighs on all of them alike; ``pause`` seconds of idle before each run,
    as between commands a person types."""
    for command in commands.values():
        command.run()
    samples: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for index in range(runs):
        # each round starts one further along: every command comes first, second... as often
        # (a run right after another one was measured several ms faster here)
        for name in names[index % len(names):] + names[:index % len(names)]:
            time.sleep(pause)
            samples[name].append(commands[name].run())
    return samples


def median_ratio(samples: dict[str, list[float]], ours: str, theirs: str) -> float:
    """The median over rounds of ``ours / theirs`` (rounds from :func:`interleaved_seconds`)."""
    return statistics.median(a / b for a, b in zip(samples[ours], samples[theirs], strict=True))


def samples_in_turns(samplers: Mapping[str, Callable[[], list[float]]], turns: int,
                     per_turn: dict[str, list[float]]) -> dict[str, list[float]]:
    """Call every sampler once per turn, one after the other, ``turns`` times (so that the
    machine's drift within seconds weighs on all alike); return every sample by name, and
    append each call's median to ``per_turn[name]``."""
    samples: dict[str, list[float]] = {name: [] for name in samplers}
    for _ in range(turns):
        for name, sample in samplers.items():
            values = sample()
            samples[name] += values
            per_turn[name].append(statistics.median(values))
    return samples


@contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder for a benchmark's NOVA_HOMEs (up to three levels down). Afterwards
    it is removed, and so are the folders Nova keeps on /run for each of those NOVA_HOMEs
    (runtime state, locks, sockets), which outlive a NOVA_HOME on purpose.

    It is made in /var/tmp, on disk as a user's NOVA_HOME is (/var/lib/nova, or under
    ~/.local/share): /tmp is a tmpfs on many hosts, which would flatter every command that
    writes a record, and on the test hosts, though on the same disk, /tmp made folders 4-5
    times slower than any other folder (205 µs against 35-50 per mkdir).
    """
    from nova_core.testing.cleanup import remove_run_folders

    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_PARENT if os.path.isdir(
        SCRATCH_PARENT) else None))
    try:
        yield folder
    finally:
        for pattern in ("", "*", "*/*", "*/*/*"):
            for home in [folder] if not pattern else folder.glob(pattern):
                if home.is_dir() and not home.is_symlink():
                    remove_run_folders(home)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def warm_helper(nova: list[str], env: dict[str, str], cwd: Path | None = None,
                ) -> Iterator[dict[str, str]]:
    """The environment for timing ``nova`` as users run it: with a warm helper (the default;
    nova_core.warm), a private one in a temporary folder, ready before the first timed run and
    stopped afterwards."""
    folder = tempfile.mkdtemp(prefix="nova-bench-warm-")
    warm_env = dict(env, NOVA_WARM="1", NOVA_WARM_DIR=folder)

    def running() -> bool:
        done = subprocess.run([*nova, "warm", "status", "--json"], env=warm_env, cwd=cwd,
                              capture_output=True, text=True)
        return done.returncode == 0 and json.loads(done.stdout)["running"]

    subprocess.run([*nova, "ls"], env=warm_env, cwd=cwd, capture_output=True)
    deadline = time.monotonic() + 30
    while not running():
        if time.monotonic() > deadline:
            raise SystemExit("the warm helper did not come up within 30 s")
        time.sleep(0.05)
    try:
        yield warm_env
    finally:
        subprocess.run([*nova, "warm", "stop"], env=warm_env, cwd=cwd, capture_output=True)
        deadline = time.monotonic() + 30
        while list(Path(folder).glob("*.sock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(folder, ignore_errors=True)


def helper_rss_kib(nova: list[str], env: dict[str, str]) -> int:
    """RSS of the warm helper serving ``env`` (0 if none runs)."""
    done = subprocess.run([*nova, "warm", "status", "--json"], env=env, capture_output=True,
                          text=True)
    return int(json.loads(done.stdout).get("rss_kib", 0)) if done.returncode == 0 else 0
