"""Scale on one machine, honestly labelled: `serve` replicas behind HAProxy on 127.0.0.1, under wrk.

    apt-get install haproxy wrk
    python benchmarks/k8s_loopback.py [--replicas 2] [--seconds 20]

What a Kubernetes Service in front of the generated Deployment does, simulated without a cluster:
N replicas of `resnest-deploy serve` (the digits model) on loopback ports, HAProxy balancing them with
health checks on /v2/health/ready (as readiness probes do), and wrk sending KServe v2 binary-tensor
requests through it. Partway through, one replica is killed with SIGKILL (a node lost, an OOM kill).
It shows: requests spread over the replicas; the kill costs only the requests in flight on that
replica; and Triton's nv_inference_pending_request_count, the metric the generated HPA scales on,
moves with load. No traffic leaves 127.0.0.1; every process is stopped by its own id.
Results: results/k8s_loopback.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLI = Path(sys.executable).with_name("resnest-deploy")
MODEL = "digits"


def free_ports(n: int) -> list[int]:
    from resnest_deploy.serving.server import free_ports as free

    return free(n)


def start_replica(onnx: Path, folder: Path, index: int) -> dict:
    http, grpc, metrics = free_ports(3)
    status = folder / f"replica{index}.json"
    args = [str(CLI), "serve", str(onnx), "--name", MODEL, "--host", "127.0.0.1", "--max-batch-size", "16"]
    args += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    args += ["--status-file", str(status)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    return {"proc": proc, "http": http, "metrics": metrics, "status": status, "index": index}


def wait_ready(replicas: list[dict], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    for r in replicas:
        while not r["status"].exists():
            if r["proc"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replica {r['index']} did not start: {r['proc'].stderr.read()[-1500:]}")
            time.sleep(0.2)


def haproxy_config(port: int, replicas: list[dict]) -> str:
    servers = "\n".join(
        f"    server r{r['index']} 127.0.0.1:{r['http']} check inter 300ms fall 1 rise 2" for r in replicas
    )
    return f"""global
    maxconn 1024
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option redispatch
    retries 2
    retry-on conn-failure empty-response
frontend inference
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /v2/health/ready
{servers}
"""


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.M))


def inferences(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{MODEL}/stats", timeout=5) as r:
        return int(json.loads(r.read())["model_stats"][0]["inference_count"])


def rss_mib(root: int) -> float:
    """Resident memory of a replica: ``root`` (serve) and every process below it (tritonserver, which
    runs in a session of its own, and its python stubs)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError, AttributeError):
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            status = (entry / "status").read_text()
            rss[int(entry.name)] = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(below)
        tree |= below
    return round(sum(rss.get(pid, 0) for pid in tree) / 1024, 1)


def body_file(folder: Path) -> tuple[Path, int]:
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, 32, 32],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    path = folder / "request.bin"
    path.write_bytes(header + x.tobytes())
    return path, len(header)


def simulate(onnx: Path, replicas: int = 2, seconds: int = 20, connections: int = 16) -> dict:
    if not (shutil.which("haproxy") and shutil.which("wrk")):
        raise SystemExit("error: needs haproxy and wrk: apt-get install haproxy wrk")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = [start_replica(onnx, folder, i) for i in range(replicas)]
        lb = None
        try:
            wait_ready(started)
            (port,) = free_ports(1)
            (folder / "haproxy.cfg").write_text(haproxy_config(port, started))
            lb = subprocess.Popen(
                ["haproxy", "-db", "-f", str(folder / "haproxy.cfg")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            time.sleep(1.5)  # health checks mark the replicas up
            idle = {r["index"]: metric(r["metrics"], "nv_inference_pending_request_count") for r in started}
            body, header = body_file(folder)
            cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
            cmd += [
                "-s",
                str(HERE / "wrk_infer.lua"),
                f"http://127.0.0.1:{port}",
                "--",
                MODEL,
                str(body),
                str(header),
            ]
            load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            pending: dict[int, list[float]] = {r["index"]: [] for r in started}
            before_kill: dict[int, int] = {}
            memory: dict[int, float] = {}
            victim = started[-1]
            stop = time.monotonic() + seconds
            kill_at = time.monotonic() + seconds / 3
            killed = False
            while time.monotonic() < stop and load.poll() is None:
                for r in started:
                    if r is victim and killed:
                        continue
                    with contextlib.suppress(OSError):
                        pending[r["index"]].append(metric(r["metrics"], "nv_inference_pending_request_count"))
                if not killed and time.monotonic() >= kill_at:
                    before_kill = {r["index"]: inferences(r["http"]) for r in started}
                    memory = {r["index"]: rss_mib(r["proc"].pid) for r in started}
                    os.killpg(victim["proc"].pid, signal.SIGKILL)  # the replica and its Triton, by its pid
                    killed = True
                time.sleep(0.1)
            out, _ = load.communicate(timeout=seconds + 60)
            fields = dict(kv.split("=") for kv in out.split("RESULT ", 1)[1].split())
            survivors = {r["index"]: inferences(r["http"]) for r in started if r is not victim}
        finally:
            for proc in [*(r["proc"] for r in started), *([lb] if lb else [])]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in [*(r["proc"] for r in started), *([lb] if lb else [])]:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            from resnest_deploy.serving.server import clean_stale_runs

            clean_stale_runs()  # the killed replica's repository and python stub, as the next serve would
    requests, errors = int(fields["requests"]), int(fields["errors"])
    return {
        "replicas": replicas,
        "connections": connections,
        "seconds": seconds,
        "requests": requests,
        "errors": errors,
        "images_per_s": round(requests / (int(fields["duration_us"]) / 1e6), 1),
        "p50_ms": int(fields["p50_us"]) / 1e3,
        "p99_ms": int(fields["p99_us"]) / 1e3,
        "served_before_kill": before_kill,
        "served_by_survivors_at_end": survivors,
        "pending_idle": idle,
        "pending_under_load_max": {k: max(v) if v else 0.0 for k, v in pending.items()},
        "pending_under_load_mean": {k: round(float(np.mean(v)), 2) if v else 0.0 for k, v in pending.items()},
        "killed": victim["index"],
        "rss_mib_under_load": memory,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    from resnest_deploy.export import export_onnx
    from resnest_deploy.metadata import machine
    from resnest_deploy.models import load_model

    with tempfile.TemporaryDirectory() as tmp:
        model, info = load_model("resnest14d_digits", "pretrained")
        onnx = export_onnx(model, Path(tmp) / "digits.onnx", weights=info).path
        result = simulate(onnx, args.replicas, args.seconds)
    m = machine()
    spread = result["served_before_kill"]
    lines = [
        "# Scale on one machine: `serve` replicas behind HAProxy on 127.0.0.1 (a simulation, no cluster)",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['date'][:10]}. "
        f"{result['replicas']} replicas of the digits model, "
        f"wrk with {result['connections']} connections for {result['seconds']} s through HAProxy "
        f"(health checks on /v2/health/ready); replica {result['killed']} SIGKILLed a third of the way in.",
        "",
        "| what | measured |",
        "|---|---|",
        f"| requests answered / failed | {result['requests']} / {result['errors']} |",
        f"| throughput, p50 / p99 | {result['images_per_s']} img/s, "
        f"{result['p50_ms']} / {result['p99_ms']} ms |",
        f"| served per replica before the kill | {', '.join(f'r{k}: {v}' for k, v in spread.items())} |",
        "| memory per replica under load (RSS: serve, tritonserver, python stub) | "
        + ", ".join(f"r{k}: {v:.0f} MiB" for k, v in result["rss_mib_under_load"].items())
        + " |",
        "| pending requests per replica, idle / under load (max) | "
        + ", ".join(
            f"r{k}: {result['pending_idle'][k]:.0f} / {result['pending_under_load_max'][k]:.0f}"
            for k in result["pending_idle"]
        )
        + " |",
        "",
        f"The kill cost {result['errors']} requests "
        f"(at most the {result['connections']} in flight can be lost);",
        "nv_inference_pending_request_count, which the generated HPA scales on, rises with load.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "k8s_loopback.json").write_text(
        json.dumps({"machine": m, **result}, indent=2, default=str) + "\n"
    )
    (args.out / "k8s_loopback.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
