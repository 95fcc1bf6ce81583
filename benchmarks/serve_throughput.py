"""Served throughput and latency through `serve`, driven by wrk, against offline `bench`, in one run.

    apt-get install wrk   # Debian's compiled HTTP load generator
    python benchmarks/serve_throughput.py [--seconds 10]

For the digits model (FP32) and resnest50 (CPU INT8, random weights): `resnest-deploy bench` in its
own process at batch 1 and at the batcher's largest batch; then `serve` (tritonserver from
nvidia-pytriton behind the HTTP front, dynamic batching, python backend over the same runner) under
wrk with 1, 4 and 16 connections on 127.0.0.1, each sending one-image KServe v2 binary-tensor
requests (benchmarks/wrk_infer.lua). wrk's own CPU use is measured and reported next to each figure,
so a reader can tell whether the client was the bottleneck.

The floor of this server: the same tritonserver, config and request serving a python model that
returns zeros without running anything (model.py swapped for one that does nothing). Our per-request
overhead is the served p50 at concurrency 1 minus the offline p50 at batch 1. The front's own cost is
measured by sending the same load straight to Triton's private HTTP port.

Goals: served throughput at concurrency 16 >= 85% of offline throughput at the batcher's largest batch
(resnest50 INT8); our overhead at concurrency 1 within 1.5x of the floor (digits).
Results: results/serve_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import machine_line, save

from resnest_deploy.compare import UNCHECKED
from resnest_deploy.export import export_onnx
from resnest_deploy.metadata import machine
from resnest_deploy.models import load_model
from resnest_deploy.precision import ConversionConfig, calibration, convert
from resnest_deploy.serving import repository
from resnest_deploy.serving.server import Ports, running

MAX_BATCH = 16
FLOOR = "floor: no-op python model, digits I/O"
CONCURRENCY = (1, 4, 16)
HERE = Path(__file__).parent
NOOP_MODEL = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The floor: reads each request's input, answers zeros of the output's shape."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.classes = config["output"][0]["dims"][0]

    def execute(self, requests):
        responses = []
        for request in requests:
            x = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name))
            y = np.zeros((x.shape[0], self.classes), np.float32)
            out = pb_utils.Tensor.from_dlpack(self.output_name, y)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''


def artifacts(tmp: Path) -> dict[str, Path]:
    digits, info = load_model("resnest14d_digits", "pretrained")
    out = {"resnest14d_digits fp32": export_onnx(digits, tmp / "digits.onnx", weights=info).path}
    r50, info = load_model("resnest50", "random")
    fp32 = export_onnx(r50, tmp / "r50.onnx", weights=info).path
    x = np.random.default_rng(0).standard_normal((72, 3, 224, 224), dtype=np.float32)
    calib = calibration.CalibrationData(x[:64], x[64:], {"kind": "random", "count": 64})
    out["resnest50 int8 (cpu)"] = convert(
        fp32, None, ConversionConfig("int8", "cpu", tolerance=UNCHECKED), calib
    ).path
    del digits, r50
    return out


def offline(path: Path, iterations: int) -> dict[int, dict]:
    """`resnest-deploy bench` in its own process."""
    args = [sys.executable, "-m", "resnest_deploy.cli", "bench", str(path), "--json"]
    args += ["-b", f"1,{MAX_BATCH}", "-n", str(iterations)]
    rows = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    return {r["batch"]: r for r in rows}


def request_body(path: Path, folder: Path) -> tuple[Path, int]:
    """One image as a KServe v2 binary-tensor request: (file, JSON header length)."""
    dims = repository.model_config(path).input_dims
    x = np.random.default_rng(1).standard_normal((1, *dims), dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = folder / f"{path.stem}.body"
    body.write_bytes(header + x.tobytes())
    return body, len(header)


def wrk(port: int, model: str, body: Path, header: int, connections: int, seconds: int) -> dict:
    """wrk for ``seconds`` (bounded), its CPU time measured from its rusage."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    threads = 1 if connections == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
    cmd += [
        "-s",
        str(HERE / "wrk_infer.lua"),
        f"http://127.0.0.1:{port}",
        "--",
        model,
        str(body),
        str(header),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    fields = dict(kv.split("=") for kv in out.split("RESULT ", 1)[1].split())
    n, errors, duration = int(fields["requests"]), int(fields["errors"]), int(fields["duration_us"]) / 1e6
    if errors:
        raise RuntimeError(f"wrk saw {errors} failed requests against {model}: {out}")
    return {
        "requests": n,
        "images_per_s": round(n / duration, 1),
        "p50_ms": int(fields["p50_us"]) / 1e3,
        "p99_ms": int(fields["p99_us"]) / 1e3,
        "client_cpu_share": round(cpu / wall / (os.cpu_count() or 1), 3),
    }


def served(path: Path, seconds: int, folder: Path, *, direct: bool = False) -> dict:
    body, header = request_body(path, folder)
    out: dict = {}
    with running([path], Ports.free(), max_batch_size=MAX_BATCH, queue_delay_us=2000) as (srv, entries):
        model = entries[0].name
        wrk(srv.ports.http, model, body, header, 1, 1)  # warm up the connection and the model
        for c in CONCURRENCY:
            out[str(c)] = wrk(srv.ports.http, model, body, header, c, seconds)
        if direct:  # the same load straight to Triton's private HTTP port: what the front costs
            out["direct"] = {str(c): wrk(srv.internal_http, model, body, header, c, seconds) for c in (1, 16)}
    return out


def floor(path: Path, seconds: int, folder: Path) -> dict:
    """The same server and config with a model.py that only answers zeros."""
    noop = folder / "noop_model.py"
    noop.write_text(NOOP_MODEL)
    original = repository.PYTHON_MODEL
    repository.PYTHON_MODEL = noop
    try:
        return served(path, seconds, folder)
    finally:
        repository.PYTHON_MODEL = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10, help="wrk duration per concurrency level")
    ap.add_argument("--iterations", type=int, default=20, help="offline bench iterations")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed; run: apt-get install wrk")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        made = artifacts(folder)
        for name, path in made.items():
            digits = "digits" in name
            results[name] = {
                "offline": offline(path, args.iterations),
                "served": served(path, args.seconds, folder, direct=digits),
            }
        results[FLOOR] = {"served": floor(made["resnest14d_digits fp32"], args.seconds, folder)}
    m = machine()
    save(
        "serve_throughput",
        {"machine": m, "max_batch": MAX_BATCH, "seconds": args.seconds, **report(results)},
        "\n".join(table(results, m, args.seconds)),
    )


def cell(r: dict) -> str:
    return f"{r['images_per_s']:.0f} ({r['p50_ms']:.2f}/{r['p99_ms']:.2f}, {r['client_cpu_share']:.0%})"


def report(results: dict) -> dict:
    digits = results["resnest14d_digits fp32"]
    noop = results[FLOOR]["served"]["1"]["p50_ms"]
    ours = digits["served"]["1"]["p50_ms"] - digits["offline"][1]["p50_ms"]
    direct = digits["served"]["direct"]
    for r in results.values():
        if "offline" in r:
            r["ratio_c16_vs_offline_max_batch"] = round(
                r["served"]["16"]["images_per_s"] / r["offline"][MAX_BATCH]["images_per_s"], 3
            )
    summary = {
        "digits_overhead_c1_ms": round(ours, 3),
        "floor_c1_ms": noop,
        "overhead_vs_floor": round(ours / noop, 2),
        "guard_cost_c1_ms": round(digits["served"]["1"]["p50_ms"] - direct["1"]["p50_ms"], 3),
        "guard_share_c16": round(digits["served"]["16"]["images_per_s"] / direct["16"]["images_per_s"], 3),
        "direct_c16_images_per_s": direct["16"]["images_per_s"],
    }
    return {"results": results, "summary": summary}


def table(results: dict, m: dict, seconds: int) -> list[str]:
    s = report(results)["summary"]
    lines = [
        f"# Served through `serve` (front + Triton, dynamic batching, max batch {MAX_BATCH}) "
        "vs offline `bench`",
        "",
        f"{machine_line(m)}. "
        f"wrk on the same cores, {seconds} s per cell, one image per request (binary tensors). "
        "Cells: img/s (p50/p99 ms, wrk's CPU share).",
        "",
        "| model | offline b=1 img/s | offline b=16 img/s | c=1 | c=4 | c=16 | c=16 / offline b=16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        srv, off = r["served"], r.get("offline")
        first = f"{off[1]['images_per_s']:.0f} | {off[MAX_BATCH]['images_per_s']:.0f}" if off else "- | -"
        ratio = f"{r['ratio_c16_vs_offline_max_batch']:.0%}" if off else "-"
        lines.append(
            f"| {name} | {first} | {cell(srv['1'])} | {cell(srv['4'])} | {cell(srv['16'])} | {ratio} |"
        )
    lines += [
        "",
        f"Digits at concurrency 1: our per-request overhead (served p50 - offline p50) "
        f"{s['digits_overhead_c1_ms']:.2f} ms; the floor (no-op model, same server and request) "
        f"{s['floor_c1_ms']:.2f} ms: {s['overhead_vs_floor']:.2f}x (goal <= 1.5x).",
        f"The front: +{s['guard_cost_c1_ms']:.2f} ms at c=1; at c=16 it passes {s['guard_share_c16']:.0%} of "
        f"the img/s sent straight to Triton ({s['direct_c16_images_per_s']:.0f}): its Python shares the "
        "2 cores with Triton, the stub and wrk.",
    ]
    return lines


if __name__ == "__main__":
    main()
