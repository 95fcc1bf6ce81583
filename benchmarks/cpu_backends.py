"""CPU deployment: PyTorch eager vs ONNX Runtime vs OpenVINO, FP32, BF16 and INT8, in one run.

    python benchmarks/cpu_backends.py [--arch resnest50] [--iterations 20]

Each configuration is timed by `resnest-deploy bench` in its own process, batch 1 and 8, on the same
files: the FP32 export, our `--target cpu` INT8 (U8S8 QDQ; attention gate and classifier in FP32 by
default) and the same INT8 with nothing kept in FP32. Weights are random (latency does not depend on
them). BF16 rows only where the CPU has it. Results: results/cpu_backends.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _timing import machine_line, save

from resnest_deploy.compare import UNCHECKED
from resnest_deploy.export import export_onnx
from resnest_deploy.metadata import machine
from resnest_deploy.models import get_spec, load_model
from resnest_deploy.precision import ConversionConfig, calibration, convert


def bench(args: list[str], iterations: int) -> dict[int, dict]:
    cmd = [
        sys.executable,
        "-m",
        "resnest_deploy.cli",
        "bench",
        *args,
        "-b",
        "1,8",
        "-n",
        str(iterations),
        "--json",
    ]
    rows = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {r["batch"]: r for r in rows}


def nncf_int8(fp32: Path, calib: np.ndarray, out: Path) -> Path | None:
    """NNCF's post-training quantization of the same export with the same data (if nncf is installed),
    labelled int8 so our checks accept it."""
    try:
        import nncf
        import onnx
    except ImportError:
        return None
    from resnest_deploy import metadata

    q = nncf.quantize(
        onnx.load(fp32), nncf.Dataset(list(calib), lambda a: {"input": a[None]}), subset_size=len(calib)
    )
    metadata.embed(q, metadata.from_onnx(q) | {"precision": "int8", "target": "nncf"})
    onnx.save(q, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnest50")
    ap.add_argument("--iterations", type=int, default=20)
    args = ap.parse_args()
    m = machine()
    bf16 = "avx512_bf16" in m["cpu_flags"] or "amx_bf16" in m["cpu_flags"]
    with tempfile.TemporaryDirectory() as tmp:
        model, info = load_model(args.arch, "random")
        fp32 = export_onnx(model, Path(tmp) / "m.onnx", weights=info).path
        del model
        size = get_spec(args.arch).pretrained.input_size
        x = np.random.default_rng(0).standard_normal((72, 3, size, size), dtype=np.float32)
        calib = calibration.CalibrationData(x[:64], x[64:], {"kind": "random", "count": 64})
        int8 = convert(fp32, None, ConversionConfig("int8", "cpu", tolerance=UNCHECKED), calib).path
        int8_all = convert(
            fp32,
            Path(tmp) / "m.int8-all.onnx",
            ConversionConfig("int8", "cpu", keep_fp32_nodes=(), tolerance=UNCHECKED),
            calib,
        ).path
        nncf_file = nncf_int8(fp32, x[:64], Path(tmp) / "m.nncf.onnx")
        runs = {
            "pytorch eager fp32": ["torch", "--arch", args.arch, "--weights", "random"],
            "onnxruntime fp32": [str(fp32)],
            "openvino f32": [str(fp32), "--provider", "openvino"],
            **({"openvino bf16": [str(fp32), "--provider", "openvino-bf16"]} if bf16 else {}),
            "onnxruntime int8 (gate fp32)": [str(int8)],
            "openvino int8 (gate fp32)": [str(int8), "--provider", "openvino"],
            "openvino int8 (gate fp32), throughput hint": [
                str(int8),
                "--provider",
                "openvino",
                "--ov-hint",
                "throughput",
            ],
            **(
                {"openvino int8 (gate fp32), bf16 for the rest": [str(int8), "--provider", "openvino-bf16"]}
                if bf16
                else {}
            ),
            **(
                {
                    "onnxruntime int8, NNCF PTQ": [str(nncf_file)],
                    "openvino int8, NNCF PTQ": [str(nncf_file), "--provider", "openvino"],
                }
                if nncf_file
                else {}
            ),
            "onnxruntime int8 (all quantized)": [str(int8_all)],
            "openvino int8 (all quantized)": [str(int8_all), "--provider", "openvino"],
        }
        results = {name: bench(a, args.iterations) for name, a in runs.items()}
    eager = results["pytorch eager fp32"]
    lines = [
        f"# {args.arch} on the CPU: runtimes and precisions, each in its own process",
        "",
        f"{machine_line(m)}; {args.iterations} iterations, p50.",
        "",
        "| configuration | batch 1 ms | vs eager | batch 8 ms | vs eager |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r[1]['p50_ms']:.1f} | {eager[1]['p50_ms'] / r[1]['p50_ms']:.2f}x "
            f"| {r[8]['p50_ms']:.1f} | {eager[8]['p50_ms'] / r[8]['p50_ms']:.2f}x |"
        )
    save("cpu_backends", {"arch": args.arch, "machine": m, "results": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
