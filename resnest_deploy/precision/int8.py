"""INT8 with explicit Q/DQ, for two consumers that want different graphs.

* ``tensorrt``: NVIDIA ModelOpt's ONNX PTQ places Q/DQ where TensorRT fuses them into its INT8
  convolutions (grouped ones included; per-channel symmetric weights). Everything it leaves
  unquantized stays FP32: ModelOpt's ``high_precision_dtype`` defaults to FP16, which on the digits
  model costs 0.7 points of accuracy and drops logit cosine to 0.974 (0.998 with FP32). Weights are
  stored as INT8 initializers read by a ``DequantizeLinear`` (ModelOpt's ``dq_only``, the form
  TensorRT and ModelOpt's own exports use): by default ModelOpt leaves the FP32 weights behind a
  QuantizeLinear/DequantizeLinear pair, an INT8 file as large as FP32 (resnest50: 105 MiB).
* ``cpu``: ONNX Runtime's own quantizer with uint8 activations and int8 per-channel weights
  (U8S8), which its CPU kernels fuse into QLinearConv. ONNX Runtime's default, int8 activations,
  leaves the grouped 3x3 convs and a third of the 1x1s in float behind DequantizeLinear nodes and
  runs *slower* than FP32 (resnest50: 67 ms against 58 ms at batch 1 here); U8S8 runs in 21 ms.
  Weights are 7-bit by default (``cpu_isa="any"``): on x86 CPUs without VNNI, ONNX Runtime's U8S8
  kernels add pairs of uint8 x int8 products in int16 (``vpmaddubsw``), which saturates with 8-bit
  weights. What saturates is decided by the CPU that *runs* the file, not the one that made it: a
  file with 8-bit weights made on a VNNI machine, run on an emulated Haswell, dropped its worst
  logit cosine from 0.998 to 0.856 on the digits model; the 7-bit file computed the same logits on
  both. ``cpu_isa="vnni"`` keeps 8-bit weights for fleets known to have VNNI (or ARM).

In both, the split-attention gate (``fc1``, ``fc2``, the radix softmax) and the classifier stay
in FP32: they are a few 1x1 convs on a 1x1 map; quantizing them bought no speed beyond run-to-run
noise on resnest50 (``benchmarks/int8_cpu_choices.py``) and cost logit accuracy on the digits
model, and TensorRT has no INT8 softmax anyway.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import _deps
from resnest_deploy.models.config import RESNEST_PARTS
from resnest_deploy.onnx_files import external_tensors
from resnest_deploy.precision import config, qdq

# what each target's quantizer offers and the CPUs a CPU-target file is made for: defined once there
METHODS = config.CPU_METHODS
TENSORRT_METHODS = config.TENSORRT_METHODS
CPU_ISAS = config.CPU_ISAS

#: node-name patterns kept in FP32 by default: the attention gate and the classifier, as the
#: registry names them (``models.parts``)
KEEP_FP32_NODES: tuple[str, ...] = RESNEST_PARTS.keep_fp32_nodes
_ORT_METHODS = {
    "max": "MinMax",
    "entropy": "Entropy",
    "percentile": "Percentile",
    "distribution": "Distribution",
}


def matching_nodes(model: Any, patterns: Sequence[str]) -> list[str]:
    regexes = [re.compile(p) for p in patterns]
    return [n.name for n in model.graph.node if any(r.search(n.name) for r in regexes)]


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
    src: Path,
    dst: Path,
    calib: np.ndarray,
    method: str,
    keep_fp32_nodes: Sequence[str],
    int8_weights: bool = True,
) -> dict[str, Any]:
    """ModelOpt's Q/DQ placement and ranges; ``percentile``, which ModelOpt's INT8 does not offer,
    is given to it as ranges: ONNX Runtime's percentile calibrator measures them and ModelOpt reads
    them as a TensorRT calibration cache (the format TensorRT's own calibrators write).
    ``int8_weights=False`` keeps ModelOpt's default FP32 weights behind Q/DQ (for the benchmark that
    compares the two: ``benchmarks/int8_weights.py``)."""
    mq = _deps.require("modelopt.onnx.quantization")
    onnx = _deps.require("onnx")
    model = onnx.load(src, load_external_data=False)
    excluded = matching_nodes(model, keep_fp32_nodes)
    stored = "int8 (DequantizeLinear only)" if int8_weights else "float32 behind QuantizeLinear"
    scheme: dict[str, Any] = {
        "activations": "int8 symmetric",
        "weights": f"int8 per-channel, stored as {stored}",
    }
    with _ort_quantization_restored(), _private_copy(src, model) as copy:
        cache = None
        if method == "percentile":
            amax = percentile_ranges(copy, calib)
            cache = copy.with_name("percentile.cache")
            written = write_calibration_cache(amax, cache)
            scheme["ranges"] = (
                f"{PERCENTILE}th percentile of |x| (onnxruntime's PercentileCalibrater), "
                "given to ModelOpt as a TensorRT calibration cache"
            )
        mq.quantize(
            os.fspath(copy),
            quantize_mode="int8",
            calibration_data={"input": calib},
            calibration_method="max" if method == "percentile" else method,
            calibration_cache_path=os.fspath(cache) if cache else None,
            calibration_eps=["cpu"],
            nodes_to_exclude=[f"^{re.escape(n)}$" for n in excluded] or None,
            high_precision_dtype="fp32",
            dq_only=int8_weights,  # weights stored as INT8: a quarter of the bytes, the same values
            output_path=os.fspath(dst),
            log_level="ERROR",
        )
    scheme["fp32_inputs"] = float_inputs(dst, excluded)
    if cache is not None:
        quantized = onnx.load(dst, load_external_data=False)
        applied = {n.input[0] for n in quantized.graph.node if n.op_type == "QuantizeLinear"} & written
        scheme["percentile_ranges_applied"] = len(applied)
        if not applied:
            raise ValueError("no percentile range matched a quantized tensor; use method=max")
    return scheme


def float_inputs(dst: Path, excluded: Sequence[str]) -> str:
    """FP32 in and out: both quantizers leave a Q/DQ pair on the input of a node they exclude when
    the tensor's producer is quantized (ONNX Runtime), or through a quantized pool, so an outlier
    channel that made the node sensitive was still rounded to 8 bits. The excluded nodes read the
    float tensor instead; a pair an INT8 consumer still reads stays for it. Rewrites ``dst``; what
    it did, in words, for the sidecar."""
    onnx = _deps.require("onnx")
    model = onnx.load(dst)
    before = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    fixed = qdq.layers_without_qdq(model, set(excluded))
    removed = before - sum(n.op_type == "QuantizeLinear" for n in fixed.graph.node)
    if removed or len(fixed.graph.node) != len(model.graph.node):
        onnx.save(fixed, dst)
    return f"the {len(excluded)} nodes kept in FP32 read float inputs ({removed} quantizer(s) removed)"


#: the percentile of |activation| kept in range (ONNX Runtime's default); the rest is clipped
PERCENTILE = 99.999


def percentile_ranges(src: Path, calib: np.ndarray, percentile: float = PERCENTILE) -> dict[str, float]:
    """The symmetric range (amax) of every tensor of ``src``: ModelOpt quantizes only the tensors a
    calibration cache names, so it must name every one it would have quantized. Fed a few inputs at
    a time: ONNX Runtime's histogram calibrator holds every tensor of what one call is given."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="resnest-deploy-") as tmp:
        calibrator = create_calibrator(
            src,
            None,  # every op type
            Path(tmp) / "augmented.onnx",
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"symmetric": True, "percentile": percentile},
        )
        batches = _Batches(calib, _HISTOGRAM_BATCH)
        for i in range(len(batches)):  # a batch per pass, as quantize_cpu's CalibStridedMinMax
            batches.set_range(i, i + 1)
            calibrator.collect_data(batches)
        ranges = calibrator.compute_data()
    return {name: float(max(abs(d.range_value[0]), abs(d.range_value[1]))) for name, d in ranges.items()}


#: inputs per histogram pass (resnest50 at 224: about 1 GB of activations)
_HISTOGRAM_BATCH = 8


def write_calibration_cache(amax: dict[str, float], path: Path) -> set[str]:
    """TensorRT's calibration cache: a header line, then ``tensor: scale`` with the scale
    (amax / 127) as big-endian float32 hex. ModelOpt quantizes only the tensors a cache names, so a
    name the format cannot carry (``": "``, a newline) leaves that tensor in FP32; the names written
    are returned."""
    lines, written = ["TRT-100-EntropyCalibration2"], set()
    for name, a in sorted(amax.items()):
        if ": " in name or "\n" in name or not np.isfinite(a):
            continue
        lines.append(f"{name}: {struct.pack('!f', max(a, 1e-12) / 127.0).hex()}")
        written.add(name)
    path.write_text("\n".join(lines) + "\n")
    return written


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
    """ONNX Runtime's CalibrationDataReader protocol over an array, in batches; ``set_range``
    narrows it to some of them (``CalibStridedMinMax``)."""

    def __init__(self, x: np.ndarray, batch: int = 16) -> None:
        self._x, self._batch = x, batch
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self._x) // self._batch)

    def set_range(self, start_index: int, end_index: int) -> None:
        stop = min(end_index, len(self)) * self._batch
        self._it = iter(range(start_index * self._batch, stop, self._batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        i = next(self._it, None)
        return None if i is None else {"input": self._x[i : i + self._batch]}

    def rewind(self) -> None:
        self.set_range(0, len(self))


def quantize_cpu(
    src: Path,
    dst: Path,
    calib: np.ndarray,
    method: str,
    keep_fp32_nodes: Sequence[str],
    cpu_isa: str = "any",
) -> dict[str, Any]:
    onnx = _deps.require("onnx")
    q = _deps.require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = dst.with_name(dst.name + ".prep.onnx")
    try:
        quant_pre_process(os.fspath(src), os.fspath(prepped), skip_symbolic_shape=True)
        excluded = matching_nodes(onnx.load(prepped), keep_fp32_nodes)
        if cpu_isa not in CPU_ISAS:
            raise ValueError(f"unknown cpu_isa {cpu_isa!r}; choose one of {', '.join(CPU_ISAS)}")
        reduce_range = cpu_isa == "any"
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
            # a batch per pass: ONNX Runtime's histogram calibrators otherwise hold every tensor of
            # every calibration input at once (resnest50, 256 images: more memory than a 24 GiB box)
            extra_options={"CalibStridedMinMax": 1},
        )
    finally:
        prepped.unlink(missing_ok=True)
    fp32_inputs = float_inputs(dst, excluded)
    return {
        "activations": "uint8 asymmetric",
        "weights": "int8 per-channel, " + ("7-bit (reduce_range)" if reduce_range else "8-bit"),
        "reduce_range": reduce_range,
        "runs_exactly_on": "any x86 or ARM CPU" if reduce_range else "x86 CPUs with VNNI, and ARM",
        "fp32_inputs": fp32_inputs,
    }
