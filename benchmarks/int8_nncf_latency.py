"""Our searched INT8 file against NNCF's, CPU latency paired call by call in one process per backend.

    python benchmarks/int8_nncf_latency.py [--fixtures A,B] [--calls 300] [--batches 1,32]

Why: ``int8_search.py`` times each file in ``bench`` processes of its own, taking turns. On a 2-core
box one process to the next moves by up to 1.8x for the same file (the ``rounds`` in
results/int8_search.json), more than any difference between two INT8 files of the digits model, so
its "never behind NNCF" latency line reads noise. Here, for each fixture and backend (ONNX Runtime;
OpenVINO when installed), one process opens both files and alternates them call by call (ours,
NNCF's, ours, ...) after a warm-up: drift and the process's own luck fall on both. The figure is
the median of the per-pair ratios ours / NNCF's, with a 95% bootstrap interval over the pairs;
ours counts as "equal or lower" when that median is at most ``SAME`` (1.05, the issue's own bar for
"within"), the interval shown beside it (the search's rule: point estimate, interval said).

Files as ``int8_search.py`` makes them: ours is ``quantize --target cpu --max-drop 0.25 --eval-dir
(899 digits) --equalize on`` through the library (``int8_search.ours``), NNCF's is
``quantize_with_accuracy_control`` on the same FP32 file (``_nncf_anchor``). Each process reports
its own CPU flags. Results: results/int8_nncf_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _nncf_anchor import anchor
from _timing import machine_line, paired_ratio, paired_times, save
from int8_search import BUDGET, digits_sets, ours

from resnest_deploy.metadata import machine
from resnest_deploy.precision.outliers import SPECS, from_spec

SAME = 1.05
WARMUP = 20


def paired(ours_path: Path, nncf_path: Path, backend: str, batch: int, calls: int) -> dict[str, Any]:
    t = paired_times({"ours": ours_path, "nncf": nncf_path}, backend, batch, calls, WARMUP)
    return {
        "ours_p50_ms": round(float(np.median(t["ours"])), 3),
        "nncf_p50_ms": round(float(np.median(t["nncf"])), 3),
        **paired_ratio(t["ours"], t["nncf"]),
        "calls": calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--calls", type=int, default=300, help="calls per file per backend")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    chosen = args.fixtures.split(",") if args.fixtures else [s.name for s in SPECS]
    specs = [s for s in SPECS if s.name in chosen]
    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    started, load = time.perf_counter(), [round(os.getloadavg()[0], 1)]
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        import onnx

        from resnest_deploy.export import export_onnx
        from resnest_deploy.models import load_model

        folder = Path(tmp)
        model, info = load_model("resnest14d_digits", "pretrained")
        digits = export_onnx(model, folder / "digits.onnx", weights=info).path
        sets = digits_sets(folder)
        for spec in specs:
            print(f"fixture {spec.name}", flush=True)
            src = folder / f"{spec.name}.onnx"
            onnx.save(from_spec(onnx.load(digits), spec)[0], src)
            mine = folder / f"{spec.name}.ours.onnx"
            ours(src, mine, "cpu", sets, max_drop=BUDGET, equalize=True, say=lambda _m: None)
            theirs = folder / f"{spec.name}.nncf.onnx"
            anchor(src, theirs, sets.calib, sets.x, sets.labels)
            rows[spec.name] = {
                f"{b} b{n}": paired(mine, theirs, b, n, args.calls) for b in backends for n in batches
            }
    load.append(round(os.getloadavg()[0], 1))
    behind = [f"{n} {b}" for n, r in rows.items() for b, v in r.items() if v["ratio"] > SAME]
    results = {
        "machine": machine(),
        "batches": batches,
        "calls": args.calls,
        "same_within": SAME,
        "load_average": load,
        "fixtures": rows,
        "behind": behind,
        "seconds": round(time.perf_counter() - started, 1),
    }
    m = results["machine"]
    lines = [
        "# Our searched, equalized INT8 file against NNCF's: CPU latency paired in one process",
        "",
        f"{machine_line(m)}. Batches {args.batches}; per fixture, backend and batch one process "
        f"alternates the two files call by call, {args.calls} calls each after {WARMUP} warm-up pairs; "
        f"1-minute load average {load[0]} at the start, {load[1]} at the end.",
        "",
        "| fixture | backend, batch | ours p50 ms | NNCF p50 ms | ours / NNCF (median of pairs) | 95% CI |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in rows.items():
        for b, v in r.items():
            lines.append(
                f"| {n} | {b} | {v['ours_p50_ms']} | {v['nncf_p50_ms']} | {v['ratio']} | "
                f"[{v['ci95'][0]}, {v['ci95'][1]}] |"
            )
    lines += [
        "",
        f"Ours equal or lower (median ratio <= {SAME}): "
        + ("every fixture and backend." if not behind else f"not on {', '.join(behind)}.")
        + f" Wall time {results['seconds']} s.",
    ]
    save("int8_nncf_latency", results, "\n".join(lines))


if __name__ == "__main__":
    main()
