"""One conversion: the job (which is also its cache key), the quantizer or caster that runs it, and the
verified cache of calibrated models. The orchestration around it is ``precision.convert``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import _deps, data, metadata
from resnest_deploy.cache import Cache
from resnest_deploy.errors import ConversionError, ResnestDeployError, first_line
from resnest_deploy.formats import InputForm
from resnest_deploy.precision import fp16, int8
from resnest_deploy.precision.calibration import CalibrationData
from resnest_deploy.precision.config import ConversionConfig

PARITY_RANDOM = 16  # seeded inputs when no held-out images exist (FP16 without calibration images)


@contextlib.contextmanager
def quiet_modelopt(verbose: bool = False) -> Iterator[None]:
    """ModelOpt logs every node it touches, and an NVML error on machines without a GPU; its child
    loggers set their own levels, so only the global switch silences them (``verbose``, or the
    root ``--verbose``: left on)."""
    from resnest_deploy import _verbosity

    if verbose or _verbosity.verbose():
        yield
        return
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@dataclass(frozen=True)
class Job:
    """One conversion request, which is also what its cached result is keyed by: the source, its
    calibration data and the config's fields (with one concrete calibration method, never auto)."""

    src: Path
    src_sha256: str
    config: ConversionConfig
    calib: CalibrationData | None
    #: the source's input form and size: calibration data (normalised NCHW) is fed to it in its form
    form: InputForm
    hw: tuple[int, int]
    #: what cross-layer equalization did to ``src`` before calibration (``precision.equalizing``), for
    #: the sidecar; not part of the key (``config.equalize`` is)
    equalization: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def precision(self) -> str:
        return str(self.config.precision)

    @property
    def target(self) -> str:
        return str(self.config.target)

    @property
    def method(self) -> str:
        return str(self.config.method)

    @property
    def keep(self) -> list[str]:
        return self.config.keep()

    @property
    def keep_fp32_ops(self) -> tuple[str, ...]:
        return self.config.keep_fp32_ops

    @property
    def cpu_isa(self) -> str:
        """CPU target: the CPUs the file is made for, which decides 7- or 8-bit weights."""
        return str(self.config.cpu_isa)

    def feed(self, x: np.ndarray) -> np.ndarray:
        return self.form.from_normalised(x)

    def cache_key(self) -> str:
        """Every setting that changes the converted graph, and the tools that make it."""
        assert self.calib is not None
        parts: list[Any] = [
            CONVERSION_VERSION,
            self.src_sha256,
            self.calib.digest(),
            *self.config.key(),
            metadata.tool_versions(),
        ]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


#: calibrated models, keyed by ``_Job.cache_key``. CONVERSION_VERSION changes when the same inputs
#: would convert differently (2: calibration data fed to the graph in its own input form; 3: ONNX
#: Runtime's registries restored after ModelOpt, which had changed CPU graphs made after it; 4: the CPU
#: target's weights follow ``cpu_isa``, not the converting machine; 5: TensorRT-target weights stored as
#: INT8; 6: nodes kept in FP32 read float inputs, ``int8.float_inputs``), so entries made by earlier code
#: are misses, not reused.
CONVERSION_VERSION = 6
MODELS_CACHE = Cache("calib", ".onnx")


def cached_convert(
    job: Job, tmp: Path, say: Callable[[str], None], use_cache: bool, verbose: bool = False
) -> tuple[Any, dict[str, Any]]:
    model, settings = _cached_convert(job, tmp, say, use_cache, verbose)
    if job.equalization is not None:
        settings = settings | {"equalization": job.equalization}
    return model, settings


def _cached_convert(
    job: Job, tmp: Path, say: Callable[[str], None], use_cache: bool, verbose: bool
) -> tuple[Any, dict[str, Any]]:
    if job.calib is None or not use_cache:
        return _convert(job, tmp, say, verbose)
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
    model, settings = _convert(job, tmp, say, verbose)
    MODELS_CACHE.put(key, settings, model.SerializeToString())
    return model, settings


def _convert(
    job: Job, tmp: Path, say: Callable[[str], None], verbose: bool = False
) -> tuple[Any, dict[str, Any]]:
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
            x = job.calib.calib if job.calib is not None else random_inputs(job)
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
    x = job.feed(calib.calib)
    # ONNX Runtime's histogram calibrators print() their progress (not onto a --json stdout), and
    # ModelOpt's entropy calibrator draws a tqdm bar on stderr per tensor (256 lines in a log for
    # resnest14d_digits): both stay off the terminal unless asked for
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(io.StringIO())
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet:
            if job.target == "tensorrt":
                settings["scheme"] = int8.quantize_tensorrt(job.src, tmp, x, job.method, job.keep)
                settings["tool"] = "modelopt.onnx.quantization"
            else:
                settings["scheme"] = int8.quantize_cpu(job.src, tmp, x, job.method, job.keep, job.cpu_isa)
                settings["tool"] = "onnxruntime.quantization"
    except ResnestDeployError:
        raise
    except Exception as e:
        raise ConversionError(f"INT8 quantization failed: {first_line(e)}") from e
    return _deps.require("onnx").load(tmp), settings


def random_inputs(job: Job) -> np.ndarray:
    """Seeded normalised inputs; random pixels when the file takes frames, so none is clipped."""
    form = job.form
    if form.takes_frames and form.mean is not None and form.std is not None:
        return data.random_frames(PARITY_RANDOM, job.hw, form.mean, form.std)
    return np.random.default_rng(0).standard_normal((PARITY_RANDOM, 3, *job.hw), dtype=np.float32)
