"""Timing runners against each other: the one interface conversion and ``bench`` both use.

Conversion times its own result (what keeping units in FP32 costs) without importing ``bench``,
one of its consumers.
"""

from __future__ import annotations

import numpy as np

from resnest_deploy.runners.base import Runner


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
