"""resnest50 on this machine's CPU: PyTorch eager FP32, ONNX Runtime FP32, ONNX Runtime INT8.

The INT8 file made for TensorRT is timed in ONNX Runtime too, to show why the CPU target exists.

    python benchmarks/precision_latency.py [--arch resnest50] [--iterations 20]

Uses the library's own `bench` (what `resnest-deploy bench` prints), so the figures are the ones a
user sees. Weights are random (latency does not depend on them); the INT8 model is calibrated on
seeded random inputs for the same reason. Results: results/precision_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _timing import save

from resnest_deploy.bench import bench
from resnest_deploy.compare import UNCHECKED
from resnest_deploy.export import export_onnx
from resnest_deploy.metadata import machine
from resnest_deploy.models import load_model
from resnest_deploy.precision import ConversionConfig, calibration, convert


def export_shape(path: Path) -> tuple[int, int]:
    from resnest_deploy.metadata import of_artifact

    return tuple(of_artifact(path)["input"]["shape"][2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnest50")
    ap.add_argument("--iterations", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, info = load_model(args.arch, "random")
        fp32 = export_onnx(model, Path(tmp) / "m.onnx", weights=info).path
        size = export_shape(fp32)
        x = np.random.default_rng(0).standard_normal((72, 3, *size), dtype=np.float32)
        calib = calibration.CalibrationData(x[:64], x[64:], {"kind": "random", "count": 64})
        # random inputs through random weights: only speed is measured here, not accuracy
        files = {"onnxruntime fp32": fp32}
        for target, label in (
            ("cpu", "--target cpu (U8S8)"),
            ("tensorrt", "--target tensorrt (ModelOpt Q/DQ)"),
        ):
            report = convert(fp32, None, ConversionConfig("int8", target, tolerance=UNCHECKED), calib)
            files[f"onnxruntime int8, {label}"] = report.path
        results = bench(
            ["torch", *map(str, files.values())],
            arch=args.arch,
            weights="random",
            batches=(1, 8),
            iterations=args.iterations,
        )
    names = [name for name in ("pytorch eager fp32", *files) for _ in (1, 8)]
    rows = [r.as_dict() | {"artifact": name} for r, name in zip(results, names, strict=True)]
    fp32_p50 = {r["batch"]: r["p50_ms"] for r in rows if r["artifact"] == "onnxruntime fp32"}
    m = machine()
    lines = [
        f"# {args.arch} latency on CPU ({m['cpu']}, {m['cores']} cores, {m['date'][:10]})",
        "",
        "| backend | batch | p50 ms | p90 ms | images/s | vs ORT fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['artifact']} | {r['batch']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} "
            f"| {r['images_per_s']:.1f} | {fp32_p50[r['batch']] / r['p50_ms']:.2f}x |"
        )
    save("precision_latency", {"arch": args.arch, "machine": m, "results": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
