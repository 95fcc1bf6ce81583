"""Is the artifact still the model? Each artifact against PyTorch FP32 on the same inputs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resnest_deploy import _deps, metadata, reference
from resnest_deploy.artifacts import Lineup
from resnest_deploy.compare import TOLERANCES, UNCHECKED, Metrics, Tolerance, compare
from resnest_deploy.errors import ArtifactError
from resnest_deploy.runners.options import RunnerOptions

REFERENCES = ("auto", "pytorch", "recorded")


@dataclass
class CheckResult:
    artifact: str
    backend: str
    precision: str
    metrics: Metrics
    tolerance: Tolerance
    problems: list[str] = field(default_factory=list)
    #: False for a reduced-precision file of random weights: measured, only NaN/Inf fail it
    judged: bool = True
    #: what the bar would have said of an unjudged file
    outside_tolerance: list[str] = field(default_factory=list)

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
            "judged": self.judged,
            "outside_tolerance": self.outside_tolerance,
        }


@dataclass
class CheckReport:
    arch: str
    weights: str
    inputs: dict[str, Any]
    results: list[CheckResult]
    reference: str = "pytorch fp32 cpu"

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "weights": self.weights,
            "reference": self.reference,
            "inputs": self.inputs,
            "passed": self.passed,
            "results": [r.as_dict() for r in self.results],
            **({"note": self.note} if self.note else {}),
        }

    @property
    def note(self) -> str | None:
        """What a reader must know about these figures: made from random weights."""
        return metadata.RANDOM_WEIGHTS_NOTE if self.weights == "random" else None


@dataclass(frozen=True)
class _Reference:
    """Where the PyTorch FP32 logits come from: a kept .npz, the sidecars' record, or PyTorch now."""

    name: str
    kept_apart: bool
    recorded: bool


Case = tuple[np.ndarray, np.ndarray, dict[str, Any]]


def _references(
    lineup: Lineup,
    ref: _Reference,
    images: str | os.PathLike[str] | None,
    count: int,
    batch: int,
    inputs: tuple[np.ndarray, dict[str, Any]] | None,
    say: Callable[[str], None],
) -> tuple[list[Case], dict[str, Any]]:
    """Per artifact: its inputs, the reference logits on them, and a description of the inputs."""
    if ref.kept_apart:
        cases = [reference.load(ref.name, i.input_size, lineup.arch) for i in lineup.infos]
        described = {**cases[0][2], "kind": f"probe inputs of {ref.name} ({cases[0][2]['kind']})"}
        say(f"reference: PyTorch FP32 logits kept in {ref.name}, {described['count']} probe inputs")
    elif ref.recorded:
        cases = [reference.recorded(i.meta, i.name, i.input_size) for i in lineup.infos]
        described = {**cases[0][2], "kind": f"recorded probe inputs ({cases[0][2]['kind']})"}
        say(f"reference: PyTorch FP32 logits recorded at export, {described['count']} probe inputs")
        say(f"note: {reference.RECORDED_CAVEAT}")
        described["caveat"] = reference.RECORDED_CAVEAT
    else:
        from resnest_deploy.runners.torch import TorchRunner

        x, described = inputs or lineup.inputs(images, count)
        say(f"reference: PyTorch FP32 {lineup.arch} on {len(x)} {described['kind']} inputs")
        with TorchRunner(lineup.model) as torch_runner:
            cases = [(x, torch_runner.infer_batched(x, batch), described)] * len(lineup.infos)
    return cases, described


def _judged(
    lineup: Lineup,
    info: Any,
    x: np.ndarray,
    expected: np.ndarray,
    limits: dict[str, Tolerance],
    provider: str,
    batch: int,
    say: Callable[[str], None],
) -> CheckResult:
    """One artifact run on ``x`` and judged against ``expected`` at its precision's tolerance."""
    say(f"running {info.name}")
    with lineup.runner(info, RunnerOptions.from_provider(provider)) as runner:
        metrics = compare(expected, runner.infer_batched(x, batch))
        backend = runner.backend
        # an FP32 file computed in BF16 is judged as BF16; an INT8 file stays INT8
        precision = runner.computes_in if runner.computes_in and info.precision == "fp32" else info.precision
    tol = limits.get(precision, limits["fp32"])
    # FP32 files of random weights stay judged: the same function computed, a structural fact
    judged = not (lineup.weights == "random" and precision != "fp32")
    problems = tol.violations(metrics)
    kept = problems if judged else UNCHECKED.violations(metrics)
    result = CheckResult(info.name, backend, precision, metrics, tol, kept, judged)
    result.outside_tolerance = [] if judged else problems
    return result


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
    reference_from: str = "auto",
) -> CheckReport:
    """Compare every artifact with the PyTorch FP32 model; thresholds default by precision.

    ``inputs`` (an array and its description) replaces ``images``/``count``. ``weights`` defaults
    to what the artifacts record (random, pretrained or a file), so an export is checked against
    the checkpoint it came from. ``reference_from="recorded"`` (the default where torch is not
    installed) compares against the PyTorch logits recorded at export, on their probe inputs.

    Against random weights, reduced-precision files are measured but not judged (only NaN/Inf
    fail them): near-uniform logits make any INT8 file look far from FP32. FP32 files stay judged.
    """
    say = progress or (lambda _msg: None)
    kept_apart = reference_from.endswith(".npz")
    if reference_from not in REFERENCES and not kept_apart:
        raise ArtifactError(
            f"unknown reference {reference_from!r}; choose {', '.join(REFERENCES)} or a .npz reference file"
        )
    recorded = (
        kept_apart or reference_from == "recorded" or (reference_from == "auto" and not _deps.has("torch"))
    )
    if recorded and (images is not None or inputs is not None):
        raise ArtifactError(
            "recorded references exist for their probe inputs only; drop {images}, or compare on your "
            "images where PyTorch is installed: pip install 'resnest-deploy[export]'",
            param="images",
        )
    lineup = Lineup.of(artifacts, arch, weights, reference=not recorded)
    limits = {**TOLERANCES, **(tolerances or {})}
    origin = _Reference(reference_from, kept_apart, recorded)
    cases, described = _references(lineup, origin, images, count, batch, inputs, say)
    results = [
        _judged(lineup, info, x, expected, limits, provider, batch, say)
        for info, (x, expected, _) in zip(lineup.infos, cases, strict=True)
    ]
    source = (
        f"{reference.RUNTIME}, kept in {reference_from}"
        if kept_apart
        else f"{reference.RUNTIME}, recorded at export"
        if recorded
        else reference.RUNTIME
    )
    return CheckReport(lineup.arch, lineup.weights, described, results, source)
