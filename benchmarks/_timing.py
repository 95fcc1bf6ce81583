"""Shared timing helpers for the benchmark scripts (not part of the package API)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def time_ms(fn: Callable[[], object], warmup: int = 3, iters: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    a = np.array(samples)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "mean_ms": float(a.mean()),
        "iters": iters,
    }


def save(name: str, results: dict, table: str) -> None:
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(table + "\n")
    print(table)


def bench_p50(path: Path, provider: str = "cpu", batch: int = 1, iterations: int = 200) -> float:
    """p50 ms of one file, `resnest-deploy bench` in a process of its own (each backend alone)."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "resnest_deploy.cli", "bench", str(path), "-b", str(batch)]
    args += ["-n", str(iterations), "--provider", provider, "--json"]
    rows = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    return float(rows[0]["p50_ms"])


def interleaved_p50(
    files: dict[str, Path], rounds: int = 3, **bench: object
) -> dict[str, dict[str, float | list[float]]]:
    """Every file timed ``rounds`` times, the files taking turns (A B C A B C ...), so a slow spell
    of a shared machine falls on all of them; the median of the rounds, and the rounds."""
    seen: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(rounds):
        for name, path in files.items():
            seen[name].append(bench_p50(path, **bench))  # type: ignore[arg-type]
    return {name: {"p50_ms": float(np.median(v)), "rounds": v} for name, v in seen.items()}
