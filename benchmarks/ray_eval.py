"""eval on a Ray cluster on this machine against eval here: the steady rate, the fixed cost, and what
a second node adds.

    python benchmarks/ray_eval.py [--r50-images 1500] [--digits-copies 8] [--small 0.25] [--rounds 2]

Files: the bundled digits model (FP32; the 899 test digits as PNG files, the set written
--digits-copies times over) and resnest50 INT8 for CPUs (random weights, random calibration: speed
only) over --r50-images random 256x256 JPEG files. Every figure is one `evaluate` in a process of its
own (this script run with --measure), timed from the call to the counts, so it includes what a real
job pays: actor start, the artifact shipped and checked, images read and decoded on the workers.

Each setup runs every model twice: over a small set (the first --small fraction of the files) and
over the whole set. A job costs about ``fixed + images / rate``, so the two sizes give the **steady
rate** ``(N2 - N1) / (t2 - t1)`` (images/s once the job runs) and the **fixed cost**
``t2 - N2 / rate`` (seconds a job pays whatever its size). The goals are judged on the steady rate:
with few images a job measures its fixed cost, not its rate. Clusters are
`ray.cluster_utils.Cluster` on 127.0.0.1 (a head without CPUs and worker nodes):

- local: `evaluate` on this machine (ONNX Runtime with its default threads: every core), measured
  again right before each cluster setup, which is compared with the local run just before it (a
  shared machine's load drifts over the minutes a run takes);
- ray 1x2: one worker node of 2 CPUs (two actors of one thread): the overhead of the engine
  (goal: a steady rate >= 80% of local's);
- ray 1x1 and ray 2x1: one, then two worker nodes of one CPU each: what a second node adds
  (goal on resnest50 INT8: 2x1 >= 1.7x 1x1).

Results: results/<--name>.{json,md} (default ray_eval). A 2-core machine runs two one-CPU "nodes" on
the same two cores, so 2x1 against 1x1 is at most 2x here, and less when anything else runs: run it
on a quiet machine.
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
from typing import Any

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
    """One `evaluate` in a process of its own."""
    args = [sys.executable, __file__, "--measure", str(file), str(folder)]
    args += [address] if address else []
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_files(folder: Path, r50_images: int, digits_copies: int, small: float) -> dict[str, dict[int, Path]]:
    """The two models and, for each, a folder of images at two sizes (the small one hard links to
    the first files of the large one): ``{model: {images: folder}}``."""
    from resnest_deploy.data import digits
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model("resnest14d_digits", "pretrained")
    digits_onnx = export_onnx(model, folder / "digits.onnx", weights=info).path
    images, labels = digits("test")
    firsts = []
    for i, (im, y) in enumerate(zip(images, labels, strict=True)):
        (folder / "digits" / str(y)).mkdir(parents=True, exist_ok=True)
        first = folder / "digits" / str(y) / f"0-{i}.png"
        Image.fromarray(im).save(first)
        firsts.append(first)
    for copy in range(1, digits_copies):  # the same files again under other names: more images
        for first in firsts:
            os.link(first, first.with_name(f"{copy}-{first.name.split('-', 1)[1]}"))
    r50 = _r50_int8(folder)
    rng = np.random.default_rng(1)
    (folder / "photos" / "0").mkdir(parents=True)
    for i in range(r50_images):
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "photos" / "0" / f"{i:06d}.jpg", quality=90)
    return {
        "resnest14d_digits fp32": _two_sizes(digits_onnx, folder / "digits", small),
        "resnest50 int8 (cpu)": _two_sizes(r50, folder / "photos", small),
    }


def _r50_int8(folder: Path) -> Path:
    from resnest_deploy.compare import UNCHECKED
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model
    from resnest_deploy.precision import ConversionConfig, RunOptions, calibration, convert

    model, info = load_model("resnest50", "random")
    src = export_onnx(model, folder / "r50.onnx", weights=info).path
    x = np.random.default_rng(0).standard_normal((24, 3, 224, 224), dtype=np.float32)
    calib = calibration.CalibrationData(x[:16], x[16:], {"kind": "random", "count": 16})
    return convert(
        src,
        folder / "r50.int8-cpu.onnx",
        ConversionConfig("int8", "cpu", tolerance=UNCHECKED),
        calib,
        RunOptions(use_cache=False),
    ).path


def _two_sizes(model: Path, folder: Path, small: float) -> dict[str, Any]:
    """The whole folder, and a copy of its first ``small`` fraction (hard links; by file name first,
    so the digits' small set holds every class)."""
    files = sorted(folder.rglob("*.*"), key=lambda f: (f.name, f.parent.name))
    few = folder.with_name(f"{folder.name}-small")
    count = max(1, round(len(files) * small))
    for f in files[:count]:
        (few / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(f, few / f.parent.name / f.name)
    return {"model": model, "sizes": {count: few, len(files): folder}}


def steady(small: dict[str, float], large: dict[str, float]) -> dict[str, float | None]:
    """The steady rate and the fixed cost from one job over N1 images and one over N2 > N1:
    ``t = fixed + N / rate``. None where the larger job was not slower (too few images to tell)."""
    dn, dt = large["images"] - small["images"], large["seconds"] - small["seconds"]
    if dn <= 0 or dt <= 0:
        return {"steady_images_per_s": None, "fixed_s": None}
    rate = dn / dt
    return {"steady_images_per_s": rate, "fixed_s": large["seconds"] - large["images"] / rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--r50-images", type=int, default=1500, help="resnest50 INT8 images (the large set).")
    ap.add_argument("--digits-copies", type=int, default=8, help="The 899 digits this many times over.")
    ap.add_argument("--small", type=float, default=0.25, help="The small set: this fraction of the large.")
    ap.add_argument("--rounds", type=int, default=2, help="Each figure is the best of this many runs.")
    ap.add_argument("--name", default="ray_eval", help="Results go to results/NAME.{json,md}.")
    args = ap.parse_args()
    if not 0 < args.small < 1 or args.r50_images < 2 or args.digits_copies < 1 or args.rounds < 1:
        ap.error("--small must be between 0 and 1, --r50-images at least 2, the others at least 1")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RESNEST_DEPLOY_CACHE"] = str(Path(tmp) / "cache")
        files = make_files(Path(tmp), args.r50_images, args.digits_copies, args.small)
        print(f"files ready in {time.monotonic() - started:.0f} s", flush=True)
        figures = run_setups(files, args.rounds)
    report(figures, args, time.monotonic() - started)


def run_setups(files: dict[str, dict[str, Any]], rounds: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Every setup in turn, each cluster setup right after a local run; every model at both sizes."""
    from ray.cluster_utils import Cluster

    figures: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in files}

    def record(setup: str, address: str | None) -> None:
        for name, f in files.items():
            by_size = {}
            for images, folder in f["sizes"].items():
                runs = [run_measure(f["model"], folder, address) for _ in range(rounds)]
                best = min(runs, key=lambda r: r["seconds"])
                by_size[images] = best | {"images_per_s": best["images"] / best["seconds"]}
            small, large = (by_size[n] for n in sorted(by_size))
            figures[name][setup] = {"small": small, "large": large} | steady(small, large)
            print(setup, name, json.dumps(figures[name][setup]), flush=True)

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
    return figures


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def goals(figures: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The issue's goals, judged on the steady rate (and, beside it, on the whole job's images/s)."""
    rows = []
    for name, by_setup in figures.items():
        ray, local = by_setup["ray 1x2"], by_setup["local before 1x2"]
        rows.append(
            {
                "goal": f"{name}: one-node Ray (1x2) >= 80% of local images/s",
                "need": 0.8,
                "steady": _ratio(ray["steady_images_per_s"], local["steady_images_per_s"]),
                "whole_job": _ratio(ray["large"]["images_per_s"], local["large"]["images_per_s"]),
            }
        )
    r50 = figures["resnest50 int8 (cpu)"]
    one, two = r50["ray 1x1"], r50["ray 2x1"]
    rows.append(
        {
            "goal": "resnest50 int8 (cpu): two nodes (2x1) >= 1.7x one (1x1)",
            "need": 1.7,
            "steady": _ratio(two["steady_images_per_s"], one["steady_images_per_s"]),
            "whole_job": _ratio(two["large"]["images_per_s"], one["large"]["images_per_s"]),
        }
    )
    for row in rows:
        row["met"] = None if row["steady"] is None else row["steady"] >= row["need"]  # None: not measured
    return rows


def report(figures: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace, elapsed: float) -> None:
    m = machine()
    lines = [
        "# eval on a Ray cluster on this machine (127.0.0.1) against eval here",
        "",
        f"{m['cpu']}, {m['cores']} cores; CPU flags: {' '.join(m['cpu_flags'])}",
        f"load average at the end: {os.getloadavg()[0]:.1f}; best of {args.rounds} runs; "
        f"the whole benchmark took {elapsed / 60:.1f} min",
        "",
        "Steady rate: (N2 - N1) / (t2 - t1) from a job over N1 and one over N2 images; "
        "fixed cost: t2 - N2 / rate.",
        "",
        "| model | setup | images N1 / N2 | seconds t1 / t2 | images/s at N2 | steady images/s | fixed s "
        "| steady vs the local run before | steady 2x1 / 1x1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_setup in figures.items():
        for setup, f in by_setup.items():
            versus, scale = "", ""
            if setup.startswith("ray"):
                local = by_setup[f"local before {setup.split()[1]}"]["steady_images_per_s"]
                versus = _fmt(_ratio(f["steady_images_per_s"], local), ".0%")
            if setup == "ray 2x1":
                one = by_setup["ray 1x1"]["steady_images_per_s"]
                scale = _fmt(_ratio(f["steady_images_per_s"], one), ".2f") + "x"
            small, large = f["small"], f["large"]
            lines.append(
                f"| {name} | {setup} | {int(small['images'])} / {int(large['images'])} "
                f"| {small['seconds']:.1f} / {large['seconds']:.1f} | {large['images_per_s']:.1f} "
                f"| {_fmt(f['steady_images_per_s'], '.1f')} | {_fmt(f['fixed_s'], '.1f')} "
                f"| {versus} | {scale} |"
            )
    judged = goals(figures)
    lines += ["", "| goal | steady rate | whole job at N2 | met (steady) |", "|---|---:|---:|---|"]
    for g in judged:
        spec, unit = (".0%", "") if g["need"] < 1 else (".2f", "x")
        met = {True: "yes", False: "no", None: "n/a (the larger job was not slower)"}[g["met"]]
        lines.append(
            f"| {g['goal']} | {_fmt(g['steady'], spec)}{unit} | {_fmt(g['whole_job'], spec)}{unit} | {met} |"
        )
    results = {
        "machine": m,
        "rounds": args.rounds,
        "r50_images": args.r50_images,
        "digits_copies": args.digits_copies,
        "small": args.small,
        "elapsed_s": elapsed,
        "load_average": os.getloadavg(),
        "figures": figures,
        "goals": judged,
    }
    save(args.name, results, "\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)))
    else:
        main()
