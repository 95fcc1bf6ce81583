"""INT8 search on a model where INT8 hurts, and on one where it does not, both targets, in one run.

    python benchmarks/int8_search.py

The fixture (`precision.fixtures.outlier_digits`): the trained digits model with one stem channel
scaled into an activation outlier and the next convolution scaled back, the same function in FP32.
Plain INT8 quantizes every convolution with max calibration. The search (`--max-drop 0.25`) ranks
the units by what leaving each alone in FP32 recovers and keeps the fewest in FP32 to meet the
budget. CPU latency of the plain and the searched CPU file, each backend timed by `resnest-deploy
bench` in its own process. Goals: plain INT8 misses the 0.25-point budget and the search meets it;
the searched CPU file within 15% of plain INT8's latency; the digits model keeps nothing in FP32 and
its search takes under a minute; the whole search on the fixture under 10 minutes.
Results: results/int8_search.{json,md}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import save

from resnest_deploy.compare import Tolerance
from resnest_deploy.data import Transform
from resnest_deploy.export import export_onnx
from resnest_deploy.metadata import machine
from resnest_deploy.models import get_spec, load_model
from resnest_deploy.precision import ConversionReport, calibration, convert
from resnest_deploy.precision.fixtures import outlier_digits

BUDGET = 0.25
ANY = Tolerance(rel_max_abs=float("inf"), cosine=-1.0, top1=0.0)


def latency(path: Path, provider: str) -> float:
    """p50 at batch 1, `resnest-deploy bench` in its own process."""
    args = [sys.executable, "-m", "resnest_deploy.cli", "bench", str(path), "-b", "1", "-n", "200"]
    args += ["--provider", provider, "--json"]
    rows = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    return float(rows[0]["p50_ms"])


def run(name: str, src: Path, folder: Path) -> dict:
    calib = calibration.from_digits(Transform.from_pretrained(get_spec("resnest14d_digits").pretrained))
    out: dict = {}

    def made(kind: str, target: str, **search: float) -> ConversionReport:
        return convert(
            src,
            folder / f"{name}.{kind}.{target}.onnx",
            precision="int8",
            target=target,
            calib=calib,
            keep_fp32_nodes=(),
            tolerance=ANY,
            use_cache=False,
            **search,
        )

    for target in ("cpu", "tensorrt"):
        plain = made("plain", target)
        started = time.perf_counter()
        searched = made("searched", target, max_drop=BUDGET)
        seconds = time.perf_counter() - started
        found = searched.metadata["conversion"]["search"]
        row = {
            "fp32": round(found["fp32"], 2),
            "plain_int8": round(found["plain_int8"], 2),
            "searched": round(found["chosen"], 2),
            "kept_fp32": found["kept_fp32"],
            "units": len(found["sensitivity"]),
            "most_sensitive": found["sensitivity"][0]["unit"],
            "search_seconds": round(seconds, 1),
        }
        if target == "cpu":
            for provider in ("cpu", "openvino"):
                row[f"{provider}_plain_ms"] = latency(plain.path, provider)
                row[f"{provider}_searched_ms"] = latency(searched.path, provider)
        out[target] = row
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, info = load_model("resnest14d_digits", "pretrained")
        digits = export_onnx(model, folder / "digits.onnx", weights=info).path
        results = {
            "outlier digits (fixture)": run("outlier", outlier_digits(folder / "outlier.onnx"), folder),
            "digits": run("digits", digits, folder),
        }
    m = machine()
    lines = [
        f"# INT8 search, budget {BUDGET} points of top-1 (held-out digits, every convolution quantized)",
        "",
        f"{m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}, {m['date'][:10]}.",
        "",
        "| model | target | FP32 | plain INT8 | searched | kept in FP32 | most sensitive | search s "
        "| ORT ms plain / searched | OpenVINO ms plain / searched |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_target in results.items():
        for target, r in by_target.items():
            ort = f"{r['cpu_plain_ms']:.3f} / {r['cpu_searched_ms']:.3f}" if "cpu_plain_ms" in r else "-"
            ov = (
                f"{r['openvino_plain_ms']:.3f} / {r['openvino_searched_ms']:.3f}"
                if "openvino_plain_ms" in r
                else "-"
            )
            lines.append(
                f"| {name} | {target} | {r['fp32']:.2f} | {r['plain_int8']:.2f} | {r['searched']:.2f} "
                f"| {', '.join(r['kept_fp32']) or 'none'} ({len(r['kept_fp32'])}/{r['units']}) "
                f"| {r['most_sensitive']} | {r['search_seconds']} | {ort} | {ov} |"
            )
    save("int8_search", {"machine": m, "budget_points": BUDGET, "results": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
