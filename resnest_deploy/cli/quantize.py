"""`resnest-deploy quantize`: FP32 ONNX to FP16 or INT8 ONNX, checked against its source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy._io import prepare_outputs
from resnest_deploy.cli._common import (
    JsonOpt,
    Method,
    Precision,
    Target,
    counting_bar,
    handle_errors,
    metrics_table,
    out,
    print_json,
    progress,
    styled,
)
from resnest_deploy.precision import calibration, calibration_for, convert, default_output

PrecisionOpt = Annotated[Precision, typer.Option("--precision", "-p", help="fp16 or int8.")]
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
CalibCountOpt = Annotated[
    int, typer.Option(min=1, help="Images to calibrate on (sampled with a fixed seed).")
]
MethodOpt = Annotated[Method, typer.Option(help="Calibration method (percentile: --target cpu only).")]
KeepOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--keep-fp32",
        help="Node-name regex kept in FP32 (repeatable); replaces the default: for INT8 the attention "
        "gate and the classifier, for FP16 none (its softmax stays FP32 regardless).",
    ),
]


def calibration_with_bar(
    onnx: Path, calib_dir: Path | None, calib_npy: Path | None, count: int, cache: bool, quiet: bool
) -> calibration.CalibrationData | None:
    with counting_bar("preprocessing calibration images", not quiet) as (on_total, advance):
        return calibration_for(onnx, calib_dir, calib_npy, count, cache, advance, on_total)


@handle_errors
def quantize_cmd(
    onnx: Annotated[Path, typer.Option("--onnx", help="FP32 ONNX file from `export`.")],
    precision: PrecisionOpt = Precision.int8,
    target: TargetOpt = Target.tensorrt,
    calib_dir: CalibDirOpt = None,
    calib_npy: CalibNpyOpt = None,
    calib_count: CalibCountOpt = calibration.DEFAULT_COUNT,
    method: MethodOpt = Method.max,
    keep_fp32: KeepOpt = None,
    cache: Annotated[
        bool, typer.Option(help="Reuse preprocessed images and calibrated models from an earlier run.")
    ] = True,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Default: m.fp16.onnx, m.int8.onnx, m.int8-cpu.onnx."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Convert an FP32 export to FP16 or INT8 and measure it against the FP32 file.

    The check runs in ONNX Runtime on held-out images (calibration never sees them) and fails,
    writing nothing, if top-1 agreement or cosine similarity fall below the precision's bar.
    The attention gate (fc1, fc2, radix softmax) and the classifier stay FP32 by default.
    FP16 is measured on held-out images when given, else on seeded random inputs.
    resnest14d_digits calibrates on its bundled training digits when no data is given.

    Examples:
      resnest-deploy quantize --onnx m.onnx -p fp16
      resnest-deploy quantize --onnx m.onnx -p int8 --calib-dir ~/imagenet/val --calib-count 512
      resnest-deploy quantize --onnx m.onnx -p int8 --target cpu --calib-npy calib.npy
    """
    prepare_outputs([output or default_output(onnx, precision.value, target.value)], [onnx, calib_npy])
    calib = calibration_with_bar(onnx, calib_dir, calib_npy, calib_count, cache, json_out)
    with progress(not json_out) as say:
        report = convert(
            onnx,
            output,
            precision=precision.value,
            target=target.value,
            calib=calib,
            method=method.value,
            keep_fp32_nodes=keep_fp32,
            use_cache=cache,
            progress=say,
        )
    if json_out:
        print_json(report.metadata | {"path": str(report.path), "sidecar": str(report.sidecar)})
        return
    out.print(
        metrics_table(
            f"{report.precision} ({report.target}) vs FP32 source", {report.path.name: report.parity}
        )
    )
    skipped = (report.metadata["conversion"].get("calibration") or {}).get("skipped") or []
    if skipped:
        out.print(styled((f"skipped {len(skipped)} unreadable image(s)", "yellow"), f", e.g. {skipped[0]}"))
    out.print(f"wrote {report.path} ({report.seconds:.1f} s); metadata in {report.sidecar}")
