"""ONNX Runtime CPU latency: resnest-deploy's export vs plain torch.onnx.export of the same model.

Run: python benchmarks/export_latency.py [--arch resnest50] [--iters 20]
Writes benchmarks/results/export_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from _timing import machine, save, time_ms

from resnest_deploy.export import export_onnx
from resnest_deploy.models import load_model
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner


def plain_export(model: torch.nn.Module, path: Path, size: int, dynamo: bool) -> None:
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=64)
            torch.onnx.export(model, (x,), path, dynamo=True, input_names=["input"], output_names=["logits"],
                              dynamic_shapes={"x": {0: batch}}, external_data=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="resnest50")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    model, info = load_model(args.arch)
    size = 224
    tmp = Path(tempfile.mkdtemp())
    files = {
        "resnest-deploy export": export_onnx(model, tmp / "ours.onnx", weights=info).path,
        "torch.onnx.export (TorchScript, defaults)": tmp / "ts.onnx",
        "torch.onnx.export (dynamo, defaults)": tmp / "dynamo.onnx",
    }
    plain_export(model, files["torch.onnx.export (TorchScript, defaults)"], size, dynamo=False)
    plain_export(model, files["torch.onnx.export (dynamo, defaults)"], size, dynamo=True)
    results: dict = {"arch": args.arch, "machine": machine(), "runs": []}
    rows = ["| export | nodes | Shape/Gather/Concat | batch | p50 ms | p90 ms |", "|---|---|---|---|---|---|"]
    for label, path in files.items():
        ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        shape_ops = sum(ops[k] for k in ("Shape", "Gather", "Concat"))
        with OnnxRuntimeRunner(path) as runner:
            for b in map(int, args.batches.split(",")):
                x = np.random.default_rng(0).standard_normal((b, 3, size, size), dtype=np.float32)
                t = time_ms(lambda x=x: runner.infer(x), iters=args.iters)
                results["runs"].append({"export": label, "nodes": sum(ops.values()), "shape_ops": shape_ops,
                                        "batch": b, **t})
                rows.append(f"| {label} | {sum(ops.values())} | {shape_ops} | {b} | {t['p50_ms']:.1f} | "
                            f"{t['p90_ms']:.1f} |")
    m = results["machine"]
    table = "\n".join([f"ONNX Runtime {m['tools'].get('onnxruntime-gpu', '')} CPU EP, {args.arch} fp32, "
                       f"{m['cpu']} ({m['cores']} cores), {m['date']}", "", *rows])
    save("export_latency", results, table)


if __name__ == "__main__":
    main()
