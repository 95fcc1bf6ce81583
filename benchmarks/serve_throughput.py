"""Served throughput through a real Triton server against offline `bench`, in one run.

    python benchmarks/serve_throughput.py [--requests 48]

For the digits model (FP32) and resnest50 (CPU INT8, random weights): `resnest-deploy bench` in its
own process at batch 1 and at the batcher's largest batch; then `serve` (tritonserver from
nvidia-pytriton, dynamic batching, python backend over the same runner) with 1, 4 and 16 concurrent
HTTP clients on 127.0.0.1, each sending single-image requests. Goal: served throughput at
concurrency 16 >= 85% of offline throughput at the batcher's largest batch.
Results: results/serve_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _timing import save

from resnest_deploy.compare import Tolerance
from resnest_deploy.data import Transform
from resnest_deploy.export import export_onnx
from resnest_deploy.metadata import machine
from resnest_deploy.models import get_spec, load_model
from resnest_deploy.precision import calibration, convert
from resnest_deploy.serving.server import Ports, running

MAX_BATCH = 16
CONCURRENCY = (1, 4, 16)


def artifacts(tmp: Path) -> dict[str, Path]:
    digits, info = load_model("resnest14d_digits", "pretrained")
    out = {"resnest14d_digits fp32": export_onnx(digits, tmp / "digits.onnx", weights=info).path}
    r50, info = load_model("resnest50", "random")
    fp32 = export_onnx(r50, tmp / "r50.onnx", weights=info).path
    x = np.random.default_rng(0).standard_normal((72, 3, 224, 224), dtype=np.float32)
    calib = calibration.CalibrationData(x[:64], x[64:], {"kind": "random", "count": 64})
    anything = Tolerance(rel_max_abs=float("inf"), cosine=-1.0, top1=0.0)  # speed only, random weights
    out["resnest50 int8 (cpu)"] = convert(
        fp32, precision="int8", target="cpu", calib=calib, tolerance=anything
    ).path
    del digits, r50
    return out


def offline(path: Path, iterations: int) -> dict[int, dict]:
    """`resnest-deploy bench` in its own process."""
    args = [sys.executable, "-m", "resnest_deploy.cli", "bench", str(path), "--json"]
    args += ["-b", f"1,{MAX_BATCH}", "-n", str(iterations)]
    rows = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    return {r["batch"]: r for r in rows}


def served(path: Path, requests: int) -> dict[int, dict]:
    import tritonclient.http as httpclient

    size = Transform.from_pretrained(
        get_spec("resnest14d_digits" if "digits" in path.name else "resnest50").pretrained
    ).size
    x = np.random.default_rng(1).standard_normal((1, 3, size, size), dtype=np.float32)
    out = {}
    with running([path], Ports.free(), max_batch_size=MAX_BATCH, queue_delay_us=2000) as (
        srv,
        entries,
    ):
        model = entries[0].name
        for concurrency in CONCURRENCY:
            per_client = max(4, requests // concurrency) if concurrency > 1 else requests

            def client(_: int, per_client: int = per_client) -> list[float]:
                c = httpclient.InferenceServerClient(srv.ports.url, network_timeout=120)
                inp = httpclient.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                times = []
                for _ in range(per_client):  # bounded
                    start = time.perf_counter()
                    c.infer(model, [inp])
                    times.append((time.perf_counter() - start) * 1e3)
                return times

            client(0)  # warm the connection and the model
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                times = [t for ts in pool.map(client, range(concurrency)) for t in ts]
            wall = time.perf_counter() - started
            out[concurrency] = {
                "requests": len(times),
                "images_per_s": round(len(times) / wall, 2),
                "p50_ms": round(float(np.percentile(times, 50)), 2),
                "p99_ms": round(float(np.percentile(times, 99)), 2),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=96, help="requests per concurrency level (about)")
    ap.add_argument("--iterations", type=int, default=10, help="offline bench iterations")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in artifacts(Path(tmp)).items():
            results[name] = {"offline": offline(path, args.iterations), "served": served(path, args.requests)}
    m = machine()
    lines = [
        f"# Served (Triton, dynamic batching, max batch {MAX_BATCH}) vs offline `bench`",
        "",
        f"{m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}, {m['date'][:10]}; "
        "clients on 127.0.0.1 send one image per request.",
        "",
        "| model | offline b=1 img/s | offline b=16 img/s | served c=1 img/s (p50/p99 ms) "
        "| c=4 | c=16 | c=16 / offline b=16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        off, srv = r["offline"], r["served"]
        cell = {
            c: f"{srv[c]['images_per_s']:.1f} ({srv[c]['p50_ms']:.1f}/{srv[c]['p99_ms']:.1f})"
            for c in CONCURRENCY
        }
        ratio = srv[16]["images_per_s"] / off[MAX_BATCH]["images_per_s"]
        r["ratio_c16_vs_offline_max_batch"] = round(ratio, 3)
        lines.append(
            f"| {name} | {off[1]['images_per_s']:.1f} | {off[MAX_BATCH]['images_per_s']:.1f} | {cell[1]} "
            f"| {cell[4]} | {cell[16]} | {ratio:.0%} |"
        )
    save("serve_throughput", {"machine": m, "max_batch": MAX_BATCH, "results": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
