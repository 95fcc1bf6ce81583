"""serve's HTTP front against an older tree's, in one run: throughput, probes, stalled bodies.

    apt-get install wrk
    python benchmarks/serve_front.py --old /tmp/old-checkout [--seconds 10] [--rounds 2]
    python benchmarks/serve_front.py --old /tmp/before --old-name "front at 03f6af5" --new-name "this front"

``--old`` is a checkout of older code (e.g. ``git archive 3e92b46 | tar -x -C DIR``: the relay the
front replaced, the default names; or the front before a change, named with ``--old-name``).
Each configuration is `resnest-deploy serve` in a process of its own, started from its own tree
(PYTHONPATH), serving the digits model (FP32, max batch 16, queue delay 2 ms) on 127.0.0.1. For each:

* wrk (benchmarks/wrk_infer.lua: one-image binary-tensor KServe v2 requests) at 1 and 16
  connections through the public port, and at 16 straight to tritonserver's private HTTP port
  (direct: what Triton gives without a front); rounds alternate old and new, so drift hits both;
* health-probe latency (GET /v2/health/ready on a keep-alive connection, every 20 ms) while one client
  sends the largest body either front takes (a 64 MiB JSON request);
* the serve process's RSS with N connections that each declared a 64 MiB body and stalled after
  1 MiB, and what the next client got.

Goals (issue 29): the new front within 10% of the old at c=1 and c=16; >= 90% of direct at c=16.
Results: results/serve_front.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _timing import machine_line, save
from serve_throughput import request_body, wrk

from resnest_deploy.metadata import machine
from resnest_deploy.serving.server import Ports

HERE = Path(__file__).parent
NEW = HERE.parent
MAX_BATCH = 16
BIG = 64 * 2**20


def export_digits(folder: Path) -> Path:
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model("resnest14d_digits", "pretrained")
    return export_onnx(model, folder / "digits.onnx", weights=info).path


class Served:
    """`resnest-deploy serve` from ``tree`` in its own process group, stopped by its pid."""

    def __init__(self, tree: Path, model: Path, folder: Path) -> None:
        self.ports = Ports.free()
        run = f"{os.getpid()}-{time.monotonic_ns()}"
        status, log = folder / f"status-{run}.json", folder / f"tritonserver-{run}.log"
        env = dict(os.environ, PYTHONPATH=str(tree))
        args = [sys.executable, "-m", "resnest_deploy.cli", "serve", str(model)]
        args += ["--http-port", str(self.ports.http), "--grpc-port", str(self.ports.grpc)]
        args += ["--metrics-port", str(self.ports.metrics), "--max-batch-size", str(MAX_BATCH)]
        args += ["--queue-delay-us", "2000", "--status-file", str(status), "--log", str(log)]
        self.proc = subprocess.Popen(args, env=env, cwd=folder, start_new_session=True)
        deadline = time.monotonic() + 180
        while not status.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
                raise RuntimeError(f"serve from {tree} did not start; tritonserver's log ends:\n{tail}")
            time.sleep(0.2)
        self.direct = self._triton_port()

    def _triton_port(self) -> int:
        """tritonserver's private HTTP port, from its command line (a child of this serve)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid and argv[0].endswith(b"tritonserver"):
                return int(next(a for a in argv if a.startswith(b"--http-port=")).split(b"=")[1])
        raise RuntimeError("no tritonserver under serve")

    def cpu_s(self) -> float:
        """CPU seconds of the serve process itself (the front's threads; Triton is a child)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start(tree: Path, model: Path, folder: Path) -> Served:
    """A serve that started; one more try when the first did not (ports taken meanwhile by other
    work on this machine), its cause printed."""
    try:
        return Served(tree, model, folder)
    except RuntimeError as e:
        print(f"retrying once: {e}", file=sys.stderr)
        return Served(tree, model, folder)


def read_answer(sock: socket.socket) -> int:
    import http.client

    r = http.client.HTTPResponse(sock)
    r.begin()
    r.read()
    return r.status


def probes_during_big_body(port: int) -> dict:
    """Probe latency while one client sends (and the front decodes) the largest body allowed."""
    filler = b'{"inputs":[{"name":"input","shape":[16,3,32,32],"datatype":"FP32","data":['
    n = (BIG - len(filler) - 400) // 4
    body = filler + b"0.0," * n + b"0.0]}]}"
    head = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    done: dict[str, float] = {}

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            started = time.monotonic()
            s.sendall(head + body)
            done["status"] = read_answer(s)
            done["seconds"] = time.monotonic() - started
            done["at"] = time.monotonic()

    sender = threading.Thread(target=send)
    latencies = []
    with socket.create_connection(("127.0.0.1", port), timeout=120) as probe:
        sender.start()
        deadline = time.monotonic() + 120
        while sender.is_alive() and time.monotonic() < deadline and len(latencies) < 5000:
            t = time.monotonic()
            probe.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            read_answer(probe)
            latencies.append(time.monotonic() - t)
            time.sleep(0.02)
    sender.join(120)
    a = np.array(latencies) * 1e3
    return {
        "body_mib": round(len(body) / 2**20, 1),
        "big_request_status": done.get("status"),
        "big_request_s": round(done.get("seconds", float("nan")), 2),
        "probes": len(a),
        "probe_p50_ms": round(float(np.percentile(a, 50)), 2) if len(a) else None,
        "probe_max_ms": round(float(a.max()), 1) if len(a) else None,
        "probes_over_1s": int((a > 1000).sum()),
    }


def stalled_bodies(served: Served, count: int) -> dict:
    """RSS with ``count`` connections each stalled 1 MiB into a declared 64 MiB body."""
    port = served.ports.http
    before = served.rss_mib()
    socks, refused = [], 0
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
            s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG)
            with contextlib.suppress(OSError):  # a refused one may be closed already
                s.sendall(b"[" * 2**20)
        time.sleep(2)
        for s in socks:  # a refused one has its answer waiting
            s.setblocking(False)
            try:
                if s.recv(12).startswith(b"HTTP/1.1 503"):
                    refused += 1
            except (BlockingIOError, OSError):
                pass
        during = served.rss_mib()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
            t = time.monotonic()
            probe.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            status = read_answer(probe)
            probe_ms = (time.monotonic() - t) * 1e3
    finally:
        for s in socks:
            s.close()
    return {
        "stalled": count,
        "refused_503": refused,
        "rss_before_mib": round(before, 1),
        "rss_stalled_mib": round(during, 1),
        "probe_status": status,
        "probe_ms": round(probe_ms, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="a checkout of older code to compare with")
    ap.add_argument("--old-name", default="old relay", help="what the tables call --old's serve")
    ap.add_argument("--new-name", default="new front", help="what the tables call this tree's serve")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--stalled", type=int, default=100)
    ap.add_argument("--table-only", action="store_true", help="rewrite the markdown from the JSON")
    args = ap.parse_args()
    if args.table_only:
        saved = json.loads((HERE / "results" / "serve_front.json").read_text())
        args.seconds, args.rounds = saved["seconds"], saved["rounds"]
        args.old_name, args.new_name = saved.get("names", [args.old_name, args.new_name])
        rows = table(saved["results"], saved["summary"], saved["machine"], args)
        save("serve_front", saved, "\n".join(rows))
        return
    if args.old_name == args.new_name:
        ap.error("--old-name and --new-name must differ")
    trees = {args.old_name: args.old.resolve(), args.new_name: NEW}
    results: dict = {name: {"rounds": []} for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = export_digits(folder)
        body, header = request_body(model, folder)
        for _ in range(args.rounds):
            for name, tree in trees.items():
                served = start(tree, model, folder)
                try:
                    wrk(served.ports.http, "digits", body, header, 1, 2)  # warm up
                    cells: dict = {"load_1min": [os.getloadavg()[0]]}
                    for c in (1, 16):
                        before = served.cpu_s()
                        cells[str(c)] = wrk(served.ports.http, "digits", body, header, c, args.seconds)
                        used = served.cpu_s() - before  # robust to other work on the machine
                        cells[str(c)]["front_cpu_us_per_request"] = round(
                            used / cells[str(c)]["requests"] * 1e6, 1
                        )
                    cells["direct16"] = wrk(served.direct, "digits", body, header, 16, args.seconds)
                    cells["load_1min"].append(os.getloadavg()[0])
                    results[name]["rounds"].append(cells)
                finally:
                    served.stop()
        for name, tree in trees.items():
            served = start(tree, model, folder)
            try:
                results[name]["big_body"] = probes_during_big_body(served.ports.http)
                results[name]["stalled"] = stalled_bodies(served, args.stalled)
            finally:
                served.stop()
    for r in results.values():
        for key in ("1", "16", "direct16"):
            r[key] = round(float(np.mean([x[key]["images_per_s"] for x in r["rounds"]])), 1)
        for key in ("1", "16"):
            r[f"cpu_us_{key}"] = round(
                float(np.median([x[key]["front_cpu_us_per_request"] for x in r["rounds"]])), 1
            )
    old, new = results[args.old_name], results[args.new_name]
    summary = {
        "new_vs_old_c1": round(new["1"] / old["1"], 3),
        "new_vs_old_c16": round(new["16"] / old["16"], 3),
        "front_cpu_us_c16_new_minus_old": round(new["cpu_us_16"] - old["cpu_us_16"], 1),
        "new_c16_vs_direct_c16": round(new["16"] / new["direct16"], 3),
        "old_c16_vs_direct_c16": round(old["16"] / old["direct16"], 3),
    }
    m = machine()
    loads = [v for r in results.values() for x in r["rounds"] for v in x["load_1min"]]
    summary["load_1min"] = [round(min(loads), 1), round(max(loads), 1)]
    save(
        "serve_front",
        {
            "machine": m,
            "names": [args.old_name, args.new_name],
            "seconds": args.seconds,
            "rounds": args.rounds,
            "results": results,
            "summary": summary,
        },
        "\n".join(table(results, summary, m, args)),
    )


def table(results: dict, s: dict, m: dict, args: argparse.Namespace) -> list[str]:
    lines = [
        f"# serve's HTTP front: {args.new_name} vs {args.old_name}",
        "",
        f"{machine_line(m)}. Digits model "
        f"(FP32, max batch {MAX_BATCH}), wrk on the same cores, {args.seconds} s per cell, mean of "
        f"{args.rounds} alternating rounds, one-image binary-tensor requests. The machine's "
        "1-minute load average during the run"
        + (
            f": {s['load_1min'][0]}-{s['load_1min'][1]} on {m['cores']} cores (the run's own wrk, serve "
            "and tritonserver count in it; above about 3, other work ran beside)."
            if "load_1min" in s
            else "."
        ),
        "",
        "| front | c=1 img/s | c=16 img/s | direct c=16 img/s | c=16 / direct "
        "| front CPU us/request c=1, c=16 |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['1']:.0f} | {r['16']:.0f} | {r['direct16']:.0f} | {r['16'] / r['direct16']:.0%} "
            f"| {r['cpu_us_1']:.0f}, {r['cpu_us_16']:.0f} |"
        )
    lines += [
        "",
        f"New vs old: {s['new_vs_old_c1']:.0%} at c=1, {s['new_vs_old_c16']:.0%} at c=16 (goal >= 90%); "
        f"new at c=16 vs tritonserver direct: {s['new_c16_vs_direct_c16']:.0%} (goal >= 90%). The new front "
        f"takes {s['front_cpu_us_c16_new_minus_old']:+.0f} us of CPU per request at c=16. Each round's "
        "figures: results/serve_front.json. The front's CPU per request (the serve process's own CPU time "
        "over a wrk run, divided by its requests; median of rounds) is what the front takes from Triton "
        "on a shared box, and is less disturbed by other work than img/s.",
        "",
        "| front | largest body | its answer (s) | probes | probe p50 ms | probe max ms | probes > 1 s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        b = r["big_body"]
        lines.append(
            f"| {name} | {b['body_mib']} MiB JSON | {b['big_request_status']} ({b['big_request_s']}) | "
            f"{b['probes']} | {b['probe_p50_ms']} | {b['probe_max_ms']} | {b['probes_over_1s']} |"
        )
    lines += [
        "",
        "| front | stalled bodies (64 MiB declared, 1 MiB sent) | refused 503 | RSS before MiB "
        "| RSS stalled MiB | probe meanwhile |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        st = r["stalled"]
        lines.append(
            f"| {name} | {st['stalled']} | {st['refused_503']} | {st['rss_before_mib']} "
            f"| {st['rss_stalled_mib']} | {st['probe_status']} in {st['probe_ms']} ms |"
        )
    return lines


if __name__ == "__main__":
    main()
