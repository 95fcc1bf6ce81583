"""The timing loop: warm-up until the call time is stable, timed calls on time or a count, and a
judged row per cell (artifact x batch size), every artifact in this process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from resnest_deploy.artifacts import Lineup
from resnest_deploy.bench.judge import judge
from resnest_deploy.bench.plan import BenchPlan
from resnest_deploy.bench.result import BenchResult
from resnest_deploy.cpuload import LoadReport, LoadWatch
from resnest_deploy.data import random_inputs
from resnest_deploy.limits import check_batch
from resnest_deploy.runners import Runner
from resnest_deploy.runners.options import RunnerOptions

#: warm-up ends when the median of the last WINDOW calls is within this of the WINDOW before
SETTLED = 0.10
WINDOW = 3
WARMUP_MAX_S = 10.0
#: a slow cell still gets two windows to compare, up to this long
WARMUP_HARD_S = 60.0
WARMUP_MAX_CALLS = 500
#: timed calls per cell at most (every loop is bounded)
MAX_CALLS = 1_000_000


def time_runner(
    runner: Runner,
    x: np.ndarray,
    warmup: int = 5,
    iterations: int = 20,
    advance: Callable[[int], None] | None = None,
    seconds: float | None = None,
) -> tuple[list[float], list[float]]:
    """Per-call latency in ms (whole call; and device-only where the backend has a device timer)
    after ``warmup`` untimed calls (allocations, autotuning, graph capture): exactly ``iterations``
    calls, or with ``seconds``, calls until that much time has passed (at least ``iterations``)."""
    for _ in range(warmup):
        runner.infer(x)
    times, device = [], []
    deadline = None if seconds is None else time.perf_counter() + seconds
    for i in range(MAX_CALLS):
        if deadline is None and i >= iterations:
            break
        if deadline is not None and i >= iterations and time.perf_counter() >= deadline:
            break
        runner.infer(x)
        times.append(runner.last_inference_ms())
        gpu = runner.device_time_ms()
        if gpu is not None:
            device.append(gpu)
        if advance:
            advance(1)
    return times, device


def warm_up(
    runner: Runner, x: np.ndarray, max_s: float = WARMUP_MAX_S, hard_s: float = WARMUP_HARD_S
) -> tuple[int, bool]:
    """Untimed calls until the call time is stable: the median of the last ``WINDOW`` calls within
    ``SETTLED`` of the ``WINDOW`` before. Bounded by ``max_s`` once two windows were compared (a slow
    cell gets them, up to ``hard_s``) and by ``WARMUP_MAX_CALLS``; returns the calls made and whether
    they settled."""
    times: list[float] = []
    started = time.perf_counter()
    deadline, hard = started + max_s, started + hard_s
    while len(times) < WARMUP_MAX_CALLS:
        runner.infer(x)
        times.append(runner.last_inference_ms())
        if len(times) >= 2 * WINDOW:
            now = float(np.median(times[-WINDOW:]))
            before = float(np.median(times[-2 * WINDOW : -WINDOW]))
            if abs(now - before) <= SETTLED * before:
                return len(times), True
        if time.perf_counter() >= (deadline if len(times) >= 2 * WINDOW else hard):
            break
    return len(times), False


def summarize(
    info_name: str,
    runner: Runner,
    precision: str,
    batch: int,
    times: Sequence[float],
    device: Sequence[float] = (),
    first_call_ms: float = float("nan"),
    **extra: Any,
) -> BenchResult:
    """A row from measured call times; ``extra`` fills the later fields (warm-up, load, flags)."""
    t = np.asarray(times)
    p10, p50, p90, p99 = (float(v) for v in np.percentile(t, [10, 50, 90, 99]))
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
        round(p10, 3),
        **extra,
    )


@dataclass(frozen=True)
class _Cell:
    """One cell's measurements, before they become a row."""

    times: list[float]
    device: list[float]
    warmup_calls: int
    warmup_settled: bool
    timed_s: float
    load: LoadReport | None


def _time_cell(runner: Runner, x: np.ndarray, plan: BenchPlan) -> _Cell:
    """Warm up (to a stable call time, or the plan's count), then the timed calls, while watching
    what else used the CPUs."""
    with LoadWatch() as watch:
        if plan.warmup is None:
            warm, settled = warm_up(runner, x)
        else:
            warm, settled = plan.warmup, True
            time_runner(runner, x, warm, 0)
        began = time.perf_counter()
        times, device = time_runner(runner, x, 0, plan.min_calls, seconds=plan.seconds)
        timed = time.perf_counter() - began
    return _Cell(times, device, warm, settled, round(timed, 3), watch.report)


def bench(
    artifacts: Sequence[str | os.PathLike[str]],
    plan: BenchPlan | None = None,
    *,
    arch: str | None = None,
    weights: str | None = None,
    on_cell: Callable[[BenchResult], None] | None = None,
    **options: Any,
) -> list[BenchResult]:
    """Every artifact at every batch size, on seeded random inputs (timing does not depend on them),
    each row judged (:func:`judge`). ``options`` are :class:`BenchPlan` fields, when no plan is given.

    Every timed call holds exactly its batch of distinct inputs; impossible sizes are refused first.
    """
    plan = plan or BenchPlan(**options)
    lineup = Lineup.of(artifacts, arch, weights)
    for b in plan.batches:
        check_batch(b, lineup.size, "batch_sizes")
    rows: list[BenchResult] = []
    loads: list[LoadReport | None] = []
    for info in lineup.infos:
        started = time.perf_counter()
        with lineup.runner(
            info,
            RunnerOptions.from_provider(
                plan.provider, threads=plan.threads, cuda_graphs=plan.cuda_graphs, ov_hint=plan.ov_hint
            ),
        ) as runner:
            first = None
            for b in plan.batches:
                x = random_inputs(b, lineup.size)
                if first is None:
                    runner.infer(x)
                    first = (time.perf_counter() - started) * 1e3
                cell = _time_cell(runner, x, plan)
                row = summarize(
                    info.name,
                    runner,
                    info.precision,
                    b,
                    cell.times,
                    cell.device,
                    first,
                    warmup_calls=cell.warmup_calls,
                    warmup_settled=cell.warmup_settled,
                    timed_s=cell.timed_s,
                )
                (row,) = judge([row], plan, [cell.load])  # its own flags now, for progress
                rows.append(row)
                loads.append(cell.load)
                if on_cell:
                    on_cell(row)
    return judge([replace(r, flags=(), cause=None) for r in rows], plan, loads)
