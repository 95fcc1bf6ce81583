"""Export, convert, build, check and bench in one go, with a report of every figure.

Each step's outcome is recorded as it finishes; the first failure stops the run, and the report
written so far says which step failed and why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnest_deploy import _deps, metadata
from resnest_deploy import bench as _bench
from resnest_deploy import check as _check
from resnest_deploy._io import atomic_path, prepare_outputs, write_json
from resnest_deploy.compare import Tolerance
from resnest_deploy.engine import build_engine, detect
from resnest_deploy.errors import ParityError, ResnestDeployError, first_line
from resnest_deploy.export import export_onnx
from resnest_deploy.limits import MAX_BATCH, check_positive
from resnest_deploy.models import get_spec, load_model
from resnest_deploy.precision import PRECISIONS, ConversionError, calibration, convert, search
from resnest_deploy.precision.calibration import check_count

if TYPE_CHECKING:
    from resnest_deploy.executors import Executor


def _gpu() -> bool:
    """A CUDA GPU this process can use, asked of cuda-python as the TensorRT runner does (the CPU
    build of torch the README installs says no even on a GPU machine)."""
    from resnest_deploy._cuda import gpu_count

    return gpu_count() > 0


class _Run:
    """The report under construction; every step lands in it before the next one starts."""

    def __init__(self, out: Path, report: dict[str, Any], say: Callable[[str], None]) -> None:
        self.out, self.report, self.say = out, report, say

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.say(f"{name}...")
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # a bug is reported too, as such, before it propagates
            reason = str(e) if isinstance(e, ResnestDeployError) else f"internal error: {first_line(e)}"
            self.report["steps"][name] = {"status": "failed", "reason": reason}
            self.report["status"] = f"failed at {name}"
            write_reports(self.report, self.out)
            raise
        self.report["steps"][name] = {
            "status": "ok",
            "seconds": round(time.perf_counter() - started, 2),
            **result,
        }
        return result

    def skip(self, name: str, reason: str) -> None:
        self.report["steps"][name] = {"status": "skipped", "reason": reason}


def pipeline(
    arch: str,
    *,
    weights: str = "pretrained",
    precision: str = "fp32",
    target: str = "tensorrt",
    calib_dir: str | os.PathLike[str] | None = None,
    calib_npy: str | os.PathLike[str] | None = None,
    calib_count: int = calibration.DEFAULT_COUNT,
    method: str = "auto",
    max_drop: float | None = None,
    images: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    build: bool = True,
    backend: str = "auto",
    batches: Sequence[int] = (1, 8),
    iterations: int = 20,
    progress: Callable[[str], None] | None = None,
    executor: Executor | None = None,
    tolerance: Tolerance | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Everything lands in ``out_dir`` (default ``models/<arch>/``), with report.json and report.md.
    ``executor`` runs the INT8 search's per-unit trials (``precision.convert``).

    INT8 calibrates with ``method`` (``auto``: every method the target offers, the best kept) and
    searches for the units to keep in FP32 within ``max_drop`` points (default
    ``search.DEFAULT_MAX_DROP``). ``tolerance`` replaces the reduced precision's default bar in the
    conversions and the check (recorded, and said in the report). Random weights are measured, not
    judged, and the report says the files are for speed and structure only."""
    out = Path(out_dir or Path("models") / arch)
    max_drop = search.DEFAULT_MAX_DROP if max_drop is None else max_drop
    get_spec(arch)
    if precision not in ("fp32", *PRECISIONS):
        raise ConversionError(f"unknown precision {precision!r}; choose fp32, {', '.join(PRECISIONS)}")
    for b in batches:
        check_positive(b, "batch_sizes", maximum=MAX_BATCH)
    check_count(calib_count)
    weights_file = weights if weights not in ("pretrained", "random") and "://" not in weights else None
    prepare_outputs([out / f"{arch}.onnx", out / "report.json", out / "report.md"], [weights_file, calib_npy])
    run = _Run(
        out,
        {
            "arch": arch,
            "out_dir": str(out),
            "weights": weights,
            "precision": precision,
            "target": target,
            "started": metadata.now(),
            "status": "running",
            **({"note": metadata.RANDOM_WEIGHTS_NOTE} if weights == "random" else {}),
            "steps": {},
        },
        progress or (lambda _m: None),
    )

    settings = _Conversion(method, max_drop, tolerance, verbose, run.say, executor)
    fp32 = out / f"{arch}.onnx"
    exported = run.step("export", lambda: _export(arch, weights, fp32))
    artifacts = [fp32]
    calib = None
    if precision != "fp32":
        _, _, h, w = exported["input"]["shape"]
        made: dict[str, Any] = {}  # the step's calibration set, reused by the check

        def convert_step() -> dict[str, Any]:
            made["calib"] = calibration.resolve(arch, (h, w), calib_dir, calib_npy, calib_count)
            return _conversion(fp32, precision, target, made["calib"], settings)

        result = run.step("convert", convert_step)
        calib = made["calib"]
        artifacts.append(Path(result["path"]))

    engine = _maybe_build(run, artifacts[-1], build, target, backend)
    engine_runs = engine is not None and _gpu()
    cpu_file = None
    if precision == "int8" and target == "tensorrt" and not _gpu():
        # The TensorRT-target file is slower than FP32 on a CPU: also make what runs fast here.
        cpu = run.step("convert-cpu", lambda: _conversion(fp32, "int8", "cpu", calib, settings))
        cpu_file = Path(cpu["path"])
        artifacts.append(cpu_file)
    runnable = [*map(str, artifacts), *([str(engine)] if engine_runs else [])]
    held_out = None
    if calib is not None:
        kind = f"held-out {calib.source['kind']}"
        held_out = (calib.holdout, {**calib.source, "kind": kind, "count": len(calib.holdout)})
    bars = {precision: tolerance} if tolerance is not None and precision != "fp32" else {}
    run.step(
        "check", lambda: _checked(runnable, arch, weights, images, None if images else held_out, bars=bars)
    )
    if not _gpu() and _cpu_has_bf16():  # the CPU's other fast path: FP32 computed in BF16, own bar
        run.step(
            "check-bf16",
            lambda: _checked(
                [str(fp32)], arch, weights, images, None if images else held_out, "openvino-bf16"
            ),
        )

    def timed() -> dict[str, Any]:
        results = _bench.bench(
            ["torch", *runnable], arch=arch, weights=weights, batches=batches, iterations=iterations
        )
        cpu_files = [str(cpu_file)] if cpu_file else [str(a) for a in artifacts if "int8-cpu" in a.name]
        if cpu_files and _deps.has("openvino"):  # the same CPU file in the other CPU runtime
            results += _bench.bench(
                cpu_files, arch=arch, batches=batches, iterations=iterations, provider="openvino"
            )
        return {"results": [r.as_dict() for r in results]}

    run.step("bench", timed)
    if engine and not engine_runs:
        run.report["steps"]["bench"]["note"] = f"{engine.name} was built but not run: no CUDA GPU here"
    run.report |= {"status": "ok", "finished": metadata.now(), "machine": metadata.machine()}
    write_reports(run.report, out)
    return run.report


def _export(arch: str, weights: str, path: Path) -> dict[str, Any]:
    model, info = load_model(arch, weights)
    meta = export_onnx(model, path, weights=info).metadata
    return {"path": str(path), "input": meta["input"], "parity": meta.get("parity"), "file": meta.get("file")}


@dataclass(frozen=True)
class _Conversion:
    """The settings every conversion of one run shares."""

    method: str
    max_drop: float
    tolerance: Tolerance | None
    verbose: bool
    say: Callable[[str], None]
    executor: Executor | None = None  # runs the INT8 search's per-unit trials


def _conversion(
    src: Path,
    precision: str,
    target: str,
    calib: calibration.CalibrationData | None,
    settings: _Conversion,
) -> dict[str, Any]:
    """INT8 goes through the calibration methods and the search: what is sensitive, and what (if
    anything) stays in FP32."""
    int8 = precision == "int8" and calib is not None
    report = convert(
        src,
        precision=precision,
        target=target,
        calib=calib,
        method=settings.method if int8 else "max",
        max_drop=settings.max_drop if int8 else None,
        tolerance=settings.tolerance,
        progress=settings.say,
        verbose=settings.verbose,
        executor=settings.executor,
    )
    meta = report.metadata
    made = {
        "path": str(report.path),
        "parity": meta["parity"],
        "conversion": meta["conversion"],
        "file": meta["file"],
    }
    found = meta["conversion"].get("search")
    if found and _deps.has("matplotlib"):
        chart = report.path.with_name(f"{report.path.name.removesuffix('.onnx')}.sensitivity.png")
        search.plot([search.Sensitivity(**s) for s in found["sensitivity"]], chart, found["metric"])
        made["sensitivity_chart"] = str(chart)
    return made


def _maybe_build(run: _Run, src: Path, build: bool, target: str, backend: str) -> Path | None:
    if not build:
        run.skip("build", "--no-build")
        return None
    if target == "cpu":
        run.skip("build", "the cpu target is an ONNX Runtime model, not a TensorRT one")
        return None
    try:
        detect(backend)
    except ResnestDeployError as e:
        run.skip("build", str(e))
        return None
    engine = src.with_suffix(".plan")
    run.step("build", lambda: build_engine(src, engine, backend=backend).as_dict())
    return engine


def _cpu_has_bf16() -> bool:
    if not _deps.has("openvino"):
        return False
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _checked(
    artifacts: list[str],
    arch: str,
    weights: str,
    images: Any,
    inputs: Any,
    provider: str = "cpu",
    bars: dict[str, Tolerance] | None = None,
) -> dict[str, Any]:
    report = _check.check(
        artifacts,
        arch=arch,
        weights=weights,
        images=images,
        inputs=inputs,
        provider=provider,
        tolerances=bars,
    )
    if not report.passed:
        failed = [f"{r.artifact}: {'; '.join(r.problems)}" for r in report.results if not r.passed]
        raise ParityError(f"check failed: {' | '.join(failed)}")
    return report.as_dict()


def _int8_note(results: list[dict[str, Any]]) -> list[str]:
    """Say it when the CPU INT8 file measured slower than FP32 here, and why, rather than let a
    newcomer's first table suggest INT8 never pays."""
    p50 = {(Path(r["artifact"]).name, r["backend"], r["batch"]): r["p50_ms"] for r in results}
    slower = [
        (name, b)
        for (name, backend, b), ms in p50.items()
        if ".int8-cpu." in name
        and backend == "onnxruntime-cpu"
        and ms > p50.get((name.replace(".int8-cpu", ""), backend, b), float("inf"))
    ]
    if not slower:
        return []
    return [
        "",
        f"INT8 did not pay on this CPU for this model at batch {', '.join(str(b) for _, b in slower)}: "
        "it is small enough that quantize/dequantize overhead outweighs the cheaper convolutions. On "
        "resnest50 the same CPU INT8 path is 3-5x faster than PyTorch eager "
        "(benchmarks/results/cpu_backends.md).",
    ]


def meant_for(artifact: str) -> str:
    """Which runtime a file is made for, as the report tells a newcomer."""
    name = Path(artifact).name
    if name.endswith((".plan", ".engine")):
        return "TensorRT (GPU)"
    if ".int8-cpu." in name:
        return "CPU: ONNX Runtime, OpenVINO"
    if ".int8." in name or ".fp16." in name:
        return "TensorRT (GPU), slow on CPU"
    return "any (FP32 reference)"


def write_reports(report: dict[str, Any], out: Path) -> None:
    write_json(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    """The human summary: what was made, how close it is, how fast it runs."""
    steps = report["steps"]
    arch = report["arch"]

    def short(artifact: str) -> str:  # names fit an 80-column terminal: * stands for the arch
        name = Path(artifact).name
        return f"*{name.removeprefix(arch)}" if name.startswith(f"{arch}.") else name

    lines = [f"# {arch} ({report['precision']}, {report['target']}): {report['status']}", ""]
    if report.get("note"):
        lines += [f"**Note:** {report['note'][0].upper()}{report['note'][1:]}.", ""]
    lines += ["| step | status | detail |", "|---|---|---|"]
    for name, s in steps.items():
        detail = s.get("reason") or s.get("path") or ""
        gate = (s.get("parity") or {}).get("gate") or {}
        if gate.get("tolerance_from") == "user" and gate.get("outside_default") and gate.get("judged"):
            detail += f" (accepted outside the default tolerance: {'; '.join(gate['outside_default'])})"
        lines.append(f"| {name} | {s['status']} | {detail} |")
    checks = [(k, steps[k]) for k in ("check", "check-bf16") if steps.get(k, {}).get("results")]
    if checks or steps.get("bench", {}).get("results"):
        lines += ["", f"Files: `*` stands for `{arch}` in `{report.get('out_dir', '.')}`."]
    for key, check in checks:
        inputs = check["inputs"]
        how = "computed in BF16 by OpenVINO, " if key == "check-bf16" else ""
        lines += [
            "",
            f"## Accuracy against PyTorch FP32 ({how}{inputs.get('kind')}: {inputs.get('count', '?')})",
            "",
            "| artifact | for | ran in | precision | max abs | cosine | top-1 agree | top-5 agree |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in check["results"]:
            m = r["metrics"]
            lines.append(
                f"| {short(r['artifact'])} | {meant_for(r['artifact'])} | {r['backend']} "
                f"| {r['precision']}{'' if r.get('judged', True) else ' (not judged)'} "
                f"| {m['max_abs']:.3g} | {m['cosine']:.6f} | {m['top1']:.1%} | {m['top5']:.1%} |"
            )
    bench = steps.get("bench", {})
    if bench.get("results"):
        lines += [
            "",
            "## Latency",
            "",
            "| artifact | backend | batch | p50 ms | p10-p90 ms | p99 ms | images/s | |",
            "|---|---|---|---|---|---|---|---|",
        ]
        flagged = [r for r in bench["results"] if r.get("flags")]
        for r in bench["results"]:
            spread = f"{r['p10_ms']:.2f}-{r['p90_ms']:.2f}" if "p10_ms" in r else f"{r['p90_ms']:.2f}"
            mark = f"!{flagged.index(r) + 1}" if r in flagged else ""
            lines.append(
                f"| {short(r['artifact'])} | {r['backend']} | {r['batch']} | {r['p50_ms']:.2f} "
                f"| {spread} | {r['p99_ms']:.2f} | {r['images_per_s']:.1f} | {mark} |"
            )
        for i, r in enumerate(flagged, 1):  # the figures that cannot be trusted, and why (as bench says)
            cause = f" Likely cause: {r['cause']}" if r.get("cause") else ""
            lines += [
                "",
                f"!{i} {short(r['artifact'])} {r['backend']} batch {r['batch']}: "
                f"{'; '.join(r['flags'])}.{cause}",
            ]
        if bench.get("note"):
            lines += ["", bench["note"]]
        lines += _int8_note(bench["results"])
    for key in ("convert", "convert-cpu"):
        conversion = steps.get(key, {}).get("conversion") or {}
        found = conversion.get("search")
        if not found:
            continue
        kept = search.kept_summary(found)
        kept = "none (INT8 everywhere)" if kept == "none" else kept
        tried = conversion.get("calibration_methods")
        lines += [
            "",
            f"## INT8 search for {'the CPU' if key == 'convert-cpu' else 'TensorRT'}: "
            f"{short(steps[key].get('path', ''))} ({found['metric']} on held-out images, "
            f"budget {found['max_drop_points']} points)",
            "",
        ]
        if tried:
            lines += [
                "| calibration | plain INT8 |",
                "|---|---|",
                *(
                    f"| {r['method']}{' (kept)' * (r['method'] == tried['chosen'])} | {r['metric']:.2f} |"
                    for r in tried["results"]
                ),
                "",
            ]
        cost = search.latency_summary(found)
        lines += [
            f"FP32 {found['fp32']:.2f}, plain INT8 {found['plain_int8']:.2f}, chosen {found['chosen']:.2f}; "
            f"kept in FP32: {kept}." + (f" Its cost: {cost}." if cost else ""),
            "",
            "| unit | with only it in FP32 | recovers |",
            "|---|---|---|",
            *(
                f"| {s['unit']} | {s['metric_fp32_alone']:.2f} | {s['gain']:+.2f} |"
                for s in found["sensitivity"][:8]
            ),
        ]
        chart = steps[key].get("sensitivity_chart")
        if chart:
            lines += ["", f"![INT8 sensitivity]({Path(chart).name})"]
    machine = report.get("machine")
    if machine:
        lines += [
            "",
            f"Measured on {machine.get('gpu') or machine['cpu']} ({machine['cores']} cores), "
            f"{machine['date']}.",
        ]
    return "\n".join(lines) + "\n"
