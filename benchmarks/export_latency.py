"""ONNX Runtime CPU latency: resnest-deploy's export vs plain torch.onnx.export of the same model,
and vs the usual split-attention forward (reshapes from ``x.shape``) with the same weights.

Run: python benchmarks/export_latency.py [--arch resnest50] [--iters 20]
Writes benchmarks/results/export_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import copy
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from _timing import save, time_ms

from resnest_deploy.export import export_onnx
from resnest_deploy.metadata import machine
from resnest_deploy.models import load_model
from resnest_deploy.models.layers import SplitAttn
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner


def shape_driven_forward(self: SplitAttn, x: torch.Tensor) -> torch.Tensor:
    """Split attention as the usual implementations write it: reshapes computed from x.shape."""
    x = self.act0(self.bn0(self.conv(x)))
    b, rc, h, w = x.shape
    if self.radix > 1:
        x = x.reshape((b, self.radix, rc // self.radix, h, w))
        gap = x.sum(dim=1)
    else:
        gap = x
    gap = self.act1(self.bn1(self.fc1(gap.mean((2, 3), keepdim=True))))
    attn = self.fc2(gap)
    if self.radix > 1:
        attn = attn.view(b, self.rsoftmax.cardinality, self.radix, -1).transpose(1, 2)
        attn = torch.softmax(attn, dim=1).reshape(b, -1)
        out = (x * attn.reshape((b, self.radix, rc // self.radix, 1, 1))).sum(dim=1)
    else:
        out = x * torch.sigmoid(attn).view(b, -1, 1, 1)
    return out.contiguous()


def usual_model(model: torch.nn.Module) -> torch.nn.Module:
    usual = copy.deepcopy(model)
    for m in usual.modules():
        if isinstance(m, SplitAttn):
            m.forward = types.MethodType(shape_driven_forward, m)
    return usual


def plain_export(model: torch.nn.Module, path: Path, size: int, dynamo: bool) -> None:
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=64)
            torch.onnx.export(
                model,
                (x,),
                path,
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: batch}},
                external_data=False,
            )
        else:
            torch.onnx.export(
                model,
                (x,),
                path,
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )


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
        "usual x.shape-driven split attention, TorchScript export": tmp / "usual.onnx",
    }
    plain_export(model, files["torch.onnx.export (TorchScript, defaults)"], size, dynamo=False)
    plain_export(model, files["torch.onnx.export (dynamo, defaults)"], size, dynamo=True)
    usual = usual_model(model)
    with torch.no_grad():  # the usual forward is the same function of the same weights
        x = torch.randn(2, 3, size, size)
        torch.testing.assert_close(usual(x), model(x))
    plain_export(usual, files["usual x.shape-driven split attention, TorchScript export"], size, dynamo=False)
    results: dict = {"arch": args.arch, "machine": machine(), "runs": []}
    rows = ["| export | nodes | Shape/Gather/Concat | batch | p50 ms | p90 ms |", "|---|---|---|---|---|---|"]
    for label, path in files.items():
        ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        shape_ops = sum(ops[k] for k in ("Shape", "Gather", "Concat"))
        with OnnxRuntimeRunner(path) as runner:
            for b in map(int, args.batches.split(",")):
                x = np.random.default_rng(0).standard_normal((b, 3, size, size), dtype=np.float32)
                t = time_ms(lambda x=x: runner.infer(x), iters=args.iters)
                results["runs"].append(
                    {"export": label, "nodes": sum(ops.values()), "shape_ops": shape_ops, "batch": b, **t}
                )
                rows.append(
                    f"| {label} | {sum(ops.values())} | {shape_ops} | {b} | {t['p50_ms']:.1f} | "
                    f"{t['p90_ms']:.1f} |"
                )
    m = results["machine"]
    table = "\n".join(
        [
            f"ONNX Runtime {m['tools'].get('onnxruntime-gpu', '')} CPU EP, {args.arch} fp32, "
            f"{m['cpu']} ({m['cores']} cores), {m['date']}",
            "",
            *rows,
        ]
    )
    save("export_latency", results, table)


if __name__ == "__main__":
    main()
