"""Time to first inference with and without the runtime cache: `predict` and `serve`, fresh processes.

    python benchmarks/first_inference.py [--rounds 3] [--int8 FILE] [--serve-rounds 2]

resnest50 with random weights, converted to the CPU-target INT8 file (`quantize --target cpu`).
For each round, against a cache root of the benchmark's own:

* `resnest-deploy predict INT8 img.png --provider openvino --json`, first with an empty cache (cold),
  then again (warm: the cache the first one filled); each figure is from spawning the process to its
  complete answer on stdout, measured here. The same for ONNX Runtime (its optimized-graph cache),
  for comparison.
* Where the time goes, in a fresh process (`python -m resnest_deploy.startup`): process start to the
  first answer, and opening the file (read, compile or load from cache, one inference).
* `resnest-deploy serve INT8 --provider openvino --status-file F` started cold, stopped, then started
  again: spawn to the status file (written once ready: Triton up, the model loaded and warmed up),
  and the `start_to_ready_s` serve records itself.
* serve's floor: the same, warm, for the bundled digits model (it compiles in milliseconds): Triton,
  its python stub and our imports. cold / floor bounds what any cache could give serve.

Goals: the second predict answers >= 3x sooner than the first; serve's second start is ready >= 2x
sooner. Medians over the rounds. Results: results/first_inference.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import machine_line, save

from resnest_deploy.compare import UNCHECKED
from resnest_deploy.metadata import machine

CLI = [sys.executable, "-m", "resnest_deploy.cli"]


def make_int8(folder: Path) -> Path:
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model
    from resnest_deploy.precision import ConversionConfig, calibration, convert

    model, info = load_model("resnest50", "random")
    fp32 = export_onnx(model, folder / "resnest50.onnx", weights=info).path
    del model
    x = np.random.default_rng(0).standard_normal((40, 3, 224, 224), dtype=np.float32)
    calib = calibration.CalibrationData(x[:32], x[32:], {"kind": "random", "count": 32})
    return convert(fp32, None, ConversionConfig("int8", "cpu", tolerance=UNCHECKED), calib).path


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """ms from spawning ``cmd`` until its answer (the JSON `predict --json` prints) is complete;
    the process's teardown after that is not part of answering."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    text, answered = "", None
    try:
        for line in proc.stdout:
            text += line
            try:
                json.loads(text)
            except ValueError:
                continue
            answered = (time.perf_counter() - started) * 1e3
            break
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if answered is None or proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:5])} gave no answer (exit {proc.returncode})")
    return answered


def startup_child(artifact: Path, provider: str, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "resnest_deploy.startup", str(artifact), provider, "1"]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_digits(folder: Path) -> Path:
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model("resnest14d_digits", "pretrained")
    return export_onnx(model, folder / "digits.onnx", weights=info).path


def serve_start(artifact: Path, env: dict[str, str], folder: Path) -> dict:
    from resnest_deploy.serving.server import Ports

    ports, status = Ports.free("127.0.0.1"), folder / "status.json"
    status.unlink(missing_ok=True)
    cmd = [*CLI, "serve", str(artifact), "--provider", "openvino", "--status-file", str(status)]
    cmd += ["--http-port", str(ports.http), "--grpc-port", str(ports.grpc)]
    cmd += ["--metrics-port", str(ports.metrics)]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while not status.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited: {proc.communicate()[1][-1000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("serve was not ready in 300 s")
            time.sleep(0.05)
        spawn_to_ready = (time.perf_counter() - started) * 1e3
        recorded = json.loads(status.read_text())["start_to_ready_s"]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return {"spawn_to_ready_ms": round(spawn_to_ready, 1), "start_to_ready_s": recorded}


def median(values: list[float]) -> float:
    return round(float(np.median(values)), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve-rounds", type=int, default=2)
    ap.add_argument("--int8", type=Path, help="an existing resnest50 CPU INT8 file (else made here)")
    args = ap.parse_args()
    m = machine()
    work = Path(tempfile.mkdtemp(prefix="first-inference-"))
    try:
        int8 = args.int8 or make_int8(work)
        from PIL import Image

        img = work / "img.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)).save(img)
        rows: dict[str, dict[str, list[float]]] = {}
        phases: dict[str, dict[str, list[float]]] = {}
        for r in range(args.rounds):
            for label, provider in (("openvino", "openvino"), ("onnxruntime", "cpu")):
                root = work / f"cache-{label}-{r}"
                env = os.environ | {"RESNEST_DEPLOY_CACHE": str(root)}
                cmd = [*CLI, "predict", str(int8), str(img), "--provider", provider, "--json"]
                row = rows.setdefault(label, {"cold": [], "warm": []})
                row["cold"].append(timed(cmd, env))
                row["warm"].append(timed(cmd, env))
                shutil.rmtree(root)
                for state in ("cold", "warm"):  # where the time goes, in fresh processes of their own
                    got = startup_child(int8, provider, env)
                    assert got["hit"] == (state == "warm"), got
                    ph = phases.setdefault(f"{label} {state}", {"process_ms": [], "open_ms": []})
                    ph["process_ms"].append(got["process_ms"])
                    ph["open_ms"].append(got["open_ms"])
                shutil.rmtree(root)
            print(f"round {r + 1}/{args.rounds}: {json.dumps({k: v['warm'][-1] for k, v in rows.items()})}")
        serve: dict[str, list[dict]] = {"cold": [], "warm": []}
        for r in range(args.serve_rounds):
            root = work / f"cache-serve-{r}"
            env = os.environ | {"RESNEST_DEPLOY_CACHE": str(root)}
            serve["cold"].append(serve_start(int8, env, work))
            serve["warm"].append(serve_start(int8, env, work))
            shutil.rmtree(root)
            print(f"serve round {r + 1}/{args.serve_rounds}: {serve['cold'][-1]} then {serve['warm'][-1]}")
        # the floor: the same serve for a model that compiles in milliseconds (the bundled digits), warm
        digits = make_digits(work)
        root = work / "cache-floor"
        env = os.environ | {"RESNEST_DEPLOY_CACHE": str(root)}
        serve_start(digits, env, work)
        serve["floor"] = [serve_start(digits, env, work) for _ in range(args.serve_rounds)]
        print(f"serve floor: {serve['floor']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    predict = {
        k: {"cold_ms": median(v["cold"]), "warm_ms": median(v["warm"]), "rounds": v} for k, v in rows.items()
    }
    for v in predict.values():
        v["speedup"] = round(v["cold_ms"] / v["warm_ms"], 2)
    where = {
        k: {"process_ms": median(v["process_ms"]), "open_ms": median(v["open_ms"])} for k, v in phases.items()
    }
    serve_med = {
        state: {
            "spawn_to_ready_ms": median([s["spawn_to_ready_ms"] for s in runs]),
            "start_to_ready_s": round(float(np.median([s["start_to_ready_s"] for s in runs])), 3),
        }
        for state, runs in serve.items()
    }
    serve_speedup = round(serve_med["cold"]["spawn_to_ready_ms"] / serve_med["warm"]["spawn_to_ready_ms"], 2)
    floor = serve_med["floor"]["spawn_to_ready_ms"]
    # the best a cache could do: skip all of the model's own start-up, keep serve's fixed cost
    serve_bound = round(serve_med["cold"]["spawn_to_ready_ms"] / floor, 2)
    ov = predict["openvino"]
    goals = {
        "predict_second_3x_sooner": {"measured": ov["speedup"], "met": ov["speedup"] >= 3.0},
        "serve_second_2x_sooner": {"measured": serve_speedup, "met": serve_speedup >= 2.0},
    }
    results = {
        "machine": m,
        "artifact": "resnest50 INT8 (--target cpu), random weights",
        "rounds": args.rounds,
        "predict": predict,
        "phases": where,
        "serve": {
            "median": serve_med,
            "speedup": serve_speedup,
            "bound_if_the_model_cost_nothing": serve_bound,
            "runs": serve,
        },
        "goals": goals,
    }
    lines = [
        "# Time to first inference: resnest50 INT8 (CPU target), cold and warm runtime cache",
        "",
        f"{machine_line(m)}; "
        f"median of {args.rounds} rounds (serve: {args.serve_rounds}); each figure a fresh process.",
        "",
        "| command | cold ms | warm ms | warm sooner by |",
        "|---|---|---|---|",
    ]
    for k, v in predict.items():
        lines.append(f"| predict, {k} | {v['cold_ms']:.0f} | {v['warm_ms']:.0f} | {v['speedup']:.2f}x |")
    sc, sw = serve_med["cold"], serve_med["warm"]
    lines.append(
        f"| serve, openvino: spawn to ready | {sc['spawn_to_ready_ms']:.0f} | {sw['spawn_to_ready_ms']:.0f} "
        f"| {serve_speedup:.2f}x |"
    )
    lines.append(
        f"| serve, floor: the digits model (compiles in ms), warm | - | {floor:.0f} "
        f"| bound {serve_bound:.2f}x |"
    )
    lines += [
        "",
        "Where the time goes (python -m resnest_deploy.startup, batch 1): process start to first answer, "
        "and the part from opening the file (read, compile or cache load, one inference).",
        "",
        "| backend, cache | process start to answer ms | open to answer ms | before opening ms |",
        "|---|---|---|---|",
    ]
    for k, v in where.items():
        lines.append(
            f"| {k} | {v['process_ms']:.0f} | {v['open_ms']:.0f} | {v['process_ms'] - v['open_ms']:.0f} |"
        )
    lines += [
        "",
        f"Goals: second predict >= 3x sooner: {ov['speedup']:.2f}x "
        f"({'met' if goals['predict_second_3x_sooner']['met'] else 'NOT met'}); "
        f"serve's second start >= 2x sooner: {serve_speedup:.2f}x "
        f"({'met' if goals['serve_second_2x_sooner']['met'] else 'NOT met'}).",
    ]
    save("first_inference", results, "\n".join(lines))


if __name__ == "__main__":
    main()
