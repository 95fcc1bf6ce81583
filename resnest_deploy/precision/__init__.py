"""FP32 ONNX to FP16 / INT8 ONNX, measured against its source on inputs calibration never saw.

>>> from resnest_deploy.precision import convert, calibration
>>> report = convert("m.onnx", precision="int8", target="cpu",
...                  calib=calibration.from_images("val/", transform))

TensorRT 11 and TensorRT-RTX take precision from the file (strongly typed FP16, explicit Q/DQ),
so this is where reduced precision is decided for every backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import _deps, data, metadata
from resnest_deploy._io import artifact_pair, load_onnx, prepare_outputs, require_file, sha256_file
from resnest_deploy.cache import Cache
from resnest_deploy.compare import TOLERANCES, Metrics, Tolerance, assert_close, compare
from resnest_deploy.errors import ArtifactError, ResnestDeployError, first_line
from resnest_deploy.formats import InputForm
from resnest_deploy.precision import calibration, fp16, int8
from resnest_deploy.precision.calibration import CalibrationData
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

__all__ = [
    "PRECISIONS",
    "TARGETS",
    "CalibrationData",
    "ConversionReport",
    "calibration",
    "calibration_for",
    "convert",
    "read_source",
]

PRECISIONS = ("fp16", "int8")
TARGETS = ("tensorrt", "cpu")
PARITY_RANDOM = 16  # seeded inputs when no held-out images exist (FP16 without --calib-dir)


class ConversionError(ResnestDeployError):
    pass


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


def default_output(src: str | os.PathLike[str], precision: str, target: str) -> Path:
    """``m.onnx`` -> ``m.fp16.onnx``, ``m.int8.onnx`` (TensorRT) or ``m.int8-cpu.onnx``."""
    src = Path(src)
    suffix = precision if target == "tensorrt" else f"{precision}-{target}"
    return src.with_name(f"{src.stem}.{suffix}.onnx")


def read_source(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an FP32 resnest-deploy export and its metadata, or say why it is not one."""
    path = require_file(path, "ONNX file")
    meta = metadata.of_onnx(load_onnx(path), path)
    if not meta.get("arch"):
        raise ArtifactError(
            f"{path} is not a resnest-deploy export (no resnest_deploy metadata); "
            "create it with `resnest-deploy export --arch ...`"
        )
    if meta.get("precision") != "fp32":
        raise ArtifactError(f"{path} is already {meta.get('precision')}; convert the FP32 export instead")
    return meta


def input_hw(meta: dict[str, Any]) -> tuple[int, int]:
    shape = (meta.get("input") or {}).get("shape") or []
    if len(shape) != 4:
        raise ArtifactError(f"the export records input shape {shape}, not four dimensions; re-export it")
    h, w = InputForm.of(meta).hw(shape)
    if not (isinstance(h, int) and isinstance(w, int)):
        raise ArtifactError(
            "the export has a dynamic height/width; re-export without --dynamic-hw to quantize"
        )
    return h, w


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
    progress: Callable[[str], None] | None = None,
) -> ConversionReport:
    """Convert ``src`` and check the result against it; raise (writing nothing) if it drifted.

    A calibrated model is cached under the key (source sha256, calibration data, settings, tool
    versions), so rerunning with the same data skips calibration, the slow part (resnest50 on 256
    images: about 45 s here); the parity check always runs.
    """
    say = progress or (lambda _msg: None)
    if precision not in PRECISIONS:
        raise ConversionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if target not in TARGETS:
        raise ConversionError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if precision == "fp16" and target == "cpu":
        raise ConversionError(
            "FP16 is a GPU format (ONNX Runtime's CPU kernels run it slower than FP32); "
            "use --target tensorrt, or --precision int8 --target cpu for a faster CPU model"
        )
    if precision == "int8" and calib is None:
        raise ConversionError(
            "INT8 needs calibration data; pass --calib-dir DIR (images) or --calib-npy FILE"
        )
    allowed = int8.METHODS if target == "cpu" else ("max", "entropy")
    if precision == "int8" and method not in allowed:
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

    with artifact_pair(output) as pair, _quiet_modelopt():
        tmp = pair.tmp
        form = InputForm.of(meta)
        job = _Job(src, src_sha256, precision, target, calib, method, keep, tuple(keep_fp32_ops), form, hw)
        model, settings = _cached_convert(job, tmp, say, use_cache)
        made = metadata.graph_precision(model)
        if made != precision:
            raise ConversionError(
                f"the {precision} conversion left a {made} graph (no node was converted: does "
                "--keep-fp32 match everything?); keep fewer nodes in FP32"
            )
        say("measuring against the FP32 source in ONNX Runtime")
        x = job.feed(calib.holdout if calib is not None else _random_inputs(job))
        # A TensorRT-target file is measured as TensorRT computes it (Q/DQ as float ops, the same on
        # every CPU); a CPU-target file with the CPU's own int8 kernels, which is what will run it.
        fake_quant = precision == "int8" and target == "tensorrt"
        with (
            OnnxRuntimeRunner(src, name="source") as ref,
            OnnxRuntimeRunner(model.SerializeToString(), fake_quant=fake_quant) as cand,
        ):
            parity = compare(ref.infer_batched(x), cand.infer_batched(x))
        arithmetic = (
            "Q/DQ as float ops (onnxruntime session.disable_quant_qdq): TensorRT's, on any CPU"
            if fake_quant
            else "onnxruntime's kernels on this CPU ("
            + " ".join(f for f in metadata.machine()["cpu_flags"] if "vnni" in f or f == "avx2")
            + ")"
        )
        assert_close(parity, tolerance or TOLERANCES[precision], f"{precision} ({target}) model")

        out_meta = {
            **meta,
            "precision": precision,
            "target": target,
            "source": {"file": src.name, "sha256": src_sha256},
            "conversion": settings,
            "parity": {
                "reference": f"{src.name} (fp32) in onnxruntime cpu",
                "arithmetic": arithmetic,
                "inputs": "held-out calibration inputs"
                if calib is not None
                else f"{len(x)} seeded random inputs",
                "metrics": parity.as_dict(),
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


@contextlib.contextmanager
def _quiet_modelopt() -> Iterator[None]:
    """ModelOpt logs every node it touches, and an NVML error on machines without a GPU; its child
    loggers set their own levels, so only the global switch silences them."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@dataclass(frozen=True)
class _Job:
    """One conversion request, which is also what its cached result is keyed by."""

    src: Path
    src_sha256: str
    precision: str
    target: str
    calib: CalibrationData | None
    method: str
    keep: list[str]
    keep_fp32_ops: tuple[str, ...]
    #: the source's input form and size: calibration data (normalised NCHW) is fed to it in its form
    form: InputForm
    hw: tuple[int, int]

    def feed(self, x: np.ndarray) -> np.ndarray:
        return self.form.from_normalised(x)

    def cache_key(self) -> str:
        """Every setting that changes the converted graph, and the tools that make it."""
        assert self.calib is not None
        parts: list[Any] = [
            CONVERSION_VERSION,
            self.src_sha256,
            self.calib.digest(),
            self.precision,
            self.target,
            self.method,
            self.keep,
            list(self.keep_fp32_ops),
            int8.cpu_has_vnni() if self.target == "cpu" else None,  # decides reduce_range
            metadata.tool_versions(),
        ]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


#: calibrated models, keyed by ``_Job.cache_key``. CONVERSION_VERSION changes when the same inputs
#: would convert differently (2: calibration data fed to the graph in its own input form), so entries
#: made by earlier code are misses, not reused.
CONVERSION_VERSION = 2
MODELS_CACHE = Cache("calib", ".onnx")


def _cached_convert(
    job: _Job, tmp: Path, say: Callable[[str], None], use_cache: bool
) -> tuple[Any, dict[str, Any]]:
    if job.calib is None or not use_cache:
        return _convert(job, tmp, say)
    onnx = _deps.require("onnx")
    key = job.cache_key()
    entry = MODELS_CACHE.get(key)
    if entry is not None:
        try:
            model = onnx.load(entry.path)
            if metadata.graph_precision(model) == job.precision:
                say(f"reusing the model calibrated on the same data earlier ({entry.path})")
                return model, entry.info | {"calibration": job.calib.source, "cache": str(entry.path)}
        except Exception:  # a damaged entry is a miss
            pass
    model, settings = _convert(job, tmp, say)
    MODELS_CACHE.put(key, settings, model.SerializeToString())
    return model, settings


def _convert(job: _Job, tmp: Path, say: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The converted ``ModelProto`` and the settings that made it (for the sidecar)."""
    settings: dict[str, Any] = {"precision": job.precision, "target": job.target}
    if job.precision == "fp16":
        say("converting to FP16 with ModelOpt AutoCast")
        settings |= {
            "tool": "modelopt.autocast",
            "keep_fp32_ops": list(job.keep_fp32_ops),
            "keep_fp32_nodes": job.keep,
        }
        # AutoCast runs the graph once on random values, which a uint8 input cannot take: give it ours
        inputs = None
        if job.form.takes_frames:
            x = job.calib.calib if job.calib is not None else _random_inputs(job)
            inputs = job.feed(x)
        try:
            return fp16.to_fp16(job.src, job.keep_fp32_ops, job.keep, inputs), settings
        except ResnestDeployError:
            raise
        except Exception as e:
            raise ConversionError(f"FP16 conversion failed: {first_line(e)}") from e
    calib = job.calib
    assert calib is not None
    say(f"calibrating INT8 ({job.method}) on {len(calib.calib)} inputs for {job.target}")
    settings |= {"method": job.method, "keep_fp32_nodes": job.keep, "calibration": calib.source}
    try:
        if job.target == "tensorrt":
            int8.quantize_tensorrt(job.src, tmp, job.feed(calib.calib), job.method, job.keep)
            settings["tool"] = "modelopt.onnx.quantization"
            settings["scheme"] = {"activations": "int8 symmetric", "weights": "int8 per-channel"}
        else:
            settings["scheme"] = int8.quantize_cpu(job.src, tmp, job.feed(calib.calib), job.method, job.keep)
            settings["tool"] = "onnxruntime.quantization"
    except ResnestDeployError:
        raise
    except Exception as e:
        raise ConversionError(f"INT8 quantization failed: {first_line(e)}") from e
    return _deps.require("onnx").load(tmp), settings


def _random_inputs(job: _Job) -> np.ndarray:
    """Seeded normalised inputs; random pixels when the file takes frames, so none is clipped."""
    form = job.form
    if form.takes_frames and form.mean is not None and form.std is not None:
        return data.random_frames(PARITY_RANDOM, job.hw, form.mean, form.std)
    return np.random.default_rng(0).standard_normal((PARITY_RANDOM, 3, *job.hw), dtype=np.float32)
