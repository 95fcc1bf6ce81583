"""How fast: latency percentiles and throughput per artifact and batch size, in one run."""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy._io import atomic_path
from resnest_deploy.artifacts import Lineup
from resnest_deploy.data import random_inputs
from resnest_deploy.errors import ArtifactError
from resnest_deploy.limits import LimitError, check_batch, check_positive
from resnest_deploy.runners import Runner


@dataclass(frozen=True)
class BenchResult:
    artifact: str
    backend: str
    precision: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    iterations: int
    #: the engine's GPU time alone (CUDA events), where the backend has device timers; the other
    #: figures are the whole call, host staging and copies included, on every backend
    device_p50_ms: float | None
    #: activation (load, compile, engine deserialisation) plus the first call at this artifact's first
    #: batch size: what a cold start costs, and what a working engine or kernel cache saves
    first_call_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_runner(
    runner: Runner,
    x: np.ndarray,
    warmup: int = 5,
    iterations: int = 20,
    advance: Callable[[int], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Per-call latency in ms (whole call; and device-only where the backend has a device timer)
    after ``warmup`` untimed calls (allocations, autotuning, graph capture)."""
    for _ in range(warmup):
        runner.infer(x)
    times, device = [], []
    for _ in range(iterations):
        runner.infer(x)
        times.append(runner.last_inference_ms())
        gpu = runner.device_time_ms()
        if gpu is not None:
            device.append(gpu)
        if advance:
            advance(1)
    return times, device


def summarize(
    info_name: str,
    runner: Runner,
    precision: str,
    batch: int,
    times: Sequence[float],
    device: Sequence[float] = (),
    first_call_ms: float = float("nan"),
) -> BenchResult:
    t = np.asarray(times)
    p50, p90, p99 = (float(v) for v in np.percentile(t, [50, 90, 99]))
    return BenchResult(
        info_name,
        runner.backend,
        precision,
        batch,
        round(p50, 3),
        round(p90, 3),
        round(p99, 3),
        round(float(t.mean()), 3),
        round(batch * 1000.0 / p50, 2),
        len(t),
        round(float(np.percentile(device, 50)), 3) if len(device) else None,
        round(first_call_ms, 3),
    )


def bench(
    artifacts: Sequence[str | os.PathLike[str]],
    *,
    arch: str | None = None,
    weights: str | None = None,
    batches: Sequence[int] = (1, 8),
    warmup: int = 5,
    iterations: int = 20,
    provider: str = "cpu",
    threads: int | None = None,
    cuda_graphs: bool = False,
    ov_hint: str = "latency",
    advance: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> list[BenchResult]:
    """Every artifact at every batch size, on seeded random inputs (timing does not depend on them).

    Every timed call holds exactly its batch of distinct inputs; impossible sizes are refused first.
    """
    lineup = Lineup.of(artifacts, arch, weights)
    for b in batches:
        check_batch(b, lineup.size, "--batch-sizes")
    check_positive(iterations, "--iterations")
    if warmup < 0:
        raise LimitError(f"--warmup must be 0 or more, got {warmup}")
    if on_total:
        on_total(len(lineup.infos) * len(batches) * iterations)
    results = []
    for info in lineup.infos:
        started = time.perf_counter()
        with lineup.runner(
            info, provider, threads=threads, cuda_graphs=cuda_graphs, ov_hint=ov_hint
        ) as runner:
            first = None
            for b in batches:
                x = random_inputs(b, lineup.size)
                if first is None:
                    runner.infer(x)
                    first = (time.perf_counter() - started) * 1e3
                times, device = time_runner(runner, x, warmup, iterations, advance)
                results.append(summarize(info.name, runner, info.precision, b, times, device, first))
    return results


def to_csv(results: Sequence[BenchResult]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(BenchResult.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(r.as_dict() for r in results)
    return buf.getvalue()


def check_plot_path(path: str | os.PathLike[str]) -> None:
    """Refuse, before any timing, a plot file whose extension matplotlib cannot write."""
    from resnest_deploy import _deps

    _deps.require("matplotlib")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ArtifactError(
            f"--plot {path}: cannot draw a {suffix or 'suffix-less'} file; end the name with one of "
            f"{', '.join('.' + f for f in sorted(formats))} (e.g. latency.png)"
        )


def plot(results: Sequence[BenchResult], path: str | os.PathLike[str]) -> Path:
    """p50 latency against batch size, one line per artifact (needs the ``plot`` extra)."""
    from resnest_deploy import _deps

    _deps.require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r.artifact for r in results):
        rows = [r for r in results if r.artifact == name]
        ax.plot(
            [r.batch for r in rows], [r.p50_ms for r in rows], marker="o", label=f"{name} ({rows[0].backend})"
        )
    ax.set(xlabel="batch size", ylabel="p50 latency (ms)", xscale="log", yscale="log")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path


def interleaved(
    runners: dict[str, Runner], x: np.ndarray, rounds: int = 7, calls: int = 5, warmup: int = 3
) -> dict[str, float]:
    """p50 ms of each runner, the runners taking turns (``calls`` each, ``rounds`` times), so a slow
    spell of a shared machine falls on all of them: for comparing files in one process."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        for _ in range(warmup):
            runner.infer(x)
    for _ in range(rounds):
        for name, runner in runners.items():
            for _ in range(calls):
                runner.infer(x)
                times[name].append(runner.last_inference_ms())
    return {name: float(np.median(t)) for name, t in times.items()}
