"""`resnest-deploy pipeline`: export, convert, build, check and bench in one go."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy import _deps
from resnest_deploy.cli._common import (
    ArchOpt,
    BatchSizesOpt,
    JsonOpt,
    Precision,
    RaySearchOpt,
    Target,
    VerboseOpt,
    WeightsOpt,
    parse_batches,
)
from resnest_deploy.cli._console import out, print_json
from resnest_deploy.cli._errors import flag_for, handle_errors
from resnest_deploy.cli._options import (
    CalibCountOpt,
    CalibDirOpt,
    CalibNpyOpt,
    EqualizeOpt,
    EvalDirOpt,
    MaxDropOpt,
    MinCosineOpt,
    MinTop1Opt,
    PipelineMethodOpt,
    TargetOpt,
    user_tolerance,
)
from resnest_deploy.cli._progress import progress, search_executor
from resnest_deploy.precision import CalibrationOptions, RunOptions
from resnest_deploy.precision.config import DEFAULT_COUNT, Equalize


@handle_errors
def pipeline_cmd(
    arch: ArchOpt,
    weights: WeightsOpt = "pretrained",
    precision: Annotated[Precision, typer.Option("--precision", "-p", help="Precision to deploy.")] = (
        Precision.fp32
    ),
    target: TargetOpt = Target.tensorrt,
    calib_dir: CalibDirOpt = None,
    calib_npy: CalibNpyOpt = None,
    calib_count: CalibCountOpt = DEFAULT_COUNT,
    eval_dir: EvalDirOpt = None,
    method: PipelineMethodOpt = None,
    max_drop: MaxDropOpt = None,
    equalize: EqualizeOpt = Equalize.off,
    min_cosine: MinCosineOpt = None,
    min_top1: MinTop1Opt = None,
    images: Annotated[
        Path | None, typer.Option(help="Real images for the check (default: held-out ones).")
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Default: models/<arch>/.")
    ] = None,
    build: Annotated[bool, typer.Option(help="Build a TensorRT engine when a TensorRT is installed.")] = True,
    batch_sizes: BatchSizesOpt = "1,8",
    verbose: VerboseOpt = False,
    json_out: JsonOpt = False,
    ray_address: RaySearchOpt = None,
) -> None:
    """Export, convert, build, check and bench in one go; report.md and report.json beside the files.

    INT8 tries every calibration method (--calibration auto, the default here; `quantize` defaults
    to max, one pass) and keeps the best on held-out images, then keeps the fewest units in FP32
    that bring top-1 within --max-drop points of FP32 (0.5 unless given; the report shows both).
    Stops at the first failure and says why (the report so far is still written).
    With no GPU, the engine is built (TensorRT-RTX builds on a CPU) but not run.
    With --weights random (offline, no checkpoint) every file is made, timed and measured, but not
    judged: a network never trained has near-uniform logits, so its files are for speed and
    structure only (the report says so). --min-cosine / --min-top1 accept trained files below the
    default bar, recorded in their metadata and the report.

    Examples:
      resnest-deploy pipeline --arch resnest14d_digits --precision int8          # offline, bundled data
      resnest-deploy pipeline --arch resnest50 --precision int8 --calib-dir ~/imagenet/calib
      resnest-deploy pipeline --arch resnest50 -p int8 --calib-dir DIR --calibration max --max-drop 1
      resnest-deploy pipeline --arch resnest50 -p int8 --calib-dir DIR --eval-dir VAL --max-drop 0.25
      resnest-deploy pipeline --arch resnest50 -p int8 --calib-dir DIR --ray HEAD:6379
      resnest-deploy pipeline --arch resnest50 --weights random -p int8 --calib-dir photos/   # offline
    """
    _deps.require("torch")  # the `export` extra: say so instead of failing on an import
    from resnest_deploy.pipeline import PipelineConfig, pipeline

    searching = precision.value == "int8"
    config = PipelineConfig(
        arch,
        weights,
        precision,
        target,
        CalibrationOptions(calib_dir, calib_npy, calib_count, eval_dir),
        method,
        max_drop,
        user_tolerance(precision.value, min_cosine, min_top1) if precision is not Precision.fp32 else None,
        images,
        output_dir,
        build,
        batches=tuple(parse_batches(batch_sizes)),
        equalize=equalize,
    )
    with search_executor(ray_address, searching) as ex, progress(not json_out) as say:
        report = pipeline(config, RunOptions(say, ex, verbose, words=flag_for))
    if json_out:
        print_json(report)
        return
    from rich.markdown import Markdown

    from resnest_deploy.reports.pipeline import markdown

    text = markdown(report)
    # rendered tables squeeze eight columns into narrow terminals and cut names: print the markdown
    out.print(Markdown(text) if out.width >= 120 else text, highlight=False, markup=False)
    out.print(f"reports: {(output_dir or Path('models') / arch) / 'report.md'} and report.json")
