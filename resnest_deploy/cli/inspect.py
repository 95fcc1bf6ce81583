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
        out.print(f"  calibration: {conversion.get('method')}")
        scheme = conversion.get("scheme")
        if isinstance(scheme, dict) and scheme.get("runs_exactly_on"):
            out.print(f"  weights: {scheme.get('weights')}; exact on {scheme.get('runs_exactly_on')}")
    found = conversion.get("search") if isinstance(conversion, dict) else None
    if isinstance(found, dict):
        from resnest_deploy.reports.conversion import kept_summary, latency_summary

        kept = kept_summary(found)
        numbers = {k: float(found.get(k) or 0.0) for k in ("chosen", "fp32", "plain_int8")}
        out.print(
            f"  INT8 search: units kept in FP32: {kept}; {found.get('metric')} {numbers['chosen']:.2f} "
            f"(FP32 {numbers['fp32']:.2f}, plain INT8 {numbers['plain_int8']:.2f}, "
            f"budget {found.get('max_drop_points')} points)"
        )
        cost = latency_summary(found)
        if cost:
            out.print(f"  {cost}")
    for line in equalization_lines(meta, info.get("sidecar") or {}, conversion):
        out.print(f"  {line}")
    if not info.get("sidecar"):
        out.print("  no sidecar JSON beside it", style="yellow")


def equalization_lines(meta: dict[str, Any], sidecar: dict[str, Any], conversion: Any) -> list[str]:
    """What cross-layer equalization did, from the metadata: of an equalized FP32 file (its own
    ``equalization``) or of a conversion that equalized its source first (``conversion.equalization``)."""
    record = meta.get("equalization") or sidecar.get("equalization")
    if not isinstance(record, dict) and isinstance(conversion, dict):
        record = conversion.get("equalization")
    if not isinstance(record, dict):
        return []
    lines = []
    results = record.get("results")
    if isinstance(results, list):
        tried = ", ".join(f"{r.get('equalize')} {float(r.get('metric') or 0):.2f}" for r in results)
        lines.append(
            f"equalization auto ({record.get('metric')}, plain INT8): {tried} -> {record.get('chosen')}"
        )
    if record.get("skipped") and isinstance(record["skipped"], str):
        lines.append(f"equalization: {record.get('chosen', 'off')} ({record['skipped']})")
    elif record.get("chosen", "on") == "on":
        groups = record.get("groups", len(record.get("equalized") or []))
        before, after = record.get("imbalance_before"), record.get("imbalance_after")
        skipped = record.get("skipped") or []
        lines.append(
            f"equalized: {groups} convolution group(s), worst range ratio {float(before or 1):.3g} -> "
            f"{float(after or 1):.3g}, {len(skipped)} left alone; logits moved "
            f"{float(record.get('relative_change') or 0):.2g} of their scale"
        )
    return lines


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
