"""A converted model measured against its FP32 source, and the record of how it was judged."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import _deps, metadata
from resnest_deploy.cache import Cache, runtime_version
from resnest_deploy.compare import TOLERANCES, Metrics, Tolerance, compare
from resnest_deploy.precision import search
from resnest_deploy.precision.calibration import CalibrationData, EvaluationSet
from resnest_deploy.precision.job import Job
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
from resnest_deploy.runners.options import RunnerOptions

#: FP32 logits of an evaluation set, keyed by (source sha256, set digest, ONNX Runtime version)
REFERENCES_CACHE = Cache("references", ".npz")


@dataclass(frozen=True)
class References:
    """The FP32 source's logits on the evaluation set, and where they came from (what a rerun shows)."""

    logits: np.ndarray
    cached: bool  # read back from the cache (verified) rather than computed
    seconds: float  # spent getting them (near zero when cached)

    def record(self) -> dict[str, Any]:
        return {"from": "cache" if self.cached else "computed", "seconds": round(self.seconds, 4)}


def gate_record(parity: Metrics, precision: str, tolerance: Tolerance | None, random: bool) -> dict[str, Any]:
    """What the parity gate decided, for the metadata: a file from random weights is measured, not
    judged (only NaN/Inf fail it); a bar the user set is recorded with what the default bar would have
    said, so a file accepted outside the default tolerance never passes silently."""
    default = TOLERANCES[precision]
    bar = tolerance or default
    record: dict[str, Any] = {
        "judged": not random,
        "tolerance": {k: v for k, v in vars(bar).items() if v != float("inf")},
        "tolerance_from": "user" if tolerance is not None and tolerance != default else "default",
        "outside_default": default.violations(parity),
    }
    if random:
        record["note"] = metadata.RANDOM_WEIGHTS_NOTE
    return record


def references(
    src: Path, src_sha256: str, x: np.ndarray, evaluation: EvaluationSet, use_cache: bool = True
) -> References:
    """The source's FP32 logits on ``x`` (``evaluation`` fed in the source's form), computed once per
    (source file, set) and cached by content; what is read back is checked (shape, finite)."""
    digest = hashlib.sha256(x.tobytes()).hexdigest()
    key = hashlib.sha256(
        f"{src_sha256}:{evaluation.digest()}:{digest}:{runtime_version('onnxruntime')}".encode()
    ).hexdigest()[:24]
    started = time.perf_counter()
    found = REFERENCES_CACHE.get_arrays(key) if use_cache else None
    logits = found[1].get("logits") if found is not None else None
    if logits is not None:  # what reads back is checked; anything else is a miss
        fits = logits.dtype == np.float32 and logits.ndim == 2 and len(logits) == len(x)
        if fits and np.isfinite(logits).all():
            return References(logits, True, time.perf_counter() - started)
    with OnnxRuntimeRunner(src, name="source") as ref:
        logits = ref.infer_batched(x, 64)
    if use_cache:
        REFERENCES_CACHE.put_arrays(key, {"source_sha256": src_sha256, "images": len(x)}, logits=logits)
    return References(logits, False, time.perf_counter() - started)


def held_out_metric(
    src: Path, job: Job, calib: CalibrationData, bar: Tolerance | None = None, use_cache: bool = True
) -> tuple[search.Metric, References]:
    """Top-1 on the evaluation set (``calib.judged_on()``: ``eval_dir``'s images, else the held-out
    part; against labels, else agreement with the FP32 file), run the way the target runs the file;
    ``bar``: the parity gate a search must meet too."""
    onnx = _deps.require("onnx")
    judged = calib.judged_on()
    x = job.feed(judged.x)
    refs = references(src, job.src_sha256, x, judged, use_cache)
    metric = search.Metric(x, judged.labels, refs.logits, job.target == "tensorrt", onnx.load(src), bar)
    return metric, refs


def measure_parity(
    src: Path, model: Any, x: np.ndarray, precision: str, target: str, reference: np.ndarray | None = None
) -> tuple[Metrics, str]:
    """A converted model against its FP32 source on ``x`` (``reference``: the source's logits on ``x``,
    when already computed), and how it was computed: a TensorRT-target INT8 file as TensorRT
    computes it (Q/DQ as float ops, the same on every CPU); a CPU-target file with the CPU's own
    int8 kernels, which is what will run it."""
    fake_quant = precision == "int8" and target == "tensorrt"
    if reference is None:
        with OnnxRuntimeRunner(src, name="source") as ref:
            reference = ref.infer_batched(x)
    with OnnxRuntimeRunner(model.SerializeToString(), RunnerOptions(fake_quant=fake_quant)) as cand:
        parity = compare(reference, cand.infer_batched(x))
    return parity, arithmetic(precision, target)


def arithmetic(precision: str, target: str) -> str:
    """How a converted file is computed when measured, in words (recorded with its parity)."""
    if precision == "int8" and target == "tensorrt":
        return "Q/DQ as float ops (onnxruntime session.disable_quant_qdq): TensorRT's, on any CPU"
    flags = " ".join(f for f in metadata.cpu_flags() if "vnni" in f or f == "avx2")
    return f"onnxruntime's kernels on this CPU ({flags})"
