"""`resnest-deploy quantize`: FP32 ONNX to FP16 or INT8 ONNX, checked against its source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from resnest_deploy._io import prepare_outputs
from resnest_deploy.cli._common import CpuIsa, JsonOpt, Method, RaySearchOpt, Reduced, Target, VerboseOpt
from resnest_deploy.cli._console import metrics_table, out, print_json, styled
from resnest_deploy.cli._errors import handle_errors
from resnest_deploy.cli._progress import counting_bar, progress, search_executor
from resnest_deploy.compare import TOLERANCES, Tolerance
from resnest_deploy.precision import calibration, calibration_for, convert, default_output, search
from resnest_deploy.precision.calibration import HOLDOUT

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
    Method,
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


def user_tolerance(precision: str, min_cosine: float | None, min_top1: float | None) -> Tolerance | None:
    """The precision's default bar with what --min-cosine / --min-top1 replace; None: the default."""
    if min_cosine is None and min_top1 is None:
        return None
    return TOLERANCES[precision].with_bars(min_cosine, min_top1)


def gate_lines(gate: dict[str, Any], inputs: str) -> list[str]:
    """What a person must read about how a converted file was judged: never silent."""
    lines = []
    if gate.get("note"):
        lines.append(str(gate["note"]))
    elif gate.get("tolerance_from") == "user" and gate.get("outside_default"):
        lines.append(
            "accepted outside the default tolerance by your bar ("
            + "; ".join(gate["outside_default"])
            + "); recorded in the file's metadata"
        )
    held_out = inputs.split(" ", 1)[0]
    if held_out.isdigit() and "held-out" in inputs and int(held_out) < HOLDOUT:
        lines.append(
            f"parity measured on only {inputs} (a fifth of the images when there are few, else those "
            f"beyond --calib-count); --calib-count + {HOLDOUT} images or more hold out {HOLDOUT}"
        )
    return lines


def calibration_with_bar(
    onnx: Path, calib_dir: Path | None, calib_npy: Path | None, count: int, cache: bool, quiet: bool
) -> calibration.CalibrationData | None:
    with counting_bar("preprocessing calibration images", not quiet) as (on_total, advance):
        return calibration_for(onnx, calib_dir, calib_npy, count, cache, advance, on_total)


@handle_errors
def quantize_cmd(
    onnx: Annotated[Path, typer.Option("--onnx", help="FP32 ONNX file from `export`.")],
    precision: PrecisionOpt = Reduced.int8,
    target: TargetOpt = Target.tensorrt,
    calib_dir: CalibDirOpt = None,
    calib_npy: CalibNpyOpt = None,
    calib_count: CalibCountOpt = calibration.DEFAULT_COUNT,
    method: MethodOpt = Method.max,
    keep_fp32: KeepOpt = None,
    max_drop: MaxDropOpt = None,
    cpu_isa: CpuIsaOpt = CpuIsa.any,
    min_cosine: MinCosineOpt = None,
    min_top1: MinTop1Opt = None,
    plot: Annotated[
        Path | None, typer.Option(help="With --max-drop: the sensitivity ranking as a bar chart (PNG).")
    ] = None,
    cache: Annotated[
        bool, typer.Option(help="Reuse preprocessed images and calibrated models from an earlier run.")
    ] = True,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Default: m.fp16.onnx, m.int8.onnx, m.int8-cpu.onnx."),
    ] = None,
    verbose: VerboseOpt = False,
    json_out: JsonOpt = False,
    ray_address: RaySearchOpt = None,
) -> None:
    """Convert an FP32 export to FP16 or INT8 and measure it against the FP32 file.

    The check runs in ONNX Runtime on held-out images (calibration never sees them: a fifth of
    --calib-dir's images when there are few, up to 64) and fails, writing nothing, if top-1
    agreement or cosine similarity fall below the precision's bar; --min-cosine / --min-top1
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
      resnest-deploy quantize --onnx m.onnx -p int8 --max-drop 0.25 --ray auto
      resnest-deploy quantize --onnx m.onnx -p int8 --min-cosine 0.95   # accept a looser file, recorded
    """
    if plot is not None and max_drop is None:
        raise typer.BadParameter(
            "the sensitivity chart comes from the search: add --max-drop", param_hint="--plot"
        )
    prepare_outputs([output or default_output(onnx, precision.value, target.value)], [onnx, calib_npy])
    if plot is not None:
        prepare_outputs([plot], [onnx, calib_npy], with_sidecar=False)
    calib = calibration_with_bar(onnx, calib_dir, calib_npy, calib_count, cache, json_out)
    searching = precision.value == "int8" and max_drop is not None
    with search_executor(ray_address, searching) as ex, progress(not json_out) as say:
        report = convert(
            onnx,
            output,
            precision=precision.value,
            target=target.value,
            calib=calib,
            method=method.value,
            keep_fp32_nodes=keep_fp32,
            use_cache=cache,
            max_drop=max_drop,
            cpu_isa=cpu_isa.value,
            tolerance=user_tolerance(precision.value, min_cosine, min_top1),
            progress=say,
            executor=ex,
            verbose=verbose,
        )
    found = report.metadata["conversion"].get("search")
    if plot and found:
        ranking = [search.Sensitivity(**s) for s in found["sensitivity"]]
        search.plot(ranking, plot, found["metric"])
    if json_out:
        print_json(report.metadata | {"path": str(report.path), "sidecar": str(report.sidecar)})
        return
    out.print(
        metrics_table(
            f"{report.precision} ({report.target}) vs FP32 source", {report.path.name: report.parity}
        )
    )
    conversion = report.metadata["conversion"]
    tried = conversion.get("calibration_methods")
    if tried:
        out.print(
            f"calibration ({tried['metric']} on held-out images): "
            + ", ".join(f"{r['method']} {r['metric']:.2f}" for r in tried["results"])
            + f"; kept {tried['chosen']}"
        )
    if found:
        top = ", ".join(f"{s['unit']} +{s['gain']:.2f}" for s in found["sensitivity"][:3])
        out.print(
            f"INT8 search ({found['metric']}): FP32 {found['fp32']:.2f}, "
            f"plain INT8 {found['plain_int8']:.2f}, "
            f"chosen {found['chosen']:.2f}, kept in FP32: {search.kept_summary(found)}; "
            f"most sensitive: {top}" + (f"; chart: {plot}" if plot else "")
        )

    for line in gate_lines(report.gate, report.metadata["parity"].get("inputs", "")):
        out.print(styled(("note:", "yellow"), f" {line}"))
    skipped = (conversion.get("calibration") or {}).get("skipped") or []
    if skipped:
        out.print(styled((f"skipped {len(skipped)} unreadable image(s)", "yellow"), f", e.g. {skipped[0]}"))
    out.print(f"wrote {report.path} ({report.seconds:.1f} s); metadata in {report.sidecar}")
