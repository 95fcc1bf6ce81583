"""A converted model measured against its FP32 source, and the record of how it was judged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import _deps, metadata
from resnest_deploy.compare import TOLERANCES, Metrics, Tolerance, compare
from resnest_deploy.precision import search
from resnest_deploy.precision.calibration import CalibrationData
from resnest_deploy.precision.job import Job
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
from resnest_deploy.runners.options import RunnerOptions


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


def held_out_metric(src: Path, job: Job, calib: CalibrationData) -> search.Metric:
    """Top-1 on the held-out inputs (against their labels, else agreement with the FP32 file), run
    the way the target runs the file."""
    onnx = _deps.require("onnx")
    x = job.feed(calib.holdout)
    with OnnxRuntimeRunner(src, name="source") as ref:
        reference = ref.infer_batched(x, 64)
    return search.Metric(x, calib.holdout_labels, reference, job.target == "tensorrt", onnx.load(src))


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
    if fake_quant:
        return parity, "Q/DQ as float ops (onnxruntime session.disable_quant_qdq): TensorRT's, on any CPU"
    flags = " ".join(f for f in metadata.cpu_flags() if "vnni" in f or f == "avx2")
    return parity, f"onnxruntime's kernels on this CPU ({flags})"
