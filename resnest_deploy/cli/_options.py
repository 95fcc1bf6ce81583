"""Options that `quantize`, `build` and `pipeline` share, declared once: the calibration group
(where the images come from, how many, which method), the conversion's choices (derived from
``precision.config``) and the parity bars."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.cli._common import CpuIsa, Method, Reduced, Target
from resnest_deploy.cli._progress import counting_bar
from resnest_deploy.compare import TOLERANCES, Tolerance
from resnest_deploy.precision import CalibrationOptions, calibration_for
from resnest_deploy.precision.calibration import CalibrationData
from resnest_deploy.precision.config import Equalize

PrecisionOpt = Annotated[
    Reduced, typer.Option("--precision", "-p", help="fp16 or int8 (an FP32 file is what `export` makes).")
]
TargetOpt = Annotated[
    Target,
    typer.Option(
        help="Who runs the file: 'tensorrt' (ModelOpt Q/DQ, strongly typed FP16) or 'cpu' "
        "(ONNX Runtime's fast U8S8 INT8 kernels)."
    ),
]
CalibDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder of images (jpg/png/webp, recursive) to calibrate INT8 on; preprocessed as the arch."
    ),
]
CalibNpyOpt = Annotated[
    Path | None, typer.Option(help="Preprocessed N x 3 x H x W float32 .npy instead of images.")
]
EvalDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Labelled folder (class folders 0, 1, ... or synset ids, as `eval` reads them) kept apart "
        "from --calib-dir: INT8 is judged on all of it (the drop with its 95% interval, --max-drop's "
        "search, the parity gate), and every --calib-dir image calibrates. Default: the held-out part "
        "of the calibration images, by their class folders when they have them, else agreement with FP32.",
    ),
]
CalibCountOpt = Annotated[
    int, typer.Option(min=1, help="Images to calibrate on (sampled with a fixed seed).")
]
_METHOD_HELP = (
    "Calibration method; distribution: --target cpu only (percentile for tensorrt is given to ModelOpt "
    "as a calibration cache). 'auto' tries every method the target's quantizer offers and keeps the best "
    "on the held-out images."
)
#: `quantize` converts once with max (the quantizers' own default, the fastest): one command, one file.
#: `pipeline` is the do-it-all path and compares every method (auto); the defaults differ on purpose.
MethodOpt = Annotated[
    Method, typer.Option("--method", "--calibration", help=_METHOD_HELP + " Default here: max, one pass.")
]
PipelineMethodOpt = Annotated[
    Method | None,
    typer.Option(
        "--method",
        "--calibration",
        help=_METHOD_HELP + " Default here: auto (quantize's default is max, one pass).",
    ),
]
MinCosineOpt = Annotated[
    float | None,
    typer.Option(
        min=-1.0,
        max=1.0,
        help="Accept a converted file whose mean logit cosine to FP32 is at least this, in place of the "
        "precision's default bar (int8 0.98, fp16 0.999); recorded in the file's metadata and said in "
        "the output. As `check --min-cosine`.",
    ),
]
MinTop1Opt = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Accept a converted file whose top-1 agreement with FP32 is at least this (0..1), in place "
        "of the default bar (int8 0.7, fp16 0.9; a lower top-1 bar lowers int8's top-5 bar of 0.85 to it); "
        "recorded and said as --min-cosine.",
    ),
]
CpuIsaOpt = Annotated[
    CpuIsa,
    typer.Option(
        help="--target cpu: the CPUs the file will run on. 'any': 7-bit weights, exact on every CPU. "
        "'vnni': 8-bit weights, a little more accurate, but ONNX Runtime's int8 kernels saturate on "
        "x86 CPUs without VNNI (AVX2-only, AMD Zen 1-3); only for fleets with VNNI or ARM."
    ),
]
MaxDropOpt = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=100.0,
        help="INT8 search: keep the most sensitive units (stem, block convs, attention gates, downsamples, "
        "classifier) in FP32 until top-1 is within this many points of FP32 (agreement with FP32 when "
        "the images have no labels).",
    ),
]
KeepOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--keep-fp32",
        help="Node-name regex kept in FP32 (repeatable); replaces the default: for INT8 the attention "
        "gate and the classifier, for FP16 none (its softmax stays FP32 regardless).",
    ),
]


EqualizeOpt = Annotated[
    Equalize,
    typer.Option(
        help="INT8: cross-layer equalization of the FP32 source before calibration (exact in FP32: it "
        "balances the channel ranges of convolutions joined by ReLU, so outlier channels stop taking the "
        "INT8 range). 'auto' converts with and without it and keeps the better on the held-out images. "
        "The equalized FP32 file alone: `resnest-deploy equalize`."
    ),
]


def user_tolerance(precision: str, min_cosine: float | None, min_top1: float | None) -> Tolerance | None:
    """The precision's default bar with what --min-cosine / --min-top1 replace; None: the default."""
    if min_cosine is None and min_top1 is None:
        return None
    return TOLERANCES[precision].with_bars(min_cosine, min_top1)


def calibration_with_bar(
    onnx: Path, options: CalibrationOptions, cache: bool, quiet: bool
) -> CalibrationData | None:
    """The calibration set of ``onnx``'s arch, with a progress bar while images are preprocessed."""
    what = "calibration and evaluation images" if options.eval_dir else "calibration images"
    with counting_bar(f"preprocessing {what}", not quiet) as (on_total, advance):
        return calibration_for(onnx, options, cache, advance, on_total)
