"""INT8 search on a model where INT8 hurts, and on one where it does not, both targets, in one run.

    python benchmarks/int8_search.py

The fixture (`precision.fixtures.outlier_digits`): the trained digits model with one stem channel
scaled into an activation outlier and the next convolution scaled back, the same function in FP32.
Plain INT8 quantizes every convolution with max calibration. The search (`--max-drop 0.25`) ranks
the units by what leaving each alone in FP32 recovers and keeps the fewest in FP32 to meet the
budget. CPU latency of the plain and the searched CPU file, each backend timed by `resnest-deploy
bench` in its own process. Goals: plain INT8 misses the 0.25-point budget and the search meets it;
the searched CPU file within 15% of plain INT8's latency; the digits model keeps nothing in FP32 and
its search takes under a minute; the whole search on the fixture under 10 minutes. A 0.3 ms model's
latency is noise-bound on a shared 2-core machine, so each file is timed at batch 1 and 32, in five
`bench` processes per file taking turns, and the median reported.
Results: results/int8_search.{json,md}.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _timing import interleaved_p50, save

from resnest_deploy.data import Transform
from resnest_deploy.export import export_onnx
from resnest_deploy.metadata import machine
from resnest_deploy.models import get_spec, load_model
from resnest_deploy.precision import ConversionReport, calibration
from resnest_deploy.precision.fixtures import outlier_digits, quantize_every_conv

BUDGET = 0.25
ROUNDS = 5  # interleaved bench processes per file and setting; the median is reported


def run(name: str, src: Path, folder: Path) -> dict:
    calib = calibration.from_digits(Transform.from_pretrained(get_spec("resnest14d_digits").pretrained))
    out: dict = {}

    def made(kind: str, target: str, **search: float) -> ConversionReport:
        return quantize_every_conv(src, folder / f"{name}.{kind}.{target}.onnx", target, calib, **search)

    for target in ("cpu", "tensorrt"):
        plain = made("plain", target)
        started = time.perf_counter()
        searched = made("searched", target, max_drop=BUDGET)
        seconds = time.perf_counter() - started
        found = searched.search
        assert found is not None
        row = {
            "fp32": round(found.fp32_metric, 2),
            "plain_int8": round(found.int8_metric, 2),
            "searched": round(found.metric, 2),
            "kept_fp32": found.kept_fp32,
            "units": len(found.ranking),
            "most_sensitive": found.ranking[0].unit,
            "search_seconds": round(seconds, 1),
        }
        row["layers_fp32"] = found.layers_fp32
        if target == "cpu":
            files = {"plain": plain.path, "searched": searched.path}
            for provider in ("cpu", "openvino"):
                for batch in (1, 32):
                    timed = interleaved_p50(files, ROUNDS, provider=provider, batch=batch)
                    for kind, t in timed.items():
                        row[f"{provider}_b{batch}_{kind}_ms"] = t["p50_ms"]
                        row[f"{provider}_b{batch}_{kind}_rounds"] = t["rounds"]
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
        "| model | target | FP32 | plain INT8 | searched | kept in FP32 | FP32 layers plain / searched "
        "| most sensitive | search s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_target in results.items():
        for target, r in by_target.items():
            layers = r["layers_fp32"]
            lines.append(
                f"| {name} | {target} | {r['fp32']:.2f} | {r['plain_int8']:.2f} | {r['searched']:.2f} "
                f"| {', '.join(r['kept_fp32']) or 'none'} ({len(r['kept_fp32'])}/{r['units']} units) "
                f"| {layers['plain']} / {layers['chosen']} of {layers['total']} "
                f"| {r['most_sensitive']} | {r['search_seconds']} |"
            )
    lines += [
        "",
        f"CPU latency of the CPU-target files, p50 ms, median of {ROUNDS} `bench` processes per file "
        "taking turns (plain, searched, plain, ...):",
        "",
        "| model | backend | batch | plain INT8 | searched | searched / plain |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_target in results.items():
        r = by_target["cpu"]
        for provider, label in (("cpu", "onnxruntime"), ("openvino", "openvino")):
            for batch in (1, 32):
                plain, searched = (r[f"{provider}_b{batch}_{k}_ms"] for k in ("plain", "searched"))
                lines.append(
                    f"| {name} | {label} | {batch} | {plain:.3f} | {searched:.3f} | {searched / plain:.2f} |"
                )
    save("int8_search", {"machine": m, "budget_points": BUDGET, "results": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
