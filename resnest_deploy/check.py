"""Is the artifact still the model? Each artifact against PyTorch FP32 on the same inputs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resnest_deploy.artifacts import Lineup
from resnest_deploy.compare import TOLERANCES, Metrics, Tolerance, compare
from resnest_deploy.runners.torch import TorchRunner


@dataclass
class CheckResult:
    artifact: str
    backend: str
    precision: str
    metrics: Metrics
    tolerance: Tolerance
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "backend": self.backend,
            "precision": self.precision,
            "passed": self.passed,
            "metrics": self.metrics.as_dict(),
            "tolerance": vars(self.tolerance),
            "problems": self.problems,
        }


@dataclass
class CheckReport:
    arch: str
    weights: str
    inputs: dict[str, Any]
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "weights": self.weights,
            "reference": "pytorch fp32 cpu",
            "inputs": self.inputs,
            "passed": self.passed,
            "results": [r.as_dict() for r in self.results],
        }


def check(
    artifacts: Sequence[str | os.PathLike[str]],
    *,
    arch: str | None = None,
    weights: str | None = None,
    images: str | os.PathLike[str] | None = None,
    count: int = 32,
    batch: int = 8,
    tolerances: dict[str, Tolerance] | None = None,
    provider: str = "cpu",
    inputs: tuple[np.ndarray, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Compare every artifact with the PyTorch FP32 model; thresholds default by precision.

    ``inputs`` (an array and its description) replaces ``images``/``count``. ``weights`` defaults
    to what the artifacts record (random, pretrained or a file), so an export is checked against
    the checkpoint it came from.
    """
    say = progress or (lambda _msg: None)
    lineup = Lineup.of(artifacts, arch, weights, reference=True)
    x, described = inputs or lineup.inputs(images, count)
    say(f"reference: PyTorch FP32 {lineup.arch} on {len(x)} {described['kind']} inputs")
    with TorchRunner(lineup.model) as ref:
        expected = ref.infer_batched(x, batch)
    limits = {**TOLERANCES, **(tolerances or {})}
    results = []
    for info in lineup.infos:
        say(f"running {info.name}")
        with lineup.runner(info, provider) as runner:
            metrics = compare(expected, runner.infer_batched(x, batch))
            backend = runner.backend
        tol = limits.get(info.precision, limits["fp32"])
        results.append(CheckResult(info.name, backend, info.precision, metrics, tol, tol.violations(metrics)))
    return CheckReport(lineup.arch, lineup.weights, described, results)
