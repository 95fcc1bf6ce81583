"""`resnest-deploy build`: ONNX to a TensorRT or TensorRT-RTX engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy._io import prepare_outputs
from resnest_deploy.cli._common import Backend, JsonOpt, Precision
from resnest_deploy.cli._console import out, print_json
from resnest_deploy.cli._errors import handle_errors
from resnest_deploy.cli._options import (
    CalibCountOpt,
    CalibDirOpt,
    CalibNpyOpt,
    calibration_with_bar,
)
from resnest_deploy.cli._progress import progress
from resnest_deploy.engine import build_engine, parse_batch_range
from resnest_deploy.precision import (
    CalibrationOptions,
    ConversionConfig,
    RunOptions,
    convert,
    default_output,
)
from resnest_deploy.precision.config import DEFAULT_COUNT


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise typer.BadParameter(f"{text!r} is not MAJOR.MINOR, e.g. 8.9")
    return int(major), int(minor)


@handle_errors
def build_cmd(
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX file from `export` (any precision).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Engine path; default: ONNX with .plan.")
    ] = None,
    backend: Annotated[Backend, typer.Option(help="Which TensorRT builds it.")] = Backend.auto,
    batch_profile: Annotated[
        str, typer.Option("--batch-profile", help="Optimization profile MIN,OPT,MAX of the batch.")
    ] = "1,8,32",
    workspace: Annotated[float | None, typer.Option("--workspace", help="Workspace limit in GiB.")] = None,
    timing_cache: Annotated[
        Path | None,
        typer.Option(help="Timing cache to read and update (full TensorRT; TensorRT-RTX has none)."),
    ] = None,
    opt_level: Annotated[
        int | None, typer.Option(min=0, max=5, help="Builder optimization level 0..5.")
    ] = None,
    compute_capability: Annotated[
        list[str] | None, typer.Option(help="TensorRT-RTX target, repeatable, e.g. 8.9 (default: JIT).")
    ] = None,
    tf32: Annotated[
        bool, typer.Option("--tf32", help="Let FP32 layers use TF32 math (faster, ~1e-3 relative error).")
    ] = False,
    precision: Annotated[
        Precision, typer.Option("--precision", "-p", help="Convert an FP32 export to fp16 or int8 first.")
    ] = Precision.fp32,
    calib_dir: CalibDirOpt = None,
    calib_npy: CalibNpyOpt = None,
    calib_count: CalibCountOpt = DEFAULT_COUNT,
    json_out: JsonOpt = False,
) -> None:
    """Build a strongly typed TensorRT engine; precision comes from the ONNX file.

    Works with TensorRT 10.x, 11.x and TensorRT for RTX (which builds on a CPU-only machine).
    Writes ENGINE.plan and ENGINE.plan.json (source ONNX sha256, TensorRT version, profile, log).

    Examples:
      resnest-deploy build --onnx models/resnest50/resnest50.onnx
      resnest-deploy build --onnx m.onnx --precision int8 --calib-dir ~/imagenet/calib
      resnest-deploy build --onnx m.onnx --backend tensorrt-rtx --batch-profile 1,4,16 \
        --compute-capability 8.9
    """
    caps = [_capability(c) for c in compute_capability or []]
    profile = parse_batch_range(batch_profile)
    if precision is not Precision.fp32:
        converted = default_output(onnx, precision.value, "tensorrt")
        prepare_outputs([converted, output or converted.with_suffix(".plan")], [onnx, calib_npy])
        config = ConversionConfig(precision.value, "tensorrt")
        options = CalibrationOptions(calib_dir, calib_npy, calib_count)
        calib = calibration_with_bar(onnx, options, True, json_out)
        with progress(not json_out) as say:
            onnx = convert(onnx, None, config, calib, RunOptions(progress=say)).path
    with progress(not json_out) as say:
        report = build_engine(
            onnx,
            output,
            backend=backend.value,
            batch=profile,
            workspace_gib=workspace,
            timing_cache=timing_cache,
            opt_level=opt_level,
            compute_capabilities=caps or None,
            tf32=tf32,
            progress=say,
        )
    if json_out:
        print_json(report.as_dict())
        return
    prof = report.profile
    out.print(
        f"{report.backend} {report.version} engine ({report.precision}) -> {report.path} "
        f"({report.size_bytes / 2**20:.1f} MiB, {report.seconds:.1f} s); batch {prof['min'][0]}.."
        f"{prof['max'][0]}, input {'x'.join(map(str, prof['opt'][1:]))}; metadata in {report.sidecar}"
    )
