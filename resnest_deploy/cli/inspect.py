"""`resnest-deploy inspect`: what an ONNX file or engine is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from resnest_deploy.cli._common import JsonOpt
from resnest_deploy.cli._console import out, print_json, styled
from resnest_deploy.cli._errors import handle_errors


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
    from resnest_deploy.inspection import describe
    from resnest_deploy.metadata import RANDOM_WEIGHTS_NOTE, random_weights
    from resnest_deploy.precision.results import kind_words

    info = describe(artifact, layers)
    if json_out:
        print_json(info)
        return
    meta = info.get("metadata") or {}
    out.print(
        styled(
            (str(info["path"]), "bold"),
            f" ({info['kind']}, {info['bytes'] / 2**20:.1f} MiB, sha256 {info['sha256'][:12]})",
        )
    )
    out.print(f"  arch {meta.get('arch', '?')}, precision {meta.get('precision', '?')}")
    if random_weights(meta):
        out.print(styled(("  note:", "yellow"), f" {RANDOM_WEIGHTS_NOTE}"))
    _print_graph(info, meta)
    conversion = meta.get("conversion") or (info.get("sidecar") or {}).get("conversion") or {}
    if isinstance(conversion, dict) and conversion.get("method"):
        images = conversion.get("calibration")
        images = images if isinstance(images, dict) else {}
        used = images.get("used")
        on = f" on {used} {kind_words(str(images.get('kind')))}" if isinstance(used, int) else ""
        out.print(f"  calibration: {conversion.get('method')}{on}")
        scheme = conversion.get("scheme")
        if isinstance(scheme, dict) and scheme.get("runs_exactly_on"):
            out.print(f"  weights: {scheme.get('weights')}; exact on {scheme.get('runs_exactly_on')}")
    from resnest_deploy.reports.conversion import equalization_lines, recorded_lines

    for line in [
        *recorded_lines(conversion),
        *equalization_lines(meta, info.get("sidecar") or {}, conversion),
    ]:
        out.print(f"  {line}")
    if not info.get("sidecar"):
        out.print("  no sidecar JSON beside it", style="yellow")


def _counted(counts: dict[str, int]) -> str:
    """``{"float32": 120, "int8": 3}`` as people read it: ``120 float32, 3 int8``."""
    return ", ".join(f"{n} {dtype}" for dtype, n in counts.items()) or "none"


def _print_graph(info: dict[str, Any], meta: dict[str, Any]) -> None:
    """An ONNX file's inputs, ops, stored weights and quantized tensors; an engine's build and layers."""
    if info["kind"] == "onnx":
        for io in (*info["inputs"], *info["outputs"]):
            out.print(f"  {io['name']}: {io['dtype']} {io['shape']}")
        ops = ", ".join(f"{k} {v}" for k, v in info["op_counts"].items())
        out.print(f"  opset {info['opset']}, {info['nodes']} nodes: {ops}")
        stored = info["initializer_bytes"]
        total = sum(stored.values()) or 1
        out.print(
            "  weights stored: "
            + ", ".join(f"{k} {v / 2**20:.2f} MiB ({v / total:.0%})" for k, v in stored.items())
            + f"; initializers: {_counted(info['initializer_dtypes'])}"
        )
        q = info["quantized"]
        if q["activations"] or q["weights"]:
            fp32 = q["fp32_compute"]
            names = ", ".join(fp32[:4]) + (f" and {len(fp32) - 4} more" if len(fp32) > 4 else "")
            out.print(
                f"  quantized: {len(q['activations'])} activation tensors, {len(q['weights'])} int8 weights; "
                f"{len(fp32)} of {q['compute']} compute layers in FP32{': ' + names if fp32 else ''} "
                "(names: --json)"
            )
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
