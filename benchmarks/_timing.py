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


#: run in a process of its own: every file open on one backend, called in turn (A B C A B C ...)
_PAIRED = """
import contextlib, json, sys, time
import numpy as np
from resnest_deploy.loaders import open_runner
from resnest_deploy.runners.options import RunnerOptions
backend, batch, calls, warmup, size, *files = sys.argv[1:]
x = np.random.default_rng(0).standard_normal((int(batch), 3, int(size), int(size))).astype(np.float32)
with contextlib.ExitStack() as opened:
    runners = [opened.enter_context(open_runner(f, RunnerOptions(backend=backend))) for f in files]
    for _ in range(int(warmup)):
        for r in runners:
            r.infer(x)
    times = [[] for _ in runners]
    for _ in range(int(calls)):
        for r, seen in zip(runners, times):
            start = time.perf_counter()
            r.infer(x)
            seen.append((time.perf_counter() - start) * 1e3)
print(json.dumps(times))
"""


def paired_times(
    files: dict[str, Path], backend: str, batch: int, calls: int, warmup: int = 20
) -> dict[str, np.ndarray]:
    """ms per call of every file, timed in one process that calls them in turn, so drift and the
    process's own luck (thread placement, memory layout) fall on all of them alike."""
    import subprocess
    import sys

    import onnx

    first = onnx.load(next(iter(files.values())), load_external_data=False)
    size = first.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    args = [sys.executable, "-c", _PAIRED, backend, str(batch), str(calls), str(warmup), str(size)]
    run = subprocess.run([*args, *map(str, files.values())], capture_output=True, text=True, check=True)
    times = json.loads(run.stdout.strip().splitlines()[-1])
    return {name: np.asarray(t) for name, t in zip(files, times, strict=True)}


def paired_ratio(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, float | list[float]]:
    """The median of the per-call ratios a / b, with a 95% bootstrap interval over the pairs."""
    ratios = a / b
    boot = np.median(np.random.default_rng(seed).choice(ratios, (2000, len(ratios))), axis=1)
    return {
        "ratio": round(float(np.median(ratios)), 3),
        "ci95": [round(float(v), 3) for v in np.percentile(boot, [2.5, 97.5])],
    }


def machine_line(m: dict) -> str:
    """How a results table names the machine (``metadata.machine()``): CPU, cores, flags, date."""
    return f"{m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}, {m['date'][:10]}"


def ratio_text(r: dict) -> str:
    """A ``paired_ratio`` as a table cell: the median ratio and its interval."""
    return f"{r['ratio']} [{r['ci95'][0]}, {r['ci95'][1]}]"
