"""Issue 34's goals: INT8 judged on a labelled evaluation set of real size, on outlier fixtures,
with and without cross-layer equalization, side by side with NNCF's accuracy-aware quantization.

    python benchmarks/int8_search.py            # every fixture, both targets (about an hour, quiet box)
    python benchmarks/int8_search.py --quick    # 2 fixtures, CPU target, 3 rounds (a few minutes)
    python benchmarks/int8_search.py --quick --fixtures a,b,c --name int8_search.cpu6   # those, CPU

Fixtures: ``precision.outliers.SPECS``, generated from the trained digits model with fixed seeds
(activation outliers 32x-256x in the stem, the blocks, the split attention, the residual stream; the
same FP32 function). Evaluation set: the 899 held-out (test) digits written as a labelled folder
(class folders 0-9), read back as ``eval`` reads one. Calibration: the training digits.

Per fixture and target:

* plain INT8 (the CLI's defaults: max calibration, attention gate and classifier in FP32), no
  equalization: its drop on the evaluation set, measured, not judged;
* ``quantize --max-drop 0.25 --eval-dir <899 digits>`` with ``--equalize on`` and ``off``: whether it
  wrote a file or refused its own result, the file's drop with its 95% interval
  (``stats.paired_drop``: Tango's score interval on the paired per-image outcomes), the units the
  search kept in FP32;
* CPU target: the anchor, NNCF 3.4's ``quantize_with_accuracy_control`` (``_nncf_anchor``) on the
  same FP32 file with ``max_drop=0.0025`` (a fraction), ``RestoreMode.ACTIVATIONS_AND_WEIGHTS``,
  validated on the same 899 labelled digits: its drop (measured here as ours are), what it reverted,
  its compute layers left in float, whether our INT8 parity gate (``compare.TOLERANCES``) passes on
  its file; and CPU latency (ONNX Runtime; OpenVINO when installed) of plain, equalized, searched and
  NNCF's file, median of ``DIGITS_ROUNDS`` ``bench`` processes taking turns
  (``_timing.interleaved_p50``; resnest50's files: ``ROUNDS``, as the issue's latency goals say).

Then resnest50 (random weights, 224x224) with outliers planted by the same ``outlier_fixture`` at
its stem and first split-attention inputs (those sites are block-local, so the digits model's node
names hold in resnest50; the residual-stream sites are not), probed on seeded random inputs: plain,
equalized and "searched" CPU INT8 latency. Random weights cannot be searched (near-uniform logits),
so the searched file starts where a searched conversion starts (every unit INT8 but the radix
softmax) and keeps in FP32 the nodes the digits searches kept at resnest50's sites (``R50_SITES``;
``r50_keeps``: fixtures planted at one of them, nodes that make or read a planted site's channels;
CPU target, equalization off; the block-local names hold in resnest50), through
``search.layers_without_qdq`` as the search does. Nodes kept for outliers resnest50 does not have
(``stem.1``, layer3, layer4, the residual stream) are left out: they would time another model's search.
The equalized FP32 files of the digits model and of resnest50 are checked against their sources
(logits within 1e-5 relative). Each goal line of the issue is judged yes / no / pending at the end.

``ours()`` is the one call to our library (``convert`` with the evaluation set in the calibration
data and ``equalize`` a field of the config). Results: results/int8_search.{json,md}
(``--quick``: results/int8_search.quick.{json,md}).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _nncf_anchor import MAX_DROP as NNCF_MAX_DROP
from _nncf_anchor import anchor
from _timing import interleaved_p50, machine_line, save
from PIL import Image

from resnest_deploy import data
from resnest_deploy.compare import TOLERANCES, UNCHECKED, compare
from resnest_deploy.errors import ResnestDeployError
from resnest_deploy.metadata import machine
from resnest_deploy.models import get_spec
from resnest_deploy.models.config import RESNEST_PARTS
from resnest_deploy.precision import ConversionConfig, ConversionReport, RunOptions, convert
from resnest_deploy.precision.calibration import DEFAULT_COUNT, CalibrationData, EvaluationSet
from resnest_deploy.precision.equalize import relative_change, write_equalized
from resnest_deploy.precision.outliers import DIGITS_SITES, SPECS, from_spec, outlier_fixture
from resnest_deploy.precision.search import fp32_layers, layers_without_qdq
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
from resnest_deploy.runners.options import RunnerOptions
from resnest_deploy.stats import images_needed, paired_drop, resolves

BUDGET = 0.25  # points of top-1
ROUNDS = 5  # bench processes per file taking turns; the median is reported
DIGITS_ROUNDS = 3  # the same for the fixtures' files: 5 files x 2 backends x 2 batches each
QUICK_FIXTURES = ("stem-64x", "residual1-32x")  # a pair, and a residual stream (several producers)
SMALL_SET = 64  # the held-out count of today's calibration split: cannot resolve 0.25 points
#: resnest50's planted sites: block-local ones, whose node names the digits model shares
R50_SITES = ("stem.0", "layer1.conv1", "layer2.conv1")
R50_SCALE = 64.0
EQUAL_FP32_BAR = 1e-5
#: "equal CPU latency" against NNCF: within 5% (the issue's own bar for "within"); a digits file
#: takes 0.3 ms at batch 1, where one bench process to the next moves by 10-40% on this machine
SAME_LATENCY = 1.05


# --- the evaluation set and calibration -----------------------------------------------------------


@dataclass
class Sets:
    """Calibration (training digits) and the labelled evaluation folder, decoded once."""

    calib: np.ndarray
    eval_dir: Path
    x: np.ndarray
    labels: np.ndarray

    def calibration(self, count: int | None = None) -> CalibrationData:
        """What ``quantize --calib-dir train --eval-dir DIR`` hands ``convert``: every training digit
        to calibrate on (an evaluation set judges, so nothing is held out of calibration) and the
        labelled evaluation set (the first ``count`` images of it for the too-small-set check)."""
        x, labels = (self.x, self.labels) if count is None else (self.x[:count], self.labels[:count])
        source = {"kind": "images", "path": str(self.eval_dir), "count": len(x), "labelled": True}
        evaluation = EvaluationSet(x, labels, source)
        calib = CalibrationData(
            self.calib, self.calib[:0], {"kind": "digits", "used": len(self.calib), "held_out": 0}
        )
        return calib.with_evaluation(evaluation)


def digits_sets(folder: Path) -> Sets:
    """The 899 test digits as ``folder/eval/<class>/NNNN.png``, read back through ``eval``'s reader;
    calibration: ``DEFAULT_COUNT`` training digits, drawn as ``calibration.from_digits`` draws them."""
    transform = data.Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)
    images, labels = data.digits("test")
    root = folder / "eval"
    for i, (im, label) in enumerate(zip(images, labels, strict=True)):
        (root / str(int(label))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / str(int(label)) / f"{i:04d}.png")
    items = data.labelled_folder(root, num_classes=10)
    loaded = data.load_images([p for p, _ in items], transform)
    if loaded.skipped or len(loaded.array) != len(images):
        raise SystemExit(
            f"error: the evaluation folder read back {len(loaded.array)} of {len(images)} digits"
        )
    by_path = dict(items)
    train, _ = data.digits("train")
    idx = np.sort(np.random.default_rng(0).permutation(len(train))[:DEFAULT_COUNT])
    calib = data.digits_batch(train[idx], transform)
    return Sets(calib, root, loaded.array, np.array([by_path[p] for p in loaded.paths]))


# --- the one call to our library (fix here after A's and B's branches merge) ------------------------


def ours(
    src: Path,
    out: Path,
    target: str,
    sets: Sets,
    *,
    max_drop: float | None,
    equalize: bool,
    say: Callable[[str], None],
    eval_count: int | None = None,
) -> ConversionReport:
    """``quantize --target T [--max-drop B] --eval-dir DIR --equalize on|off`` through the library:
    the evaluation set in the calibration data, equalization a field of the config. Without a budget
    the file is measured, not judged."""
    tolerance = None if max_drop is not None else UNCHECKED
    config = ConversionConfig(
        "int8", target, max_drop=max_drop, tolerance=tolerance, equalize="on" if equalize else "off"
    )
    return convert(src, out, config, sets.calibration(eval_count), RunOptions(say, use_cache=False))


# --- measuring a written file on the evaluation set ----------------------------------------------


def logits(path: Path, x: np.ndarray, target: str = "cpu") -> np.ndarray:
    """As the target computes the file: CPU int8 kernels, or TensorRT's Q/DQ as float ops."""
    options = RunnerOptions(fake_quant=target == "tensorrt")
    with OnnxRuntimeRunner(path, options) as runner:
        return runner.infer_batched(x, 64)


def judged(path: Path, target: str, sets: Sets, ref: np.ndarray) -> dict[str, Any]:
    """Top-1 on the evaluation set, the paired drop against FP32 with its interval, our parity gate."""
    out = logits(path, sets.x, target)
    drop = paired_drop(ref.argmax(1) == sets.labels, out.argmax(1) == sets.labels)
    parity = compare(ref, out)
    return {
        "top1": round(100 * float(np.mean(out.argmax(1) == sets.labels)), 2),
        "drop": round(drop.points, 2),
        "ci95": [round(drop.low, 2), round(drop.high, 2)],
        "lost": drop.lost,
        "gained": drop.gained,
        "cosine": round(parity.cosine, 6),
        "parity_gate": not TOLERANCES["int8"].violations(parity),
        "fp32_layers": list(fp32_layers(_load(path))),
    }


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(path)


def _attempt(run: Callable[[], ConversionReport]) -> tuple[ConversionReport | None, str | None, float]:
    started = time.perf_counter()
    try:
        report = run()
    except ResnestDeployError as e:
        return None, str(e).splitlines()[0], time.perf_counter() - started
    return report, None, time.perf_counter() - started


# --- one fixture ---------------------------------------------------------------------------------


def fixture(
    name: str, src: Path, folder: Path, sets: Sets, targets: tuple[str, ...], timing: dict[str, Any]
) -> dict[str, Any]:
    ref = logits(src, sets.x)
    fp32_top1 = round(100 * float(np.mean(ref.argmax(1) == sets.labels)), 2)
    row: dict[str, Any] = {"fp32_top1": fp32_top1}
    lines: list[str] = []

    def say(message: str) -> None:
        lines.append(message)

    for target in targets:
        t: dict[str, Any] = {}
        for kind, max_drop, eq in (
            ("plain", None, False),
            ("equalized", None, True),
            ("searched", BUDGET, False),
            ("searched_equalized", BUDGET, True),
        ):
            out = folder / f"{name}.{kind}.{target}.onnx"
            print(f"  {name} {target} {kind}", flush=True)
            report, refused, seconds = _attempt(
                lambda out=out, target=target, max_drop=max_drop, eq=eq: ours(
                    src, out, target, sets, max_drop=max_drop, equalize=eq, say=say
                )
            )
            entry: dict[str, Any] = {"seconds": round(seconds, 1), "refused": refused}
            if report is not None:
                entry |= judged(report.path, target, sets, ref)
                entry["path"] = str(report.path)
                if report.search is not None:
                    entry["kept_fp32"] = report.search.kept_fp32
                    entry["kept_fp32_layers"] = report.search.kept_fp32_layers
                    entry["search_metric"] = round(report.search.metric, 2)
            t[kind] = entry
        if target == "cpu":
            print(f"  {name} cpu nncf", flush=True)
            nncf_out = folder / f"{name}.nncf.cpu.onnx"
            found = anchor(src, nncf_out, sets.calib, sets.x, sets.labels)
            t["nncf"] = judged(nncf_out, "cpu", sets, ref) | {
                "seconds": round(found.seconds, 1),
                "reverted": found.reverted,
                "quantized_ops": found.quantized_ops,
                "nncf_fp32_metric": found.fp32_metric,
                "nncf_plain_drop": None
                if found.fp32_metric is None or found.plain_metric is None
                else round(100 * (found.fp32_metric - found.plain_metric), 2),
                "path": str(nncf_out),
            }
            t["latency"] = latency(
                {
                    k: Path(t[k]["path"])
                    for k in ("plain", "equalized", "searched", "searched_equalized", "nncf")
                    if t[k].get("path")
                },
                timing,
            )
        row[target] = t
    return row


def latency(files: dict[str, Path], timing: dict[str, Any]) -> dict[str, Any]:
    """p50 ms per backend and batch, each file in ``bench`` processes of its own, taking turns."""
    out: dict[str, Any] = {}
    for provider in timing["providers"]:
        for batch in timing["batches"]:
            iterations = max(100, timing["iterations"] // batch)  # about as long per batch size
            timed = interleaved_p50(
                files, timing["rounds"], provider=provider, batch=batch, iterations=iterations
            )
            out[f"{provider}_b{batch}"] = {
                k: {"p50_ms": round(float(v["p50_ms"]), 3), "rounds": v["rounds"]} for k, v in timed.items()
            }
    return out


# --- resnest50 with planted outliers -------------------------------------------------------------


def resnest50(folder: Path, keep_layers: list[str], timing: dict[str, Any]) -> dict[str, Any]:
    """Plain, equalized and searched-like CPU INT8 of random-weight resnest50 with planted outliers
    (``resnest50_files``), timed."""
    row, files = resnest50_files(folder, keep_layers)
    r50_timing = {"batches": (1,), "iterations": timing["r50_iterations"], "rounds": timing["r50_rounds"]}
    row["latency"] = latency(files, timing | r50_timing)
    return row


def r50_keeps(specs: list[Any], fixtures: dict[str, Any]) -> list[str]:
    """What the digits searches (CPU, equalization off) kept at resnest50's planted sites: of the
    nodes kept on fixtures planted at one of them, those that make or read a planted site's channels
    (``DIGITS_SITES``: its producer and readers; the names hold in resnest50). A node kept for a site
    resnest50 does not have (the stem's ``conv1.6``, read after ``stem.1``) is not kept."""
    sites = [DIGITS_SITES[name] for name in R50_SITES]
    near = {n for t in sites for n in (t.producer, *t.also, *t.consumers)}
    return sorted(
        {
            n
            for s in specs
            if set(s.sites) & set(R50_SITES)
            for n in fixtures[s.name]["cpu"]["searched"].get("kept_fp32_layers") or []
            if n in near
        }
    )


def resnest50_files(folder: Path, keep_layers: list[str]) -> tuple[dict[str, Any], dict[str, Path]]:
    """Plain, equalized and searched-like CPU INT8 files of random-weight resnest50 with planted
    outliers; the equalized FP32 files of it and of its clean source, checked against their sources."""
    import onnx

    from resnest_deploy import metadata
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model("resnest50", "random")
    clean = export_onnx(model, folder / "r50.onnx", weights=info).path
    probe = data.random_inputs(8, (224, 224), seed=3)
    planted, where = outlier_fixture(
        onnx.load(clean), 0, R50_SITES, R50_SCALE, probe=probe, known=DIGITS_SITES
    )
    src = folder / "r50.outliers.onnx"
    onnx.save(planted, src)
    calib = CalibrationData(
        data.random_inputs(32, (224, 224), seed=1), data.random_inputs(8, (224, 224), seed=2)
    )
    row: dict[str, Any] = {"planted": str(where)}
    equal = {}
    for name, path in (("clean", clean), ("outliers", src)):
        eq_path = folder / f"r50.{name}.equalized.onnx"
        write_equalized(path, eq_path)
        equal[name] = float(relative_change(onnx.load(path), onnx.load(eq_path)))
    row["equalized_fp32_relative_change"] = equal
    files = {}
    searched_start = RESNEST_PARTS.searched_keep_fp32_nodes  # where a searched conversion starts
    for kind, source, keep in (
        ("plain", src, None),
        ("equalized", folder / "r50.outliers.equalized.onnx", None),
        ("search_start", src, searched_start),
    ):
        out = folder / f"r50.{kind}.int8-cpu.onnx"
        config = ConversionConfig("int8", "cpu", tolerance=UNCHECKED, keep_fp32_nodes=keep)
        convert(source, out, config, calib, RunOptions(use_cache=False))
        files[kind] = out
    start = onnx.load(files.pop("search_start"))
    present = {n.name for n in start.graph.node}
    kept = [n for n in keep_layers if n in present]
    searched = layers_without_qdq(start, kept, onnx.load(src))
    metadata.embed(searched, metadata.from_onnx(start) or {})
    files["searched"] = folder / "r50.searched.int8-cpu.onnx"
    onnx.save(searched, files["searched"])
    row["searched_keeps"] = kept
    row["fp32_layers"] = {k: list(fp32_layers(onnx.load(p))) for k, p in files.items()}
    return row, files


def digits_equalized(digits: Path, folder: Path) -> float:
    import onnx

    out = folder / "digits.equalized.onnx"
    write_equalized(digits, out)
    return float(relative_change(onnx.load(digits), onnx.load(out)))


# --- the 64-image line ---------------------------------------------------------------------------


def rerun(src: Path, folder: Path, sets: Sets) -> dict[str, Any]:
    """The same searched conversion twice with the cache on (a cache folder of its own): the wall
    time of each, and the part spent on the FP32 references of the 899 digits (computed, then read
    back: near zero)."""
    runs = []
    before = os.environ.get("RESNEST_DEPLOY_CACHE")
    os.environ["RESNEST_DEPLOY_CACHE"] = str(folder / "rerun-cache")
    try:
        for i in range(2):
            config = ConversionConfig("int8", "cpu", max_drop=BUDGET)
            started = time.perf_counter()
            report = convert(
                src, folder / f"rerun{i}.int8-cpu.onnx", config, sets.calibration(), RunOptions()
            )
            wall = time.perf_counter() - started
            refs = report.evaluation.references if report.evaluation is not None else {}
            runs.append({"seconds": round(wall, 2), "references": refs})
    finally:
        if before is None:
            os.environ.pop("RESNEST_DEPLOY_CACHE", None)
        else:
            os.environ["RESNEST_DEPLOY_CACHE"] = before
    return {"fixture": src.stem, "runs": runs}


def small_set_line(src: Path, folder: Path, sets: Sets) -> dict[str, Any]:
    """``--max-drop 0.25`` judged on 64 labelled images: what it prints about resolving the budget.
    Issue 34 asks for one line before any work; ``stats.resolves`` says the set cannot."""
    lines: list[str] = []
    _, refused, seconds = _attempt(
        lambda: ours(
            src,
            folder / "small.int8-cpu.onnx",
            "cpu",
            sets,
            max_drop=BUDGET,
            equalize=False,
            say=lines.append,
            eval_count=SMALL_SET,
        )
    )
    said = next((line for line in lines if "resolv" in line.lower()), None)
    return {
        "images": SMALL_SET,
        "resolves": resolves(SMALL_SET, BUDGET),
        "images_needed": images_needed(BUDGET),
        "printed": said,
        "refused": refused,
        "seconds": round(seconds, 1),
    }


# --- the report ----------------------------------------------------------------------------------


def _ms(lat: dict[str, Any], key: str, kind: str) -> float | None:
    v = lat.get(key, {}).get(kind)
    return None if v is None else float(v["p50_ms"])


def goals(
    results: dict[str, Any],
    targets: tuple[str, ...],
    r50: dict[str, Any],
    small: dict[str, Any],
    equal_digits: float,
    providers: tuple[str, ...],
    batches: tuple[int, ...] = (1,),
) -> list[tuple[str, str, str]]:
    """The issue's goal lines, each judged yes / no / pending with the figures that decide it."""
    fx = results["fixtures"]
    rows: list[tuple[str, str, str]] = []
    runs = [
        (n, t, k, r[t][k]) for n, r in fx.items() for t in targets for k in ("searched", "searched_equalized")
    ]
    refusals = [f"{n} {t} {k}" for n, t, k, e in runs if e["refused"]]
    over = [f"{n} {t} {k} ({e['drop']})" for n, t, k, e in runs if not e["refused"] and e["drop"] > BUDGET]
    rows.append(
        (
            "no search run refuses its own result",
            "yes" if not refusals else "no",
            ", ".join(refusals) or f"{len(runs)} runs wrote a file",
        )
    )
    rows.append(
        (
            f"every written file within {BUDGET} points on the evaluation set",
            "yes" if not over else "no",
            ", ".join(over) or "all within",
        )
    )
    for t in targets:
        eq = [r[t]["searched_equalized"] for r in fx.values()]
        none = sum(1 for e in eq if not e["refused"] and not e.get("kept_fp32"))
        need = math.ceil(5 / 6 * len(eq))
        rows.append(
            (
                f"{t}: with equalization, at least 5 of 6 keep no unit in FP32",
                "yes" if none >= need else "no",
                f"{none} of {len(eq)} (need {need})",
            )
        )
        hard = sum(1 for r in fx.values() if r[t]["plain"].get("drop", 0) >= 1.0)
        rows.append(
            (
                f"{t}: plain INT8 loses >= 1 point on most fixtures",
                "yes" if hard > len(fx) / 2 else "no",
                f"{hard} of {len(fx)}",
            )
        )
    if "cpu" in targets:
        batch = max(batches)  # where compute, not the runtime's per-call overhead, sets the time
        behind = []
        for n, r in fx.items():
            c, nn = r["cpu"], r["cpu"]["nncf"]
            if nn["drop"] > BUDGET:
                continue
            e = c["searched_equalized"]
            if e["refused"] or e["drop"] > BUDGET:
                behind.append(f"{n}: ours not within budget")
                continue
            if e["fp32_layers"][0] > nn["fp32_layers"][0]:
                behind.append(
                    f"{n}: {e['fp32_layers'][0]} float compute layers vs NNCF's {nn['fp32_layers'][0]}"
                )
            for p in providers:
                a, b = (
                    _ms(c["latency"], f"{p}_b{batch}", "searched_equalized"),
                    _ms(c["latency"], f"{p}_b{batch}", "nncf"),
                )
                if a is not None and b is not None and a > b * SAME_LATENCY:
                    behind.append(f"{n}: {p} b{batch} {a:.3f} vs NNCF {b:.3f} ms")
        rows.append(
            (
                f"never behind NNCF (budget, float compute layers, CPU latency at batch {batch} within "
                f"{round((SAME_LATENCY - 1) * 100)}%; ours equalized)",
                "yes" if not behind else "no",
                "; ".join(behind) or "ahead or equal on every fixture",
            )
        )
    for kind, bar in (("equalized", 1.05), ("searched", 1.10)):
        ratios = {
            p: _ms(r50["latency"], f"{p}_b1", kind) / _ms(r50["latency"], f"{p}_b1", "plain")  # type: ignore[operator]
            for p in providers
        }
        rows.append(
            (
                f"resnest50 {kind} CPU INT8 within {round((bar - 1) * 100)}% of plain",
                "yes" if all(v <= bar for v in ratios.values()) else "no",
                ", ".join(f"{p} {v:.3f}x" for p, v in ratios.items()),
            )
        )
    rows.append(
        (
            "64 held-out images: prints that the budget cannot be resolved",
            "yes" if small["printed"] else "pending (needs issue 34's --eval-dir)",
            small["printed"] or f"no such line; {small['images_needed']} images needed",
        )
    )
    worst = max(equal_digits, *r50["equalized_fp32_relative_change"].values())
    rows.append(
        (
            "equalized FP32 files (digits, resnest50) within 1e-5 relative",
            "yes" if worst <= EQUAL_FP32_BAR else "no",
            f"digits {equal_digits:.2g}, resnest50 {r50['equalized_fp32_relative_change']['clean']:.2g} "
            f"(with outliers {r50['equalized_fp32_relative_change']['outliers']:.2g})",
        )
    )
    first, second = results["rerun"]["runs"]
    share = [float(r["references"].get("seconds", 0.0)) / max(r["seconds"], 1e-9) for r in (first, second)]
    rows.append(
        (
            "search wall time on the 899 digits; FP32 references' share near zero on a rerun",
            "yes" if second["references"].get("from") == "cache" and share[1] < 0.01 else "no",
            f"{results['rerun']['fixture']}, cpu: {first['seconds']} s (references "
            f"{first['references'].get('from')}, {100 * share[0]:.1f}%), rerun {second['seconds']} s "
            f"(references {second['references'].get('from')}, {100 * share[1]:.2f}%)",
        )
    )
    return rows


def table(
    results: dict[str, Any],
    targets: tuple[str, ...],
    providers: tuple[str, ...],
    timing: dict[str, Any],
    quick: bool,
) -> str:
    m = results["machine"]
    fx = results["fixtures"]
    lines = [
        f"# INT8 on outlier fixtures, budget {BUDGET} points of top-1 on the 899 held-out digits"
        + (" (--quick)" if quick else "")
        + f" ({results['fixtures_run']} fixtures)",
        "",
        f"{machine_line(m)}.",
    ]
    load = results.get("load_average")
    if load is not None:
        lines += [
            "",
            f"The machine's 1-minute load average: {load[0]} at the start, {load[1]} at the end, on "
            f"{m['cores']} cores (above about {m['cores']}, other work ran beside and the latencies "
            "are noise, not figures).",
        ]
    lines += [
        "",
        "Drops in points against FP32 (95% CI, Tango score); kept: units the search kept in FP32; float: "
        "compute layers (Conv, Gemm) left in float / all.",
        "",
        "| fixture | target | FP32 | plain drop | searched | kept | float | searched, equalized | kept "
        "| float | NNCF drop | NNCF reverted | NNCF float | NNCF parity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def drop(e: dict[str, Any]) -> str:
        return (
            f"refused: {e['refused']}"
            if e.get("refused")
            else f"{e['drop']} [{e['ci95'][0]}, {e['ci95'][1]}]"
        )

    for n, r in fx.items():
        for t in targets:
            c = r[t]
            s, q = c["searched"], c["searched_equalized"]
            nn = c.get("nncf")
            nncf_cols = (
                [
                    drop(nn),
                    ", ".join(nn["reverted"]) or "none",
                    f"{nn['fp32_layers'][0]}/{nn['fp32_layers'][1]}",
                    f"{'pass' if nn['parity_gate'] else 'fail'} ({nn['cosine']:.3f})",
                ]
                if nn
                else ["", "", "", ""]
            )
            lines.append(
                f"| {n} | {t} | {r['fp32_top1']:.2f} | {drop(c['plain'])} "
                f"| {drop(s)} | {', '.join(s.get('kept_fp32') or []) or 'none'} "
                f"| {'/'.join(map(str, s['fp32_layers'])) if not s['refused'] else ''} "
                f"| {drop(q)} | {', '.join(q.get('kept_fp32') or []) or 'none'} "
                f"| {'/'.join(map(str, q['fp32_layers'])) if not q['refused'] else ''} "
                f"| {' | '.join(nncf_cols)} |"
            )
    if "cpu" in targets:
        kinds = ("plain", "equalized", "searched", "searched_equalized", "nncf")
        lines += [
            "",
            f"CPU latency of the CPU-target files, p50 ms, median of {timing['rounds']} `bench` processes "
            "per file taking turns:",
            "",
            "| fixture | backend | batch | " + " | ".join(kinds) + " |",
            "|---|---|---|" + "---|" * len(kinds),
        ]
        for n, r in fx.items():
            for key in r["cpu"]["latency"]:
                provider, batch = key.rsplit("_b", 1)
                cells = [
                    f"{v:.3f}" if (v := _ms(r["cpu"]["latency"], key, k)) is not None else "-" for k in kinds
                ]
                lines.append(f"| {n} | {provider} | {batch} | " + " | ".join(cells) + " |")
    r50 = results["resnest50"]
    lines += [
        "",
        f"resnest50 (random weights, 224x224) with planted outliers ({r50['planted']}); searched keeps "
        f"{', '.join(r50['searched_keeps']) or 'nothing'} in FP32; CPU INT8 p50 ms at batch 1, median of "
        f"{timing['r50_rounds']} `bench` processes per file taking turns:",
        "",
        "| backend | plain | equalized | searched | equalized / plain | searched / plain |",
        "|---|---|---|---|---|---|",
    ]
    for p in providers:
        a, b, c = (_ms(r50["latency"], f"{p}_b1", k) for k in ("plain", "equalized", "searched"))
        lines.append(f"| {p} | {a:.2f} | {b:.2f} | {c:.2f} | {b / a:.3f} | {c / a:.3f} |")  # type: ignore[operator]
    small = results["small_set"]
    lines += [
        "",
        f"64 held-out images: resolves {BUDGET} points: {small['resolves']} "
        f"({small['images_needed']} needed); printed: {small['printed'] or 'nothing about it'}.",
        "",
        "| goal | met | figures |",
        "|---|---|---|",
    ]
    lines += [f"| {g} | {ok} | {why} |" for g, ok, why in results["goals"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 fixtures, CPU target, 3 rounds, batch 1, resnest50 20 iterations",
    )
    parser.add_argument(
        "--fixtures",
        default=None,
        help=f"comma-separated fixture names (default: all {len(SPECS)}; "
        f"--quick: {', '.join(QUICK_FIXTURES)}): " + ", ".join(s.name for s in SPECS),
    )
    parser.add_argument(
        "--name",
        default=None,
        help="results/NAME.{json,md} (default: int8_search, --quick: int8_search.quick)",
    )
    args = parser.parse_args()
    chosen = [n.strip() for n in args.fixtures.split(",")] if args.fixtures else None
    unknown = sorted(set(chosen or ()) - {s.name for s in SPECS})
    if unknown:
        parser.error(f"unknown fixtures {unknown}; choose from {', '.join(s.name for s in SPECS)}")
    providers = ("cpu", "openvino") if importlib.util.find_spec("openvino") else ("cpu",)
    if args.quick:
        specs = [s for s in SPECS if s.name in (chosen or QUICK_FIXTURES)]
        targets: tuple[str, ...] = ("cpu",)
        timing: dict[str, Any] = {
            "rounds": 3,
            "r50_rounds": 3,
            "batches": (1,),
            "providers": providers,
            "iterations": 200,
            "r50_iterations": 20,
        }
    else:
        specs, targets = [s for s in SPECS if chosen is None or s.name in chosen], ("cpu", "tensorrt")
        timing = {
            "rounds": DIGITS_ROUNDS,
            "r50_rounds": ROUNDS,
            "batches": (1, 32),
            "providers": providers,
            "iterations": 1000,
            "r50_iterations": 100,
        }
    started, load_start = time.perf_counter(), round(os.getloadavg()[0], 1)
    with tempfile.TemporaryDirectory() as tmp:
        import onnx

        from resnest_deploy.export import export_onnx
        from resnest_deploy.models import load_model

        folder = Path(tmp)
        model, info = load_model("resnest14d_digits", "pretrained")
        digits = export_onnx(model, folder / "digits.onnx", weights=info).path
        sets = digits_sets(folder)
        source = onnx.load(digits)
        fixtures: dict[str, Any] = {}
        for spec in specs:
            print(f"fixture {spec.name}", flush=True)
            planted, where = from_spec(source, spec)
            src = folder / f"{spec.name}.onnx"
            onnx.save(planted, src)
            fixtures[spec.name] = fixture(spec.name, src, folder, sets, targets, timing) | {
                "planted": str(where)
            }
        kept = r50_keeps(specs, fixtures)
        print("resnest50", flush=True)
        r50 = resnest50(folder, kept, timing)
        print("64 held-out images", flush=True)
        small = small_set_line(folder / f"{specs[0].name}.onnx", folder, sets)
        print("rerun with the cache", flush=True)
        again = rerun(folder / f"{specs[0].name}.onnx", folder, sets)
        equal_digits = digits_equalized(digits, folder)
    for r in fixtures.values():
        for t in targets:
            for e in r[t].values():
                if isinstance(e, dict):
                    e.pop("path", None)
    results: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "fixtures_run": f"{len(specs)} of {len(SPECS)}",
        "budget_points": BUDGET,
        "nncf_max_drop": NNCF_MAX_DROP,
        "evaluation_images": len(sets.x),
        "calibration_images": len(sets.calib),
        "timing": {k: list(v) if isinstance(v, tuple) else v for k, v in timing.items()},
        "fixtures": fixtures,
        "resnest50": r50,
        "small_set": small,
        "rerun": again,
        "load_average": [load_start, round(os.getloadavg()[0], 1)],
        "equalized_fp32_digits_relative_change": equal_digits,
    }
    results["goals"] = goals(results, targets, r50, small, equal_digits, providers, timing["batches"])
    results["seconds"] = round(time.perf_counter() - started, 1)
    name = args.name or ("int8_search.quick" if args.quick else "int8_search")
    save(name, results, "(the table is written after the figures; see the JSON)")  # a long run is never lost
    save(
        name,
        results,
        table(results, targets, providers, timing, args.quick) + f"\n\nWall time {results['seconds']} s.",
    )


if __name__ == "__main__":
    main()
