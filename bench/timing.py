"""Timing helper shared by the benchmarks."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path


def median_seconds(argv: list[str], runs: int, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> float:
    """Median wall time of ``argv`` over ``runs`` runs, after one warm-up run."""
    subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
