"""The anchor of issue 34: NNCF's accuracy-aware post-training quantization on the same FP32 ONNX.

``nncf.quantize_with_accuracy_control(model, calibration_dataset, validation_dataset, validation_fn,
max_drop=0.0025, drop_type=DropType.ABSOLUTE, target_device=TargetDevice.CPU, ...)`` with
``AdvancedAccuracyRestorerParameters(restore_mode=RestoreMode.ACTIVATIONS_AND_WEIGHTS)``: NNCF
quantizes the model (its ``performance`` preset: symmetric weights and activations), validates it,
ranks its quantizer groups by what reverting each recovers and reverts the worst ones, each
operation with its activation quantizer, until the drop is within ``max_drop``. NNCF's drop is a
fraction (0.0025 = our 0.25 points). Not part of the package: NNCF is a benchmark dependency only
(the ``bench`` extra).

NNCF copies the source's ``metadata_props``, so its file still says ``precision: fp32`` and every
resnest-deploy command refuses it ("labelled fp32 but its graph is int8"): the anchor's file is
relabelled INT8 (CPU target, tool recorded) so ``bench`` times it.
"""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: NNCF's budget: a fraction of top-1 (0.25 points)
MAX_DROP = 0.0025


@dataclass
class AnchorResult:
    path: Path
    seconds: float
    fp32_metric: float | None  # NNCF's own validation, top-1 as a fraction
    plain_metric: float | None  # NNCF's plain quantize, before any revert
    quantized_ops: int | None  # what NNCF counted as quantized operations
    reverted: list[str] = field(default_factory=list)  # operations NNCF reverted to float
    log: list[str] = field(default_factory=list)


def anchor(
    src: Path,
    out: Path,
    calib: np.ndarray,
    x: np.ndarray,
    labels: np.ndarray,
    max_drop: float = MAX_DROP,
) -> AnchorResult:
    """Quantize ``src`` with NNCF's accuracy control, calibrated on ``calib``, validated on ``x`` with
    ``labels`` (top-1, per image), and write the result to ``out``."""
    import nncf
    import onnx
    import onnxruntime as ort
    from nncf.common.logging import nncf_logger
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters, RestoreMode

    from resnest_deploy import metadata

    model = onnx.load(src)
    name = model.graph.input[0].name

    def validate(candidate: onnx.ModelProto, items: object) -> tuple[float, list[float]]:
        """Top-1 and the per-image outcomes (NNCF's "metric mode": it ranks on these)."""
        chosen = list(items)  # type: ignore[call-overload]
        batch = np.stack([i for i, _ in chosen])
        truth = np.array([t for _, t in chosen])
        session = ort.InferenceSession(candidate.SerializeToString(), providers=["CPUExecutionProvider"])
        right = (session.run(None, {name: batch})[0].argmax(1) == truth).astype(float)
        return float(right.mean()), [float(v) for v in right]

    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    nncf_logger.addHandler(handler)
    started = time.perf_counter()
    try:
        quantized = nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(list(calib), lambda image: {name: image[None]}),
            nncf.Dataset(list(zip(x, labels, strict=True)), lambda item: {name: item[0][None]}),
            validate,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            target_device=nncf.TargetDevice.CPU,
            subset_size=len(calib),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                restore_mode=RestoreMode.ACTIVATIONS_AND_WEIGHTS
            ),
        )
    finally:
        nncf_logger.removeHandler(handler)
    seconds = time.perf_counter() - started
    meta = metadata.from_onnx(model) or {}
    metadata.embed(
        quantized,
        {
            **meta,
            "precision": "int8",
            "target": "cpu",
            "conversion": {
                "tool": f"nncf {nncf.__version__} quantize_with_accuracy_control",
                "max_drop": max_drop,
            },
        },
    )
    onnx.save(quantized, out)
    return _parsed(captured.getvalue(), out, seconds)


def _parsed(text: str, out: Path, seconds: float) -> AnchorResult:
    """What NNCF's log says: its metrics, the count of quantized operations, what it reverted."""

    def number(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None

    reverted: list[str] = []
    m = re.search(r"were reverted back to the floating-point precision:\s*\n((?:\t.*\n?)*)", text)
    if m:
        reverted = [line.strip() for line in m.group(1).splitlines() if line.strip()]
    ops = number(r"Total number of quantized operations in the model: (\d+)")
    return AnchorResult(
        out,
        seconds,
        number(r"Metric of initial model: ([0-9.]+)"),
        number(r"Metric of quantized model: ([0-9.]+)"),
        None if ops is None else int(ops),
        reverted,
        text.splitlines(),
    )
