"""Accuracy of every precision of the bundled digits model on its 899 held-out test digits.

    python benchmarks/digits_accuracy.py

Exports the bundled resnest14d_digits, converts it to FP16 and to INT8 for both targets (calibrated
on 256 training digits), and scores each file in ONNX Runtime on the CPU against the labels and
against FP32. Results: results/digits_accuracy.{json,md}.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from _timing import save

from resnest_deploy.compare import compare
from resnest_deploy.data import Transform, digits, digits_batch
from resnest_deploy.export import export_onnx
from resnest_deploy.loaders import open_runner
from resnest_deploy.metadata import machine
from resnest_deploy.models import get_spec, load_model
from resnest_deploy.precision import ConversionConfig, calibration, convert

ARCH = "resnest14d_digits"


def main() -> None:
    transform = Transform.from_pretrained(get_spec(ARCH).pretrained)
    images, labels = digits("test")
    x = digits_batch(images, transform)
    calib = calibration.from_digits(transform)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RESNEST_DEPLOY_CACHE"] = tmp  # calibrate for real, every time
        model, info = load_model(ARCH, "pretrained")
        files = {"fp32": export_onnx(model, Path(tmp) / "d.onnx", weights=info).path}
        for precision, target in (("fp16", "tensorrt"), ("int8", "tensorrt"), ("int8", "cpu")):
            report = convert(files["fp32"], None, ConversionConfig(precision, target), calib)
            files[f"{precision} ({target})"] = report.path
        logits = {}
        for name, path in files.items():
            with open_runner(path) as runner:
                logits[name] = runner.infer_batched(x, 128)
    rows = []
    for name, out in logits.items():
        m = compare(logits["fp32"], out)
        top1 = float((out.argmax(1) == labels).mean())
        rows.append(
            {
                "file": name,
                "top1": top1,
                "cosine_vs_fp32": m.cosine,
                "max_abs_vs_fp32": m.max_abs,
                "top1_agreement": m.top1,
                "images": len(labels),
            }
        )
    lines = [
        f"# {ARCH}: accuracy by precision ({len(labels)} test digits, ONNX Runtime CPU)",
        "",
        "| file | top-1 | vs FP32 (points) | cosine vs FP32 | max abs vs FP32 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        delta = 100 * (r["top1"] - rows[0]["top1"])
        lines.append(
            f"| {r['file']} | {r['top1']:.2%} | {delta:+.2f} | {r['cosine_vs_fp32']:.7f} "
            f"| {r['max_abs_vs_fp32']:.3g} |"
        )
    save("digits_accuracy", {"arch": ARCH, "machine": machine(), "results": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
