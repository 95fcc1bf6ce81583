"""eval on a Ray cluster on this machine against eval here: images/s, and what a second node adds.

    python benchmarks/ray_eval.py [--r50-images 96] [--rounds 2]

Files: the bundled digits model (FP32, 899 test digits as PNG files) and resnest50 INT8 for CPUs
(random weights, random calibration: speed only) over N random 256x256 JPEG files. Every figure is
one `evaluate` in a process of its own (this script run with --measure), timed from the call to the
counts, so it includes what a real job pays: actor start, the artifact shipped and checked, images
read and decoded on the workers. Clusters are `ray.cluster_utils.Cluster` on 127.0.0.1 (a head
without CPUs and worker nodes):

- local: `evaluate` on this machine (ONNX Runtime with its default threads: every core), measured
  again right before each cluster setup, which is compared with the local run just before it (a
  shared machine's load drifts over the minutes a run takes);
- ray 1x2: one worker node of 2 CPUs (two actors of one thread): the overhead of the engine;
- ray 1x1 and ray 2x1: one, then two worker nodes of one CPU each: what a second node adds.

Results: results/ray_eval.{json,md}. A 2-core machine runs two one-CPU "nodes" on the same two
cores, so 2x1 against 1x1 is at most 2x here, and less when anything else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import save
from PIL import Image

from resnest_deploy.metadata import machine


def measure(file: str, folder: str, address: str | None) -> dict[str, float]:
    from resnest_deploy.evaluate import evaluate
    from resnest_deploy.executors import LocalExecutor

    if address:
        from resnest_deploy.executors.ray_cluster import RayExecutor

        executor = RayExecutor(address)
    else:
        executor = LocalExecutor()  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        results, described = evaluate([file], folder, executor=executor)
        seconds = time.perf_counter() - start
    finally:
        executor.close()
    return {"seconds": seconds, "images": described["images"], "top1": results[0].top1}


def run_measure(file: Path, folder: Path, address: str | None) -> dict[str, float]:
    args = [sys.executable, __file__, "--measure", str(file), str(folder)]
    args += [address] if address else []
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_files(folder: Path, r50_images: int) -> dict[str, tuple[Path, Path]]:
    from resnest_deploy.compare import UNCHECKED
    from resnest_deploy.data import digits
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model
    from resnest_deploy.precision import ConversionConfig, RunOptions, calibration, convert

    model, info = load_model("resnest14d_digits", "pretrained")
    digits_onnx = export_onnx(model, folder / "digits.onnx", weights=info).path
    images, labels = digits("test")
    for i, (im, y) in enumerate(zip(images, labels, strict=True)):
        (folder / "digits" / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / "digits" / str(y) / f"{i}.png")
    model, info = load_model("resnest50", "random")
    src = export_onnx(model, folder / "r50.onnx", weights=info).path
    x = np.random.default_rng(0).standard_normal((24, 3, 224, 224), dtype=np.float32)
    calib = calibration.CalibrationData(x[:16], x[16:], {"kind": "random", "count": 16})
    r50 = convert(
        src,
        folder / "r50.int8-cpu.onnx",
        ConversionConfig("int8", "cpu", tolerance=UNCHECKED),
        calib,
        RunOptions(use_cache=False),
    ).path
    rng = np.random.default_rng(1)
    (folder / "photos" / "0").mkdir(parents=True)
    for i in range(r50_images):
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "photos" / "0" / f"{i}.jpg", quality=90)
    return {
        "resnest14d_digits fp32": (digits_onnx, folder / "digits"),
        "resnest50 int8 (cpu)": (r50, folder / "photos"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--r50-images", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2, help="Each figure is the best of this many runs.")
    args = ap.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RESNEST_DEPLOY_CACHE"] = str(Path(tmp) / "cache")
        files = make_files(Path(tmp), args.r50_images)
        figures: dict[str, dict[str, dict[str, float]]] = {name: {} for name in files}

        def record(setup: str, address: str | None) -> None:
            for name, (file, folder) in files.items():
                runs = [run_measure(file, folder, address) for _ in range(args.rounds)]
                best = min(runs, key=lambda r: r["seconds"])
                figures[name][setup] = best | {"images_per_s": best["images"] / best["seconds"]}
                print(setup, name, figures[name][setup], flush=True)

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        try:
            node = cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()
            record("local before 1x2", None)
            record("ray 1x2", cluster.address)
            cluster.remove_node(node)
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            record("local before 1x1", None)
            record("ray 1x1", cluster.address)
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            record("local before 2x1", None)
            record("ray 2x1", cluster.address)
        finally:
            cluster.shutdown()
    report(figures, args)


def report(figures: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    m = machine()
    lines = [
        "# eval on a Ray cluster on this machine (127.0.0.1) against eval here",
        "",
        f"{m['cpu']}, {m['cores']} cores; CPU flags: {' '.join(m['cpu_flags'])}",
        f"load average at the end: {os.getloadavg()[0]:.1f} (other work shared the machine)",
        "",
        "| model | setup | images | seconds | images/s | vs the local run before | 2x1 / 1x1 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, by_setup in figures.items():
        for setup, f in by_setup.items():
            scale, versus = "", ""
            if setup.startswith("ray"):
                local = by_setup[f"local before {setup.split()[1]}"]["images_per_s"]
                versus = f"{f['images_per_s'] / local:.0%}"
            if setup == "ray 2x1":
                scale = f"{f['images_per_s'] / by_setup['ray 1x1']['images_per_s']:.2f}x"
            lines.append(
                f"| {name} | {setup} | {int(f['images'])} | {f['seconds']:.1f} | {f['images_per_s']:.1f} | "
                f"{versus} | {scale} |"
            )
    results = {"machine": m, "rounds": args.rounds, "load_average": os.getloadavg(), "figures": figures}
    save("ray_eval", results, "\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)))
    else:
        main()
