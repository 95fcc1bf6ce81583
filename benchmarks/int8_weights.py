"""TensorRT-target INT8 files before and after storing their weights as INT8: file size and parity.

    python benchmarks/int8_weights.py [--arch resnest50] [--build]

ModelOpt's ONNX PTQ leaves every quantized weight in FP32 behind a QuantizeLinear/DequantizeLinear
pair unless asked for ``dq_only``; the TensorRT-target file is then as large as FP32. Both forms are
made here from one calibration (random weights, seeded random inputs: size and parity between the
two forms do not depend on them), measured against the FP32 export on held-out inputs as TensorRT
computes them (Q/DQ as float ops), and against each other. ``--build`` also builds a TensorRT-RTX
engine from the INT8-weights file on the CPU. Results: results/int8_weights.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import save

from resnest_deploy import metadata
from resnest_deploy.compare import compare
from resnest_deploy.export import export_onnx
from resnest_deploy.models import load_model
from resnest_deploy.precision import int8, measure_parity
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
from resnest_deploy.runners.options import RunnerOptions

CALIB, HELD_OUT = 32, 32


def stored_bytes(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(path)
    out: dict[str, int] = {}
    for t in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        out[str(dtype)] = out.get(str(dtype), 0) + int(np.prod(t.dims)) * dtype.itemsize
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnest50")
    ap.add_argument("--build", action="store_true", help="build a TensorRT-RTX engine from the new file")
    args = ap.parse_args()
    import onnx

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="int8-weights-") as tmp:
        folder = Path(tmp)
        src = folder / f"{args.arch}.onnx"
        model, info = load_model(args.arch, "random")
        export_onnx(model, src, weights=info)
        h, w = onnx.load(src).graph.input[0].type.tensor_type.shape.dim[2:]
        size = (h.dim_value, w.dim_value)
        calib = rng.standard_normal((CALIB, 3, *size), dtype=np.float32)
        held_out = rng.standard_normal((HELD_OUT, 3, *size), dtype=np.float32)
        with OnnxRuntimeRunner(src) as ref:
            reference = ref.infer_batched(held_out, 8)
        rows: dict[str, dict] = {"fp32": {"bytes": src.stat().st_size, "stored": stored_bytes(src)}}
        logits = {}
        forms = (
            ("before: fp32 weights behind Q/DQ", False, int8.KEEP_FP32_NODES),
            ("after: int8 weights", True, int8.KEEP_FP32_NODES),
            ("int8 weights, gate and classifier quantized too", True, ()),
        )
        float_left: dict[str, int] = {}
        for i, (name, int8_weights, keep) in enumerate(forms):
            dst = folder / f"{i}.int8.onnx"
            started = time.perf_counter()
            int8.quantize_tensorrt(src, dst, calib, "max", keep, int8_weights=int8_weights)
            seconds = time.perf_counter() - started
            quantized = onnx.load(dst)
            parity, how = measure_parity(src, quantized, held_out, "int8", "tensorrt", reference)
            with OnnxRuntimeRunner(quantized.SerializeToString(), RunnerOptions(fake_quant=True)) as runner:
                logits[name] = runner.infer_batched(held_out, 8)
            if i == 1:  # where the float32 bytes left are: read by the nodes kept in FP32, or not
                kept = set(int8.matching_nodes(quantized, int8.KEEP_FP32_NODES))
                floats = {
                    t.name: t for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
                }
                read = {x for n in quantized.graph.node if n.name in kept for x in n.input}
                kept_bytes = sum(int(np.prod(floats[k].dims)) * 4 for k in read if k in floats)
                float_left = {
                    "kept_fp32_nodes": kept_bytes,
                    "other": stored_bytes(dst)["float32"] - kept_bytes,
                }
            ops = {
                op: sum(n.op_type == op for n in quantized.graph.node)
                for op in ("QuantizeLinear", "DequantizeLinear")
            }
            rows[name] = {
                "bytes": dst.stat().st_size,
                "stored": stored_bytes(dst),
                "ops": ops,
                "parity": parity.as_dict(),
                "arithmetic": how,
                "quantize_seconds": round(seconds, 1),
                "path": dst,
            }
        before, after = (logits[forms[0][0]], logits[forms[1][0]])
        between = compare(before, after).as_dict()
        engine = None
        if args.build:
            from resnest_deploy.engine import build_engine

            dst = rows[forms[1][0]]["path"]
            quantized = onnx.load(dst)
            meta = metadata.of_artifact(src)
            meta |= {"precision": "int8"}
            metadata.embed(quantized, meta)
            onnx.save(quantized, dst)
            started = time.perf_counter()
            built = build_engine(dst, dst.with_suffix(".plan"), backend="tensorrt-rtx")
            engine = {
                "ok": True,
                "seconds": round(time.perf_counter() - started, 1),
                "bytes": built.path.stat().st_size,
            }
        for row in rows.values():
            row.pop("path", None)
    results = {
        "arch": args.arch,
        "weights": "random",
        "calibration": f"max, {CALIB} seeded random inputs; parity on {HELD_OUT} more",
        "files": rows,
        "before_vs_after_logits": between,
        "after_float32_bytes": float_left,
        "engine_from_int8_weights": engine,
        "machine": metadata.machine(),
    }
    fp32 = rows["fp32"]["bytes"]
    lines = [
        f"# {args.arch} TensorRT-target INT8: weights stored as FP32 behind Q/DQ (before) or as INT8 (after)",
        "",
        "| file | MiB | of FP32 | int8 MiB | float32 MiB | Q / DQ nodes | cosine vs FP32 | top-1 agree "
        "| max abs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        stored = row["stored"]
        p = row.get("parity")
        ops = row.get("ops")
        lines.append(
            f"| {name} | {row['bytes'] / 2**20:.1f} | {row['bytes'] / fp32:.0%} "
            f"| {stored.get('int8', 0) / 2**20:.1f} | {stored.get('float32', 0) / 2**20:.1f} "
            + (f"| {ops['QuantizeLinear']} / {ops['DequantizeLinear']} " if ops else "| - ")
            + (f"| {p['cosine']:.6f} | {p['top1']:.1%} | {p['max_abs']:.3g} |" if p else "| - | - | - |")
        )
    lines += [
        "",
        f"Before and after compute the same logits: max abs difference {between['max_abs']:.3g}, "
        f"cosine {between['cosine']:.6f}, top-1 agreement {between['top1']:.0%} on {HELD_OUT} inputs "
        "(Q/DQ as float ops, as TensorRT computes them).",
    ]
    lines.append(
        f"What stays float32 after: {float_left['kept_fp32_nodes'] / 2**20:.1f} MiB read by the nodes kept "
        "in FP32 by default (attention gates, classifier; `--keep-fp32` replaces the list), "
        f"{float_left['other'] / 2**20:.1f} MiB of biases and scales."
    )
    if engine:
        lines.append(
            f"TensorRT-RTX engine from the INT8-weights file: built on the CPU in {engine['seconds']} s."
        )
    m = results["machine"]
    lines.append(
        f"Measured on {m['cpu']} ({m['cores']} cores; flags {' '.join(m['cpu_flags'])}), {m['date']}."
    )
    save("int8_weights", results, "\n".join(lines))


if __name__ == "__main__":
    main()
