"""`inspect` and `pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.cli._common import ArchOpt, JsonOpt, WeightsOpt, handle_errors, out, print_json, progress
from resnest_deploy.cli.quantize import CalibCountOpt, CalibDirOpt, CalibNpyOpt, TargetOpt
from resnest_deploy.precision import calibration


@handle_errors
def inspect_cmd(
    artifact: Annotated[Path, typer.Argument(help="An .onnx file or a .plan engine.")],
    layers: Annotated[
        bool, typer.Option(help="Per-layer engine information (needs TensorRT and a GPU).")
    ] = True,
    json_out: JsonOpt = False,
) -> None:
    """Everything known about an artifact: shapes, precision, ops, provenance, build log.

    Examples:
      resnest-deploy inspect models/resnest50/resnest50.int8.onnx
      resnest-deploy inspect m.plan --json
    """
    from resnest_deploy.describe import describe

    info = describe(artifact, layers)
    if json_out:
        print_json(info)
        return
    meta = info.get("metadata") or {}
    out.print(
        f"[bold]{info['path']}[/] ({info['kind']}, {info['bytes'] / 2**20:.1f} MiB, "
        f"sha256 {info['sha256'][:12]})"
    )
    out.print(f"  arch {meta.get('arch', '?')}, precision {meta.get('precision', '?')}")
    if info["kind"] == "onnx":
        for io in (*info["inputs"], *info["outputs"]):
            out.print(f"  {io['name']}: {io['dtype']} {io['shape']}")
        ops = ", ".join(f"{k} {v}" for k, v in info["op_counts"].items())
        out.print(f"  opset {info['opset']}, {info['nodes']} nodes: {ops}")
        out.print(f"  initializers: {info['initializer_dtypes']}")
    else:
        trt = meta.get("tensorrt") or {}
        out.print(
            f"  built with {trt.get('flavour', '?')} {trt.get('version', '?')}; target {meta.get('target')}"
        )
        out.print(f"  profile {(meta.get('input') or {}).get('profile')}")
        layers_info = info.get("layers")
        out.print(
            f"  layers: {len(layers_info)}" if isinstance(layers_info, list) else f"  layers: {layers_info}"
        )
    if not info.get("sidecar"):
        out.print("  [yellow]no sidecar JSON beside it[/]")


@handle_errors
def pipeline_cmd(
    arch: ArchOpt,
    weights: WeightsOpt = "pretrained",
    precision: Annotated[str, typer.Option("--precision", "-p", help="fp32, fp16 or int8.")] = "fp32",
    target: TargetOpt = "tensorrt",
    calib_dir: CalibDirOpt = None,
    calib_npy: CalibNpyOpt = None,
    calib_count: CalibCountOpt = calibration.DEFAULT_COUNT,
    images: Annotated[
        Path | None, typer.Option(help="Real images for the check (default: held-out ones).")
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Default: models/<arch>/.")
    ] = None,
    build: Annotated[bool, typer.Option(help="Build a TensorRT engine when a TensorRT is installed.")] = True,
    batch: Annotated[str, typer.Option(help="Batch sizes to bench.")] = "1,8",
    json_out: JsonOpt = False,
) -> None:
    """Export, convert, build, check and bench in one go; report.md and report.json beside the files.

    Stops at the first failure and says why (the report so far is still written).
    With no GPU, the engine is built (TensorRT-RTX builds on a CPU) but not run.

    Examples:
      resnest-deploy pipeline --arch resnest14d_digits --precision int8          # offline, bundled data
      resnest-deploy pipeline --arch resnest50 --precision int8 --calib-dir ~/imagenet/calib
    """
    from resnest_deploy.cli.evaluate import _batches
    from resnest_deploy.pipeline import pipeline

    with progress(not json_out) as say:
        report = pipeline(
            arch,
            weights=weights,
            precision=precision,
            target=target,
            calib_dir=calib_dir,
            calib_npy=calib_npy,
            calib_count=calib_count,
            images=images,
            out_dir=output_dir,
            build=build,
            batches=_batches(batch),
            progress=say,
        )
    if json_out:
        print_json(report)
        return
    from resnest_deploy.pipeline import markdown

    out.print(markdown(report), markup=False, highlight=False)
    out.print(f"reports: {(output_dir or Path('models') / arch) / 'report.md'} and report.json")
