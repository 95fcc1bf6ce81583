"""FP32 ONNX to FP16 / INT8 ONNX, measured against its source on inputs calibration never saw.

>>> from resnest_deploy.precision import ConversionConfig, convert, calibration
>>> report = convert("m.onnx", None, ConversionConfig("int8", target="cpu"),
...                  calib=calibration.from_images("val/", transform))

TensorRT 11 and TensorRT-RTX take precision from the file (strongly typed FP16, explicit Q/DQ),
so this is where reduced precision is decided for every backend. The modules: ``config`` (what to
make, validated), ``conversion`` (the orchestration), ``job`` (one quantizer run and its cache),
``parity``, ``search``, ``cost`` (what the search's FP32 units cost), ``results`` (typed reports).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resnest_deploy.precision import calibration
    from resnest_deploy.precision.calibration import CalibrationData, EvaluationSet
    from resnest_deploy.precision.config import (
        PRECISIONS,
        TARGETS,
        CalibrationOptions,
        ConversionConfig,
        ConversionError,
        CpuIsa,
        Method,
        Reduced,
        RunOptions,
        Target,
    )
    from resnest_deploy.precision.conversion import convert
    from resnest_deploy.precision.cost import LatencyCost, Timing
    from resnest_deploy.precision.job import CONVERSION_VERSION, MODELS_CACHE
    from resnest_deploy.precision.parity import gate_record, measure_parity
    from resnest_deploy.precision.results import (
        CONVERSION_SCHEMA,
        ConversionReport,
        Evaluation,
        MethodScore,
        Tournament,
    )
    from resnest_deploy.precision.source import default_output, input_hw, read_source

# Imported on first use (PEP 562), so that a command which only needs the config's choices (every
# CLI start) does not pay for the conversion machinery and numpy.
_HOMES = {
    "calibration": "",
    **dict.fromkeys(("CalibrationData", "EvaluationSet"), "calibration"),
    **dict.fromkeys(
        (
            "PRECISIONS",
            "TARGETS",
            "CalibrationOptions",
            "ConversionConfig",
            "ConversionError",
            "CpuIsa",
            "Method",
            "Reduced",
            "RunOptions",
            "Target",
        ),
        "config",
    ),
    "convert": "conversion",
    **dict.fromkeys(("LatencyCost", "Timing"), "cost"),
    **dict.fromkeys(("CONVERSION_VERSION", "MODELS_CACHE"), "job"),
    **dict.fromkeys(("gate_record", "measure_parity"), "parity"),
    **dict.fromkeys(
        ("CONVERSION_SCHEMA", "ConversionReport", "Evaluation", "MethodScore", "Tournament"),
        "results",
    ),
    **dict.fromkeys(("default_output", "input_hw", "read_source"), "source"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{home or name}")
    return module if not home else getattr(module, name)


__all__ = [
    "CONVERSION_SCHEMA",
    "CONVERSION_VERSION",
    "MODELS_CACHE",
    "PRECISIONS",
    "TARGETS",
    "CalibrationData",
    "CalibrationOptions",
    "ConversionConfig",
    "ConversionError",
    "ConversionReport",
    "CpuIsa",
    "Evaluation",
    "EvaluationSet",
    "LatencyCost",
    "Method",
    "MethodScore",
    "Reduced",
    "RunOptions",
    "Target",
    "Timing",
    "Tournament",
    "calibration",
    "calibration_for",
    "convert",
    "default_output",
    "gate_record",
    "input_hw",
    "measure_parity",
    "read_source",
]


def calibration_for(
    src: str | os.PathLike[str],
    options: CalibrationOptions | None = None,
    use_cache: bool = True,
    advance: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> CalibrationData | None:
    """The calibration set for an export: its arch's transform at its input size, with the
    evaluation set of ``options.eval_dir`` (labels checked against the export's classes)."""
    from resnest_deploy.precision import calibration
    from resnest_deploy.precision.config import CalibrationOptions
    from resnest_deploy.precision.source import input_hw, read_source

    options = options or CalibrationOptions()
    meta = read_source(src)
    classes = meta.get("num_classes")
    return calibration.resolve(
        meta["arch"],
        input_hw(meta),
        options.calib_dir,
        options.calib_npy,
        options.count,
        use_cache=use_cache,
        advance=advance,
        on_total=on_total,
        eval_dir=options.eval_dir,
        num_classes=int(classes) if isinstance(classes, int) else None,
    )
