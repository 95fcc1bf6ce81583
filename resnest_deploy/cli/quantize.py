"""`resnest-deploy quantize`: FP32 ONNX to FP16 or INT8 ONNX, checked against its source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy._io import prepare_outputs
from resnest_deploy.cli._common import CpuIsa, JsonOpt, Method, RaySearchOpt, Reduced, Target, VerboseOpt
from resnest_deploy.cli._console import metrics_table, out, print_json, styled
from resnest_deploy.cli._errors import flag_for, handle_errors
from resnest_deploy.cli._options import (
    CalibCountOpt,
    CalibDirOpt,
    CalibNpyOpt,
    CpuIsaOpt,
    EqualizeOpt,
    EvalDirOpt,
    KeepOpt,
    MaxDropOpt,
    MethodOpt,
    MinCosineOpt,
    MinTop1Opt,
    PrecisionOpt,
    TargetOpt,
    calibration_with_bar,
    user_tolerance,
)
from resnest_deploy.cli._progress import progress, search_executor
from resnest_deploy.precision import (
    CalibrationOptions,
    ConversionConfig,
    ConversionReport,
    RunOptions,
    convert,
    default_output,
)
from resnest_deploy.precision.config import DEFAULT_COUNT, Equalize
from resnest_deploy.reports import conversion as rendered

PlotOpt = Annotated[
    Path | None, typer.Option(help="With --max-drop: the sensitivity ranking as a bar chart (PNG).")
]
CacheOpt = Annotated[
    bool, typer.Option(help="Reuse preprocessed images and calibrated models from an earlier run.")
]
QuantizedOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Default: m.fp16.onnx, m.int8.onnx, m.int8-cpu.onnx."),
]


@handle_errors
def quantize_cmd(
    onnx: Annotated[Path, typer.Option("--onnx", help="FP32 ONNX file from `export`.")],
    precision: PrecisionOpt = Reduced.int8,
    target: TargetOpt = Target.tensorrt,
    calib_dir: CalibDirOpt = None,
    calib_npy: CalibNpyOpt = None,
    calib_count: CalibCountOpt = DEFAULT_COUNT,
    eval_dir: EvalDirOpt = None,
    method: MethodOpt = Method.max,
    keep_fp32: KeepOpt = None,
    max_drop: MaxDropOpt = None,
    cpu_isa: CpuIsaOpt = CpuIsa.any,
    equalize: EqualizeOpt = Equalize.off,
    min_cosine: MinCosineOpt = None,
    min_top1: MinTop1Opt = None,
    plot: PlotOpt = None,
    cache: CacheOpt = True,
    output: QuantizedOpt = None,
    verbose: VerboseOpt = False,
    json_out: JsonOpt = False,
    ray_address: RaySearchOpt = None,
) -> None:
    """Convert an FP32 export to FP16 or INT8 and measure it against the FP32 file.

    The check runs in ONNX Runtime on held-out images (calibration never sees them: a fifth of
    --calib-dir's images when there are few, up to 64), or on all of --eval-dir's labelled images
    (then every --calib-dir image calibrates; one whose bytes are in --eval-dir is refused), and
    fails, writing nothing, if top-1 agreement or cosine similarity fall below the precision's bar.
    INT8 reports its top-1 drop there (labels from class folders, else agreement with FP32)
    with a 95% interval (Tango's score interval, paired per image). --max-drop keeps units in FP32
    until the drop's point estimate is within the budget AND the parity bar holds: what the search
    accepts is written, or nothing is, with the best result reached. --min-cosine / --min-top1
    accept a file below it, recorded in its metadata. A file made from random weights is measured,
    not judged: it is for speed and structure only (a network never trained has near-uniform logits).
    INT8 calibrates with max unless --calibration says otherwise (`pipeline` defaults to auto).
    The attention gate (fc1, fc2, radix softmax) and the classifier stay FP32 by default.
    FP16 is measured on held-out images when given, else on seeded random inputs.
    resnest14d_digits calibrates on its bundled training digits when no data is given.

    Examples:
      resnest-deploy quantize --onnx m.onnx -p fp16
      resnest-deploy quantize --onnx m.onnx -p int8 --calib-dir ~/imagenet/val --calib-count 512
      resnest-deploy quantize --onnx m.onnx -p int8 --target cpu --calib-npy calib.npy
      resnest-deploy quantize --onnx m.onnx -p int8 --target cpu --cpu-isa vnni
      resnest-deploy quantize --onnx m.onnx -p int8 --calibration auto --max-drop 0.25
      resnest-deploy quantize --onnx m.onnx -p int8 --calib-dir train/ --eval-dir val/ --max-drop 0.25
      resnest-deploy quantize --onnx m.onnx -p int8 --max-drop 0.25 --ray auto
      resnest-deploy quantize --onnx m.onnx -p int8 --target cpu --equalize auto --max-drop 0.25
      resnest-deploy quantize --onnx m.onnx -p int8 --min-cosine 0.95   # accept a looser file, recorded
    """
    _refuse_early(plot, max_drop)
    config = ConversionConfig(
        precision,
        target,
        method,
        keep_fp32_nodes=None if keep_fp32 is None else tuple(keep_fp32),
        tolerance=user_tolerance(precision.value, min_cosine, min_top1),
        max_drop=max_drop,
        cpu_isa=cpu_isa,
        equalize=equalize,
    )
    options = CalibrationOptions(calib_dir, calib_npy, calib_count, eval_dir)
    options.check_for(precision)
    prepare_outputs([output or default_output(onnx, precision.value, target.value)], [onnx, calib_npy])
    if plot is not None:
        prepare_outputs([plot], [onnx, calib_npy], with_sidecar=False)
    calib = calibration_with_bar(onnx, options, cache, json_out)
    searching = precision.value == "int8" and max_drop is not None
    with search_executor(ray_address, searching) as ex, progress(not json_out) as say:
        report = convert(onnx, output, config, calib, RunOptions(say, ex, verbose, cache, words=flag_for))
    if plot and report.search is not None:
        rendered.plot(report.search.ranking, plot, report.search.metric_name)
    if json_out:
        print_json(report.metadata | {"path": str(report.path), "sidecar": str(report.sidecar)})
        return
    _print(report, plot)


def _refuse_early(plot: Path | None, max_drop: float | None) -> None:
    """Options that cannot go together, refused before any file is read."""
    if plot is not None and max_drop is None:
        raise typer.BadParameter(
            "the sensitivity chart comes from the search: add --max-drop", param_hint="--plot"
        )


def _print(report: ConversionReport, plot: Path | None) -> None:
    out.print(
        metrics_table(
            f"{report.precision} ({report.target}) vs FP32 source", {report.path.name: report.parity}
        )
    )
    for line in rendered.summary_lines(report, plot):
        out.print(line)
    for line in rendered.gate_lines(report.gate, report.inputs):
        out.print(styled(("note:", "yellow"), f" {line}"))
    skipped = report.skipped_images
    if skipped:
        out.print(styled((f"skipped {len(skipped)} unreadable image(s)", "yellow"), f", e.g. {skipped[0]}"))
    out.print(f"wrote {report.path} ({report.seconds:.1f} s); metadata in {report.sidecar}")
