"""INT8 where it is hard: which units lose accuracy, and the fewest to keep in FP32 to meet a budget.

Polygraphy's ``debug precision`` bisects layers but needs a GPU and TensorRT; NNCF's accuracy-aware
quantization does not place Q/DQ the way TensorRT reads them. This works on the quantized ONNX file
of either target, on a CPU: calibrate once, then leave a *unit* in FP32 by taking its Q/DQ out of the
graph (its inputs read the float tensors again; its weights are dequantized back to float) and measure
on held-out images. No trial recalibrates, so every trial differs from the plain INT8 file in that
unit alone.

A unit is what a user recognises in a ResNeSt: the stem, each block's first convolution, its
split-attention convolution, its attention gate (fc1, fc2), its last convolution, its downsample,
and the classifier. The metric is top-1 against labels when the data has them, else top-1 agreement
with the FP32 file; a TensorRT-target file is run as TensorRT computes it (Q/DQ as float ops), a
CPU-target file with the CPU's int8 kernels.

One acceptance rule (``ACCEPTANCE``): a candidate is accepted when its drop's point estimate on the
evaluation set is within the budget AND it passes the parity gate (``Metric.bar``) on the same set,
computed the same way; so what the search accepts, the conversion writes (never "budget met" and then
a parity error). The drop's 95% interval (``stats.paired_drop``, Tango's score interval) is reported,
not required to lie within the budget: a set that can resolve the budget keeps it narrow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from resnest_deploy import _deps, metrics, stats
from resnest_deploy.compare import Metrics, Tolerance, compare
from resnest_deploy.errors import SearchError
from resnest_deploy.precision.qdq import layers_without_qdq as layers_without_qdq
from resnest_deploy.precision.search_result import ACCEPTANCE as ACCEPTANCE
from resnest_deploy.precision.search_result import ACCEPTANCE_TEXT as ACCEPTANCE_TEXT
from resnest_deploy.precision.search_result import SearchResult as SearchResult
from resnest_deploy.precision.search_result import Sensitivity as Sensitivity
from resnest_deploy.precision.search_result import drop_from_dict as drop_from_dict
from resnest_deploy.precision.units import COMPUTE_OPS as COMPUTE_OPS
from resnest_deploy.precision.units import fp32_layers as fp32_layers
from resnest_deploy.precision.units import unit_of as unit_of
from resnest_deploy.precision.units import units as units
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
from resnest_deploy.runners.options import RunnerOptions

#: the budget `pipeline` searches with: points of top-1 (or of agreement with FP32) INT8 may lose
DEFAULT_MAX_DROP = 0.5


def without_qdq(model: Any, keep_fp32: Sequence[str], source: Any = None) -> Any:
    """A copy of the quantized ``model`` with the units in ``keep_fp32`` computing in FP32."""
    found = units(model)
    unknown = set(keep_fp32) - set(found)
    if unknown:
        raise SearchError(f"no quantized unit {sorted(unknown)!r} in this file; units: {sorted(found)}")
    return layers_without_qdq(model, {name for unit in keep_fp32 for name in found[unit]}, source)


@dataclass(frozen=True)
class Judgement:
    """One candidate on the evaluation set: the metric, its parity with FP32, and whether the
    acceptance rule (``ACCEPTANCE``) takes it."""

    value: float
    parity: Metrics
    problems: tuple[str, ...]  # the parity gate's violations (empty: met)
    logits: np.ndarray

    def accepted(self, fp32: float, max_drop: float) -> bool:
        return fp32 - self.value <= max_drop and not self.problems


@dataclass(frozen=True)
class Metric:
    """Top-1 against labels, or top-1 agreement with the FP32 file when there are none; ``bar``:
    the parity gate a candidate must pass too (None: the budget alone)."""

    x: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray  # FP32 logits on x
    fake_quant: bool  # TensorRT's arithmetic (Q/DQ as float ops) or the CPU's int8 kernels
    source: Any = None  # the FP32 ModelProto: original weights for units put back in FP32
    bar: Tolerance | None = None

    @property
    def name(self) -> str:
        return "top-1" if self.labels is not None else "top-1 agreement with FP32"

    def of_logits(self, logits: np.ndarray) -> float:
        return 100.0 * metrics.accuracy(self.outcomes(logits))

    def outcomes(self, logits: np.ndarray) -> np.ndarray:
        """Per image: right by this metric (what a paired test of two files reads)."""
        return metrics.correct(logits, self.labels, self.reference)

    def logits(self, model: Any) -> np.ndarray:
        """``model`` run on ``x`` the way its target runs it (one way, everywhere: search and gate)."""
        options = RunnerOptions(fake_quant=self.fake_quant)
        with OnnxRuntimeRunner(model.SerializeToString(), options) as runner:
            return runner.infer_batched(self.x, 64)

    def __call__(self, model: Any) -> float:
        return self.of_logits(self.logits(model))

    def judge(self, model: Any) -> Judgement:
        logits = self.logits(model)
        parity = compare(self.reference, logits)
        problems = tuple(self.bar.violations(parity)) if self.bar is not None else ()
        return Judgement(self.of_logits(logits), parity, problems, logits)

    def drop(self, logits: np.ndarray) -> stats.Drop:
        """FP32's metric minus the candidate's, paired per image, with its 95% interval."""
        return stats.paired_drop(self.outcomes(self.reference), self.outcomes(logits))

    @property
    def fp32(self) -> float:
        return self.of_logits(self.reference)


@dataclass(frozen=True)
class TrialInputs:
    """What every trial of a pass shares, as bytes and arrays (no ModelProto, no session): an
    executor can send it to another process or node once and run many trials against it."""

    model: bytes  # the plain INT8 model
    x: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray
    fake_quant: bool
    source: bytes | None = None  # the FP32 model

    @classmethod
    def of(cls, model: Any, metric: Metric) -> TrialInputs:
        source = metric.source.SerializeToString() if metric.source is not None else None
        return cls(
            model.SerializeToString(), metric.x, metric.labels, metric.reference, metric.fake_quant, source
        )


def _trial_judged(inputs: TrialInputs, layers: tuple[str, ...]) -> tuple[float, float]:
    onnx = _deps.require("onnx")
    model = onnx.load_from_string(inputs.model)
    source = onnx.load_from_string(inputs.source) if inputs.source is not None else None
    metric = Metric(inputs.x, inputs.labels, inputs.reference, inputs.fake_quant, source)
    judged = metric.judge(layers_without_qdq(model, list(layers), source))
    return judged.value, judged.parity.cosine


def trial(inputs: TrialInputs, layers: tuple[str, ...]) -> float:
    """One search trial as a plain function of picklable inputs: the metric with ``layers`` (compute
    node names) back in FP32; the same number wherever it runs."""
    return _trial_judged(inputs, layers)[0]


def trial_with_cosine(inputs: TrialInputs, layers: tuple[str, ...]) -> tuple[float, float]:
    """A trial and its mean logit cosine to FP32: the sensitivity pass ranks by the metric, then by
    what the parity gate reads."""
    return _trial_judged(inputs, layers)


def sensitivity(
    model: Any, metric: Metric, progress: Callable[[str], None] | None = None, executor: Any = None
) -> tuple[float, list[Sensitivity]]:
    """Plain INT8's metric, and every unit ranked by what leaving it alone in FP32 recovers.

    The units' trials are independent: given an executor (``resnest_deploy.executors``), they run
    through its ``map``, e.g. spread over a Ray cluster; without one, here, one after another."""
    say = progress or (lambda _m: None)
    plain = metric(model)
    found = units(model)
    if executor is None:
        values = []
        for unit, layers in found.items():
            say(f"sensitivity: {unit} in FP32")
            judged = metric.judge(layers_without_qdq(model, layers, metric.source))
            values.append((judged.value, judged.parity.cosine))
    else:
        say(f"sensitivity: {len(found)} units in FP32, one trial each ({executor.name})")
        items = [tuple(v) for v in found.values()]
        values = executor.map(trial_with_cosine, TrialInputs.of(model, metric), items)
    ranked = [
        Sensitivity(unit, round(alone, 3), round(alone - plain, 3), round(cosine, 6))
        for unit, (alone, cosine) in zip(found, values, strict=True)
    ]
    ranked.sort(key=lambda s: (-s.gain, -(s.cosine or 0.0), s.unit))
    return plain, ranked


def search(
    model: Any,
    metric: Metric,
    max_drop: float,
    progress: Callable[[str], None] | None = None,
    executor: Any = None,
) -> tuple[Any, SearchResult]:
    """Keep the most sensitive units in FP32, one at a time, until a candidate is accepted
    (``ACCEPTANCE``: within ``max_drop`` points of FP32 and, when ``metric.bar`` is set, through
    the parity gate, both on the evaluation set); the model accepted, and what it cost. Refused, with
    the best result reached, when even every unit but one in FP32 is not accepted (then INT8 is not
    the tool for this model). ``max_drop`` is checked where it is given (``precision.ConversionConfig``).

    The sensitivity pass goes through ``executor`` when given; the steps after it stay here, one
    after another: each keeps what the step before chose."""
    say = progress or (lambda _m: None)
    fp32 = metric.fp32
    plain, ranked = sensitivity(model, metric, say, executor)
    if not ranked:
        raise SearchError(
            "no ResNeSt unit (stem, block convolutions, classifier) found by node name in this file; "
            "re-export it with resnest-deploy export, which keeps the module path in node names"
        )
    result = SearchResult(fp32, plain, plain, [], max_drop, metric.name, ranked)
    before, total = fp32_layers(model)
    result.layers_fp32 = {"plain": before, "chosen": before, "total": total}
    judged = metric.judge(model)
    if judged.accepted(fp32, max_drop):
        result.drop = metric.drop(judged.logits)
        return model, result
    if fp32 - plain <= max_drop:
        say(f"search: plain INT8 is within the budget but not the parity gate ({'; '.join(judged.problems)})")
    found = units(model)
    kept: list[str] = []
    for s in ranked[:-1]:  # at least one unit stays INT8
        kept.append(s.unit)
        layers = [name for unit in kept for name in found[unit]]
        candidate = layers_without_qdq(model, layers, metric.source)
        judged = metric.judge(candidate)
        ok = judged.accepted(fp32, max_drop)
        result.trials.append(_trial_record({"kept_fp32": list(kept)}, judged, ok))
        say(
            f"search: {len(kept)} unit(s) in FP32 -> {judged.value:.2f} ({metric.name}; FP32 {fp32:.2f})"
            + _gate_words(judged)
        )
        if ok:
            candidate, judged, layers = _fewest_layers(
                model, layers, (candidate, judged), metric, result, say
            )
            # the units some of whose nodes stayed FP32 (the rest went back to INT8 one by one)
            still = [unit for unit in kept if set(found[unit]) & set(layers)]
            result.metric, result.kept_fp32, result.kept_fp32_layers = judged.value, still, layers
            result.layers_fp32["chosen"] = fp32_layers(candidate)[0]
            result.drop = metric.drop(judged.logits)
            return candidate, result
    reached = result.trials[-1]["metric"] if result.trials else plain
    why = (
        f"more than the {max_drop} points allowed"
        if fp32 - reached > max_drop
        else f"within the {max_drop} points allowed but not the parity gate ({'; '.join(judged.problems)})"
    )
    steps = [t for t in result.trials if "kept_fp32" in t]
    best = max(steps, key=lambda t: (t["metric"], t["cosine"]), default=None)
    closest = (
        f"; the best reached: {len(best['kept_fp32'])} unit(s) in FP32 -> {best['metric']:.2f}, "
        f"cosine {best['cosine']:.6f}"
        if best is not None
        else ""
    )
    raise SearchError(
        f"even {len(kept)} of {len(ranked)} units in FP32 reach only {reached:.2f} against FP32's "
        f"{fp32:.2f} ({metric.name}, cosine {judged.parity.cosine:.6f}): {why}{closest}; nothing written: "
        "keep this model in FP16/FP32, or calibrate on more representative images"
    )


def _gate_words(judged: Judgement) -> str:
    return f", parity gate: {'; '.join(judged.problems)}" if judged.problems else ""


def _trial_record(record: dict[str, Any], judged: Judgement, ok: bool) -> dict[str, Any]:
    return record | {
        "metric": round(judged.value, 3),
        "cosine": round(judged.parity.cosine, 6),
        "parity_ok": not judged.problems,
        "accepted": ok,
    }


def _fewest_layers(
    model: Any,
    layers: list[str],
    met: tuple[Any, Judgement],
    metric: Metric,
    result: SearchResult,
    say: Callable[[str], None],
) -> tuple[Any, Judgement, list[str]]:
    """Of the ``layers`` of the units kept in FP32, put each back in INT8 while the candidate is
    still accepted: a unit is often sensitive through one of its convolutions (the fixture's stem:
    the one reading the outlier channel), and every FP32 layer costs CPU time."""
    fp32, (best, reached) = list(layers), met
    for name in layers:
        trial = [n for n in fp32 if n != name]
        if not trial:
            break
        candidate = layers_without_qdq(model, trial, metric.source)
        judged = metric.judge(candidate)
        ok = judged.accepted(metric.fp32, result.max_drop)
        result.trials.append(_trial_record({"int8_again": name}, judged, ok) | {"kept": ok})
        say(f"search: {name} back in INT8 -> {judged.value:.2f} ({'kept' if ok else 'reverted'})")
        if ok:
            fp32, best, reached = trial, candidate, judged
    return best, reached, fp32
