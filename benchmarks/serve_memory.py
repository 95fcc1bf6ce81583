"""What one `serve` pod holds in memory, to size the Kubernetes memory request from the repository.

    python benchmarks/serve_memory.py [--arch resnest50] [--out DIR]

Serves the digits model (2 MiB) and a large ONNX file (resnest50 at 224x224, random weights, about
100 MiB) with `resnest-deploy serve` on 127.0.0.1, one and two python-backend instances, sends each
requests at the maximum batch (binary tensors), then reads the memory of serve and every process
below it (tritonserver and its python stubs). The request is sized by the sum of their RSS: it counts
a library shared by serve's and the stub's Python twice, so it errs high; PSS, listed beside it,
splits shared pages with every process on the machine that maps them (other work here), so in a
pod of its own it would err low. From the runs:

    per_instance = RSS(digits, 2 instances) - RSS(digits, 1 instance)     (a stub and its runtime)
    per_byte     = (RSS(large) - RSS(digits)) / (MiB(large) - MiB(digits))
    base         = RSS(digits) - per_instance - per_byte * MiB(digits)     (serve and tritonserver)

so that `k8s` requests  base + sum over models of instances * (per_instance + per_byte * bytes).
Every process is stopped by its own id; nothing leaves 127.0.0.1.
Results: results/serve_memory.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLI = Path(sys.executable).with_name("resnest-deploy")
BATCH = 8
REQUESTS = 6


def tree_of(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(below)
        tree |= below
    return tree


def memory_mib(root: int) -> dict[str, float]:
    """PSS and RSS of ``root`` and every process below it (tritonserver runs in its own session,
    but is still serve's child; the stubs are tritonserver's)."""
    total = {"pss": 0, "rss": 0}
    for pid in tree_of(root):
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            for key in total:
                m = re.search(rf"^{key.capitalize()}:\s+(\d+) kB", text, re.M)
                total[key] += int(m.group(1)) if m else 0
    return {k: round(v / 1024, 1) for k, v in total.items()}


def measure(onnx: Path, folder: Path, instances: int) -> dict:
    import onnx as onnx_proto
    import tritonclient.http as httpclient

    from resnest_deploy.serving.server import free_ports

    http, grpc, metrics = free_ports(3)
    status = folder / f"status-{onnx.stem}-{instances}.json"
    args = [str(CLI), "serve", str(onnx), "--name", "m", "--max-batch-size", str(BATCH)]
    args += ["--instances", str(instances), "--http-port", str(http), "--grpc-port", str(grpc)]
    args += ["--metrics-port", str(metrics), "--status-file", str(status)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not status.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"serve did not start: {proc.stderr.read()[-1500:] if proc.stderr else ''}"
                )
            time.sleep(0.2)
        dims = onnx_proto.load(onnx, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        h, w = dims[2].dim_value, dims[3].dim_value
        x = np.random.default_rng(0).standard_normal((BATCH, 3, h, w), dtype=np.float32)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}", network_timeout=300)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        for _ in range(REQUESTS):
            client.infer("m", [inp])
        client.close()
        time.sleep(1.0)
        return {
            "file": onnx.name,
            "bytes": onnx.stat().st_size,
            "instances": instances,
            **memory_mib(proc.pid),
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def export(arch: str, weights: str, folder: Path) -> Path:
    out = folder / f"{arch}.onnx"
    subprocess.run(
        [str(CLI), "export", "-a", arch, "-w", weights, "-o", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=900,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnest50", help="the large model (random weights)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        digits = export("resnest14d_digits", "pretrained", folder)
        large = export(a.arch, "random", folder)
        runs = [measure(digits, folder, 1), measure(digits, folder, 2), measure(large, folder, 1)]
    small, two, big = runs
    per_instance = two["rss"] - small["rss"]
    per_byte = (big["rss"] - small["rss"]) / ((big["bytes"] - small["bytes"]) / 2**20)
    base = small["rss"] - per_instance - per_byte * small["bytes"] / 2**20
    result = {
        "runs": runs,
        "batch": BATCH,
        "fit": {
            "base_mib": round(base, 1),
            "per_instance_mib": round(per_instance, 1),
            "per_model_mib_per_file_mib": round(per_byte, 2),
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "note": "other work ran on the machine beside it",
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "serve_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# serve: memory per pod (serve, tritonserver and its python stubs, after batch {BATCH} requests)",
        "",
        "| file | MiB on disk | instances | RSS MiB (sized by) | PSS MiB |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['file']} | {r['bytes'] / 2**20:.1f} | {r['instances']} | {r['rss']} | {r['pss']} |"
        )
    f = result["fit"]
    lines += [
        "",
        f"Fit (RSS): base {f['base_mib']} MiB (serve and tritonserver), {f['per_instance_mib']} MiB per "
        f"python-backend instance, {f['per_model_mib_per_file_mib']} MiB per MiB of model file per "
        "instance.",
    ]
    (a.out / "serve_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
