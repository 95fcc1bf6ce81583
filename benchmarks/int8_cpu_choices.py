"""What each CPU-target INT8 choice costs: 7- or 8-bit weights, and the attention gate and the
classifier kept in FP32 or quantized, on one machine, in speed (resnest50) and accuracy (digits).

    python benchmarks/int8_cpu_choices.py [--rounds 3]

Speed: resnest50 (random weights, calibrated on seeded random inputs: latency does not depend on
them), ONNX Runtime, batch 1 and 8, every file timed by `resnest-deploy bench` in processes of its
own taking turns, the median of the rounds. Accuracy: the trained digits model, top-1 on its held-out
test digits and the worst logit cosine against FP32. With qemu-user-static on x86_64, the digits
files are also run on an emulated Haswell (AVX2, no VNNI: where ONNX Runtime's U8S8 kernels add
pairs of products in int16) and compared with this machine's logits. Speed on a real AVX2-only CPU
cannot be measured on a machine with VNNI, and emulated timings mean nothing.
Results: results/int8_cpu_choices.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _timing import interleaved_p50, machine_line, save

from resnest_deploy.compare import UNCHECKED
from resnest_deploy.data import Transform, digits, digits_batch
from resnest_deploy.export import export_onnx
from resnest_deploy.metadata import machine
from resnest_deploy.models import get_spec, load_model
from resnest_deploy.precision import ConversionConfig, RunOptions, calibration, convert, int8
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

GATE = tuple(p for p in int8.KEEP_FP32_NODES if p != r"^/fc/")
CLASSIFIER = (r"^/fc/",)
#: name -> (cpu_isa, nodes kept in FP32)
CHOICES = {
    "default: 7-bit weights, gate + classifier FP32": ("any", int8.KEEP_FP32_NODES),
    "8-bit weights (--cpu-isa vnni)": ("vnni", int8.KEEP_FP32_NODES),
    "gate quantized": ("any", CLASSIFIER),
    "classifier quantized": ("any", GATE),
    "gate + classifier quantized": ("any", ()),
    "8-bit, gate + classifier quantized": ("vnni", ()),
}
EMULATED = """
import sys, numpy as np
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    with OnnxRuntimeRunner(path) as r:
        np.save(path + ".haswell.npy", r.infer(x))
"""


def made(src: Path, folder: Path, calib: calibration.CalibrationData, tag: str) -> dict[str, Path]:
    return {
        name: convert(
            src,
            folder / f"{tag}.{i}.onnx",
            ConversionConfig("int8", "cpu", keep_fp32_nodes=keep, cpu_isa=isa, tolerance=UNCHECKED),
            calib,
            RunOptions(use_cache=False),
        ).path
        for i, (name, (isa, keep)) in enumerate(CHOICES.items())
    }


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def accuracy(folder: Path) -> dict[str, dict]:
    model, info = load_model("resnest14d_digits", "pretrained")
    src = export_onnx(model, folder / "digits.onnx", weights=info).path
    transform = Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)
    files = made(src, folder, calibration.from_digits(transform), "digits")
    images, labels = digits("test")
    x = digits_batch(images, transform)
    with OnnxRuntimeRunner(src) as r:
        reference = r.infer_batched(x, 64)
    out = {}
    for name, path in files.items():
        with OnnxRuntimeRunner(path) as r:
            logits = r.infer_batched(x, 64)
        out[name] = {
            "top1": float((logits.argmax(1) == labels).mean() * 100),
            "worst_cosine": float(cosine(logits, reference).min()),
        }
    qemu = shutil.which("qemu-x86_64-static")
    if qemu and os.uname().machine == "x86_64":
        few = x[:32]
        np.save(folder / "x.npy", few)
        (folder / "emulated.py").write_text(EMULATED)
        args = [qemu, "-cpu", "Haswell", sys.executable, str(folder / "emulated.py"), str(folder / "x.npy")]
        subprocess.run([*args, *map(str, files.values())], check=True, capture_output=True, timeout=1200)
        for name, path in files.items():
            with OnnxRuntimeRunner(path) as r:
                here = r.infer(few)
            there = np.load(f"{path}.haswell.npy")
            out[name]["haswell_worst_cosine_vs_here"] = float(cosine(there, here).min())
    return out


def speed(folder: Path, rounds: int) -> dict[str, dict]:
    model, info = load_model("resnest50", "random")
    src = export_onnx(model, folder / "r50.onnx", weights=info).path
    x = np.random.default_rng(0).standard_normal((72, 3, 224, 224), dtype=np.float32)
    calib = calibration.CalibrationData(x[:64], x[64:], {"kind": "random", "count": 64})
    files = {"fp32": src, **made(src, folder, calib, "r50")}
    return {f"b{b}": interleaved_p50(files, rounds, batch=b, iterations=30) for b in (1, 8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        acc = accuracy(Path(tmp))
        timed = speed(Path(tmp), args.rounds)
    m = machine()
    fp32 = {b: timed[b]["fp32"]["p50_ms"] for b in timed}
    lines = [
        "# CPU-target INT8 choices on one machine: resnest50 speed (ONNX Runtime), digits accuracy",
        "",
        f"{machine_line(m)}. "
        f"p50 ms: the median (and the fastest) of {args.rounds} `bench` processes per file taking turns; "
        "rounds of one file spread by up to 20% on this shared 2-core VM. "
        f"resnest50 FP32: {fp32['b1']:.1f} ms at batch 1, {fp32['b8']:.1f} ms at batch 8.",
        "",
        "| choice | b1 ms (fastest) | vs FP32 | b8 ms (fastest) | vs FP32 | digits top-1 | worst cosine "
        "| AVX2 (emulated) worst cosine vs here |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in CHOICES:
        b1, b8 = timed["b1"][name]["p50_ms"], timed["b8"][name]["p50_ms"]
        fast1, fast8 = (min(timed[b][name]["rounds"]) for b in ("b1", "b8"))  # type: ignore[type-var]
        a = acc[name]
        haswell = a.get("haswell_worst_cosine_vs_here")
        lines.append(
            f"| {name} | {b1:.1f} ({fast1:.1f}) | {fp32['b1'] / b1:.2f}x | {b8:.1f} ({fast8:.1f}) "
            f"| {fp32['b8'] / b8:.2f}x "
            f"| {a['top1']:.2f} | {a['worst_cosine']:.4f} | {'-' if haswell is None else f'{haswell:.4f}'} |"
        )
    save(
        "int8_cpu_choices",
        {
            "machine": m,
            "choices": {k: {"cpu_isa": isa, "keep_fp32": list(keep)} for k, (isa, keep) in CHOICES.items()},
            "speed": timed,
            "accuracy": acc,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
