"""INT8 with explicit Q/DQ, for two consumers that want different graphs.

* ``tensorrt``: NVIDIA ModelOpt's ONNX PTQ places Q/DQ where TensorRT fuses them into its INT8
  convolutions (grouped ones included; per-channel symmetric weights). Everything it leaves
  unquantized stays FP32: ModelOpt's ``high_precision_dtype`` defaults to FP16, which on the digits
  model costs 0.7 points of accuracy and drops logit cosine to 0.974 (0.998 with FP32).
* ``cpu``: ONNX Runtime's own quantizer with uint8 activations and int8 per-channel weights
  (U8S8), which its CPU kernels fuse into QLinearConv. ONNX Runtime's default, int8 activations,
  leaves the grouped 3x3 convs and a third of the 1x1s in float behind DequantizeLinear nodes and
  runs *slower* than FP32 (resnest50: 67 ms against 58 ms at batch 1 here); U8S8 runs in 21 ms.

In both, the split-attention gate (``fc1``, ``fc2``, the radix softmax) and the classifier stay
in FP32: they are a few 1x1 convs on a 1x1 map, quantizing them bought 0-3% speed and cost logit
accuracy on the digits model, and TensorRT has no INT8 softmax anyway.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import _deps
from resnest_deploy._io import external_tensors

#: node-name patterns kept in FP32 by default: the attention gate and the classifier
KEEP_FP32_NODES: tuple[str, ...] = (r"/conv2/fc[12]/", r"/rsoftmax/", r"^/fc/")
#: what each target's quantizer offers: ONNX Runtime (CPU) four methods, ModelOpt (TensorRT) two
METHODS = ("max", "entropy", "percentile", "distribution")
TENSORRT_METHODS = ("max", "entropy")
_ORT_METHODS = {
    "max": "MinMax",
    "entropy": "Entropy",
    "percentile": "Percentile",
    "distribution": "Distribution",
}


def matching_nodes(model: Any, patterns: Sequence[str]) -> list[str]:
    regexes = [re.compile(p) for p in patterns]
    return [n.name for n in model.graph.node if any(r.search(n.name) for r in regexes)]


def cpu_has_vnni() -> bool:
    """U8S8 saturates on AVX2 without VNNI; ONNX Runtime's fix there is 7-bit weights (reduce_range)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "vnni" in flags or "aarch64" in os.uname().machine


@contextlib.contextmanager
def _ort_quantization_restored() -> Iterator[None]:
    """ModelOpt monkeypatches ONNX Runtime's calibrators process-wide and edits its operator
    registries (which ops get Q/DQ, ReLU fusion), which changed a later ``quantize_static`` in the
    same process (the pipeline's CPU file kept 19 ReLUs and 10 more Q/DQ pairs than the same
    conversion run alone); put all of it back when it is done."""
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer, quantize, registry

    owners: list[Any] = [calibrate, quantize]
    owners += [
        getattr(calibrate, n)
        for n in dir(calibrate)
        if n.endswith(("Calibrater", "CalibraterBase", "Collector"))
    ]
    owners += [base_quantizer.BaseQuantizer, qdq_quantizer.QDQQuantizer]
    saved = [(o, dict(vars(o))) for o in owners]
    tables = [getattr(registry, n) for n in dir(registry) if n.endswith("Registry")]
    saved_tables = [(t, dict(t)) for t in tables if isinstance(t, dict)]
    try:
        yield
    finally:
        for table, entries in saved_tables:
            table.clear()
            table.update(entries)
        for owner, attrs in saved:
            for name, value in attrs.items():
                if vars(owner).get(name) is not value and name not in ("__dict__", "__weakref__"):
                    setattr(owner, name, value)


def quantize_tensorrt(
    src: Path, dst: Path, calib: np.ndarray, method: str, keep_fp32_nodes: Sequence[str]
) -> None:
    mq = _deps.require("modelopt.onnx.quantization")
    onnx = _deps.require("onnx")
    model = onnx.load(src, load_external_data=False)
    excluded = matching_nodes(model, keep_fp32_nodes)
    with _ort_quantization_restored(), _private_copy(src, model) as copy:
        mq.quantize(
            os.fspath(copy),
            quantize_mode="int8",
            calibration_data={"input": calib},
            calibration_method=method,
            calibration_eps=["cpu"],
            nodes_to_exclude=[f"^{re.escape(n)}$" for n in excluded] or None,
            high_precision_dtype="fp32",
            output_path=os.fspath(dst),
            log_level="ERROR",
        )


@contextlib.contextmanager
def _private_copy(src: Path, model: Any) -> Iterator[Path]:
    """ModelOpt's quantize rewrites the model it is given in place (shape inference, opset
    updates): hand it a copy in a temp folder, with any external-data files beside it, so the
    user's FP32 file is never modified."""
    with tempfile.TemporaryDirectory(prefix="resnest-deploy-") as tmp:
        copy = Path(tmp) / src.name
        shutil.copyfile(src, copy)
        for tensor in external_tensors(model):
            name = next(e.value for e in tensor.external_data if e.key == "location")
            if not (Path(tmp) / name).exists():
                shutil.copyfile(src.parent / name, Path(tmp) / name)
        yield copy


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over an array."""

    def __init__(self, x: np.ndarray, batch: int = 16) -> None:
        self._it = iter(range(0, len(x), batch))
        self._x, self._batch = x, batch

    def get_next(self) -> dict[str, np.ndarray] | None:
        i = next(self._it, None)
        return None if i is None else {"input": self._x[i : i + self._batch]}

    def rewind(self) -> None:
        self._it = iter(range(0, len(self._x), self._batch))


def quantize_cpu(
    src: Path,
    dst: Path,
    calib: np.ndarray,
    method: str,
    keep_fp32_nodes: Sequence[str],
    reduce_range: bool | None = None,
) -> dict[str, Any]:
    onnx = _deps.require("onnx")
    q = _deps.require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = dst.with_name(dst.name + ".prep.onnx")
    try:
        quant_pre_process(os.fspath(src), os.fspath(prepped), skip_symbolic_shape=True)
        excluded = matching_nodes(onnx.load(prepped), keep_fp32_nodes)
        reduce_range = not cpu_has_vnni() if reduce_range is None else reduce_range
        q.quantize_static(
            os.fspath(prepped),
            os.fspath(dst),
            _Batches(calib),
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            calibrate_method=getattr(q.CalibrationMethod, _ORT_METHODS[method]),
            nodes_to_exclude=excluded,
        )
    finally:
        prepped.unlink(missing_ok=True)
    return {"activations": "uint8 asymmetric", "weights": "int8 per-channel", "reduce_range": reduce_range}
