"""FP32 ONNX to FP16 / INT8 ONNX, measured against its source on inputs calibration never saw.

>>> from resnest_deploy.precision import convert, calibration
>>> report = convert("m.onnx", precision="int8", target="cpu",
...                  calib=calibration.from_images("val/", transform))

TensorRT 11 and TensorRT-RTX take precision from the file (strongly typed FP16, explicit Q/DQ),
so this is where reduced precision is decided for every backend.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnest_deploy import _deps, _verbosity, metadata
from resnest_deploy._io import artifact_pair, prepare_outputs, sha256_file
from resnest_deploy.compare import TOLERANCES, UNCHECKED, Metrics, Tolerance, assert_close, compare
from resnest_deploy.errors import ArtifactError, ResnestDeployError
from resnest_deploy.formats import InputForm
from resnest_deploy.precision import calibration, fp16, int8, search
from resnest_deploy.precision.calibration import CalibrationData
from resnest_deploy.precision.job import (
    CONVERSION_VERSION,
    MODELS_CACHE,
    ConversionError,
    Job,
    cached_convert,
    quiet_modelopt,
    random_inputs,
)
from resnest_deploy.precision.source import default_output, input_hw, read_source
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
from resnest_deploy.runners.options import RunnerOptions

if TYPE_CHECKING:
    from resnest_deploy.executors import Executor

__all__ = [
    "CONVERSION_VERSION",
    "MODELS_CACHE",
    "PRECISIONS",
    "TARGETS",
    "CalibrationData",
    "ConversionError",
    "ConversionReport",
    "calibration",
    "calibration_for",
    "convert",
    "default_output",
    "input_hw",
    "measure_parity",
    "read_source",
]

PRECISIONS = ("fp16", "int8")
TARGETS = ("tensorrt", "cpu")


@dataclass
class ConversionReport:
    path: Path
    sidecar: Path
    precision: str
    target: str
    parity: Metrics
    seconds: float
    op_counts: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def gate(self) -> dict[str, Any]:
        """How the parity was judged (``gate_record``): judged or not, and against which bar."""
        return dict(self.metadata.get("parity", {}).get("gate") or {})


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


def calibration_for(
    src: str | os.PathLike[str],
    calib_dir: str | os.PathLike[str] | None = None,
    calib_npy: str | os.PathLike[str] | None = None,
    count: int = calibration.DEFAULT_COUNT,
    use_cache: bool = True,
    advance: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> CalibrationData | None:
    """The calibration set for an export: its arch's transform at its input size."""
    meta = read_source(src)
    return calibration.resolve(
        meta["arch"],
        input_hw(meta),
        calib_dir,
        calib_npy,
        count,
        use_cache=use_cache,
        advance=advance,
        on_total=on_total,
    )


def convert(
    src: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    precision: str,
    target: str = "tensorrt",
    calib: CalibrationData | None = None,
    method: str = "max",
    keep_fp32_nodes: Sequence[str] | None = None,
    keep_fp32_ops: Sequence[str] = fp16.KEEP_FP32_OPS,
    tolerance: Tolerance | None = None,
    use_cache: bool = True,
    max_drop: float | None = None,
    cpu_isa: str = "any",
    progress: Callable[[str], None] | None = None,
    executor: Executor | None = None,
    verbose: bool = False,
) -> ConversionReport:
    """Convert ``src`` and check the result against it; raise (writing nothing) if it drifted.

    A calibrated model is cached under the key (source sha256, calibration data, settings, tool
    versions), so rerunning with the same data skips calibration, the slow part (resnest50 on 256
    images: about 45 s here); the parity check always runs.

    INT8 only: ``method="auto"`` calibrates with every method the target's quantizer offers and keeps
    the best on the held-out inputs; ``max_drop`` (points of top-1, or of top-1 agreement with FP32
    when the data has no labels) keeps the most sensitive units in FP32 until the budget is met
    (``precision.search``).

    CPU target only: ``cpu_isa`` is the CPUs the file will run on, ``"any"`` (7-bit weights, exact on
    every CPU) or ``"vnni"`` (8-bit weights, slightly more accurate, saturating on x86 without VNNI).

    ``executor`` (``resnest_deploy.executors``, e.g. a Ray cluster's) runs the search's independent
    per-unit trials; calibration, the search's sequential steps and the checks stay here.

    ``tolerance`` replaces the precision's default bar (recorded, with what the default would have
    said). A source made from random weights is measured but not judged: its near-uniform logits make
    any INT8 file look far from them (``metadata.random_weights``). ``verbose`` lets the quantizers'
    own progress bars and logs through.
    """
    say = progress or (lambda _msg: None)
    verbose = verbose or _verbosity.verbose()
    if precision not in PRECISIONS:
        raise ConversionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if target not in TARGETS:
        raise ConversionError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if cpu_isa not in int8.CPU_ISAS:
        raise ConversionError(f"unknown --cpu-isa {cpu_isa!r}; choose one of {', '.join(int8.CPU_ISAS)}")
    if cpu_isa != "any" and (target, precision) != ("cpu", "int8"):
        raise ConversionError("--cpu-isa is for --target cpu INT8 files (their weights); drop it here")
    if precision == "fp16" and target == "cpu":
        raise ConversionError(
            "FP16 is a GPU format (ONNX Runtime's CPU kernels run it slower than FP32); "
            "use --target tensorrt, or --precision int8 --target cpu for a faster CPU model"
        )
    if precision == "int8" and calib is None:
        raise ConversionError(
            "INT8 needs calibration data; pass --calib-dir DIR (images) or --calib-npy FILE"
        )
    allowed = int8.METHODS if target == "cpu" else int8.TENSORRT_METHODS
    if precision == "int8" and method not in (*allowed, "auto"):
        raise ConversionError(
            f"calibration method {method!r} is not available for {target}; use {', '.join(allowed)}"
        )
    onnx = _deps.require("onnx")
    started = time.perf_counter()
    src = Path(src)
    meta = read_source(src)
    src_sha256 = sha256_file(src)
    hw = input_hw(meta)
    if calib is not None and tuple(calib.calib.shape[2:]) != hw:
        raise ArtifactError(f"calibration inputs are {calib.calib.shape[2:]}, the model wants {hw}")
    default_keep = fp16.KEEP_FP32_NODES if precision == "fp16" else int8.KEEP_FP32_NODES
    keep = list(default_keep if keep_fp32_nodes is None else keep_fp32_nodes)
    output = Path(output) if output else default_output(src, precision, target)
    prepare_outputs([output], [src])

    random = metadata.random_weights(meta)
    with artifact_pair(output) as pair, quiet_modelopt(verbose):
        tmp = pair.tmp
        form = InputForm.of(meta)

        def job_for(m: str) -> Job:
            ops = tuple(keep_fp32_ops)
            return Job(src, src_sha256, precision, target, calib, m, keep, ops, form, hw, cpu_isa)

        skipped: dict[str, str] = {}
        if random and precision == "int8" and method == "auto":
            # which method is best cannot be told from near-uniform logits either: the default, once
            skipped["calibration_methods_skipped"] = f"random weights: {allowed[0]}, the default, used"
            say(f"calibration: {allowed[0]} (auto skipped: random weights)")
            method = allowed[0]
        if random and max_drop is not None:
            skipped["search_skipped"] = (
                "random weights: which units INT8 hurts cannot be told from near-uniform logits"
            )
            say(f"INT8 search skipped ({skipped['search_skipped']}); every unit stays INT8")
            max_drop = None
        job = job_for(method if method != "auto" else allowed[0])
        metric = None
        if precision == "int8" and (method == "auto" or max_drop is not None):
            assert calib is not None
            metric = _held_out_metric(src, job, calib, target)
        if method == "auto":
            assert metric is not None
            tried = []
            for m in allowed:
                candidate, candidate_settings = cached_convert(job_for(m), tmp, say, use_cache, verbose)
                tried.append((metric(candidate), m, candidate, candidate_settings))
                say(f"calibration {m}: {tried[-1][0]:.2f} ({metric.name})")
            best = max(tried, key=lambda t: t[0])  # ties: the first, max (the quantizers' default)
            _, chosen, model, settings = best
            job = job_for(chosen)
            settings["calibration_methods"] = {
                "metric": metric.name,
                "results": [{"method": m, "metric": round(v, 3)} for v, m, _, _ in tried],
                "chosen": chosen,
            }
        else:
            model, settings = cached_convert(job, tmp, say, use_cache, verbose)
        settings |= skipped
        if max_drop is not None and metric is not None:
            plain = model
            model, found = search.search(model, metric, max_drop, say, executor)
            settings["search"] = found.as_dict()
            if found.kept_fp32:
                cost = _latency_cost(plain, model, metric.x[:1], target, say)
                if cost:
                    settings["search"]["latency"] = cost
        made = metadata.graph_precision(model)
        if made != precision:
            raise ConversionError(
                f"the {precision} conversion left a {made} graph (no node was converted: does "
                "--keep-fp32 match everything?); keep fewer nodes in FP32"
            )
        x = job.feed(calib.holdout if calib is not None else random_inputs(job))
        inputs = (
            f"{len(x)} held-out calibration inputs" if calib is not None else f"{len(x)} seeded random inputs"
        )
        say(f"measuring against the FP32 source in ONNX Runtime on {inputs}")
        reference = metric.reference if metric is not None else None  # the same held-out inputs
        parity, measured = measure_parity(src, model, x, precision, target, reference)
        bar = UNCHECKED if random else tolerance or TOLERANCES[precision]
        assert_close(parity, bar, f"{precision} ({target}) model")
        if random:
            say(f"{src.name} is {metadata.RANDOM_WEIGHTS_NOTE}")

        out_meta = {
            **meta,
            "precision": precision,
            "target": target,
            "source": {"file": src.name, "sha256": src_sha256},
            "conversion": settings,
            "parity": {
                "reference": f"{src.name} (fp32) in onnxruntime cpu",
                "arithmetic": measured,
                "inputs": inputs,
                "metrics": parity.as_dict(),
                "gate": gate_record(parity, precision, tolerance, random),
            },
            "created": metadata.now(),
            "tools": metadata.tool_versions(),
        }
        metadata.embed(model, out_meta)
        onnx.save(model, tmp)
        out_meta |= metadata.file_and_graph(tmp, output.name, model)
        sidecar = pair.write_sidecar(out_meta)
    ops = out_meta["graph"]["op_counts"]
    return ConversionReport(
        output, sidecar, precision, target, parity, time.perf_counter() - started, ops, out_meta
    )


def _latency_cost(
    plain: Any, chosen: Any, x: np.ndarray, target: str, say: Callable[[str], None]
) -> dict[str, Any] | None:
    """What keeping units in FP32 costs at batch 1, the two files taking turns in one process: for
    the CPU target in ONNX Runtime and (when installed) OpenVINO; for TensorRT through ONNX Runtime's
    TensorRT provider when a GPU is at hand (else the FP32 layer count is the cost known)."""
    from resnest_deploy import timing
    from resnest_deploy._cuda import gpu_count
    from resnest_deploy.loaders import open_runner
    from resnest_deploy.runners.openvino import OpenVINORunner

    backends: dict[str, Callable[[Path], Any]] = {}
    if target == "cpu":
        backends["onnxruntime-cpu"] = lambda p: OnnxRuntimeRunner(p)
        if _deps.has("openvino"):
            backends["openvino-cpu-f32"] = lambda p: OpenVINORunner(p)
    elif gpu_count() > 0:  # ONNX Runtime lists its GPU providers whether or not a GPU is there
        backends["onnxruntime-tensorrt"] = lambda p: open_runner(p, RunnerOptions(provider="tensorrt"))
    if not backends:
        return None
    say(f"timing the plain and the searched INT8 file ({', '.join(backends)})")
    onnx = _deps.require("onnx")
    cost: dict[str, Any] = {"batch": 1, "cpu_flags": metadata.cpu_flags()}
    with tempfile.TemporaryDirectory(prefix="resnest-deploy-") as tmp:
        paths = {"plain": Path(tmp) / "plain.onnx", "searched": Path(tmp) / "searched.onnx"}
        onnx.save(plain, paths["plain"])
        onnx.save(chosen, paths["searched"])
        for backend, make in backends.items():
            try:
                with make(paths["plain"]) as a, make(paths["searched"]) as b:
                    ms = timing.interleaved({"plain": a, "searched": b}, x)
            except ResnestDeployError as e:  # a backend that cannot run the file: say so, not fail
                cost[backend] = {"error": str(e)}
                continue
            cost[backend] = {
                "plain_ms": round(ms["plain"], 4),
                "searched_ms": round(ms["searched"], 4),
                "ratio": round(ms["searched"] / ms["plain"], 3),
            }
    return cost


def _held_out_metric(src: Path, job: Job, calib: CalibrationData, target: str) -> search.Metric:
    """Top-1 on the held-out inputs (against their labels, else agreement with the FP32 file), run
    the way the target runs the file."""
    onnx = _deps.require("onnx")
    x = job.feed(calib.holdout)
    with OnnxRuntimeRunner(src, name="source") as ref:
        reference = ref.infer_batched(x, 64)
    return search.Metric(x, calib.holdout_labels, reference, target == "tensorrt", onnx.load(src))


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
