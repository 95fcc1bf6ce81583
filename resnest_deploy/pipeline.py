"""Export, convert, build, check and bench in one go, with a report of every figure.

Each step's outcome is recorded as it finishes; the first failure stops the run, and the report
written so far says which step failed and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnest_deploy import _deps, metadata
from resnest_deploy import bench as _bench
from resnest_deploy import check as _check
from resnest_deploy._io import prepare_outputs
from resnest_deploy.compare import Tolerance
from resnest_deploy.engine import build_engine, detect
from resnest_deploy.errors import ConversionError, ParityError, ResnestDeployError, first_line
from resnest_deploy.export import export_onnx
from resnest_deploy.limits import MAX_BATCH, check_positive
from resnest_deploy.models import get_spec, load_model
from resnest_deploy.precision import calibration, convert, search
from resnest_deploy.precision.calibration import check_count
from resnest_deploy.precision.config import (
    CalibrationOptions,
    ConversionConfig,
    Equalize,
    Method,
    Precision,
    RunOptions,
    Target,
    precision_of,
)
from resnest_deploy.reports.conversion import plot
from resnest_deploy.reports.pipeline import markdown as markdown
from resnest_deploy.reports.pipeline import meant_for as meant_for
from resnest_deploy.reports.pipeline import write_reports


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run, checked when made. Everything lands in ``out_dir`` (default
    ``models/<arch>/``). INT8 calibrates with ``method`` (``auto``: every method the target offers,
    the best kept) on ``calibration``'s images and searches the units to keep in FP32 within
    ``max_drop`` points. ``tolerance`` replaces the reduced precision's default bar in the
    conversions and the check (recorded, and said in the report)."""

    arch: str
    weights: str = "pretrained"
    precision: Precision | str = Precision.fp32
    target: Target | str = Target.tensorrt
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    method: Method | str | None = None  # INT8: auto when not given
    max_drop: float | None = None  # INT8: search.DEFAULT_MAX_DROP when not given
    tolerance: Tolerance | None = None
    images: Path | None = None
    out_dir: Path | None = None
    build: bool = True
    backend: str = "auto"
    batches: tuple[int, ...] = (1, 8)
    iterations: int = 20
    equalize: Equalize | str = Equalize.off  # INT8: cross-layer equalization first (ConversionConfig)

    def __post_init__(self) -> None:
        get_spec(self.arch)
        object.__setattr__(self, "precision", precision_of(self.precision))
        object.__setattr__(self, "batches", tuple(self.batches))
        if self.precision != Precision.int8:
            _refuse_int8_only(self)
        object.__setattr__(self, "method", Method.auto if self.method is None else self.method)
        if self.max_drop is None:
            object.__setattr__(self, "max_drop", search.DEFAULT_MAX_DROP)
        if self.precision != Precision.fp32:
            # the conversion's choices checked now, before anything is made
            self.conversion(str(self.precision), str(self.target), True)
        for b in self.batches:
            check_positive(b, "batch_sizes", maximum=MAX_BATCH)
        check_count(self.calibration.count)
        self.calibration.check_for(self.precision)

    @property
    def out(self) -> Path:
        return Path(self.out_dir or Path("models") / self.arch)

    def conversion(self, precision: str, target: str, calibrated: bool) -> ConversionConfig:
        """A conversion of this run: INT8 with calibration data goes through the calibration
        methods and the search; anything else converts once, with max."""
        searched = precision == "int8" and calibrated
        return ConversionConfig(
            precision,
            target,
            (self.method or Method.auto) if searched else Method.max,
            tolerance=self.tolerance,
            max_drop=self.max_drop if searched else None,
            equalize=self.equalize if precision == "int8" else Equalize.off,
        )


def _refuse_int8_only(config: PipelineConfig) -> None:
    """What only INT8 uses, given to an FP32 or FP16 run: one line naming it, not silently dropped."""
    chosen = {"method": config.method, "max_drop": config.max_drop}
    chosen["equalize"] = None if str(config.equalize) == "off" else config.equalize
    if given := [name for name, v in chosen.items() if v is not None]:
        flags, one = " and ".join(f"{{{name}}}" for name in given), len(given) == 1
        raise ConversionError(
            f"{flags} {'applies' if one else 'apply'} only to INT8 (calibration, the search, "
            f"equalization); an {str(config.precision).upper()} run has nothing to calibrate: drop "
            f"{'it' if one else 'them'}, or run with {{precision=int8}}",
            param=(*given, "precision"),
            exit_code=2,
        )


def _gpu() -> bool:
    """A CUDA GPU this process can use, asked of cuda-python as the TensorRT runner does (the CPU
    build of torch the README installs says no even on a GPU machine)."""
    from resnest_deploy._cuda import gpu_count

    return gpu_count() > 0


class _Run:
    """The report under construction; every step lands in it before the next one starts."""

    def __init__(self, out: Path, report: dict[str, Any], run: RunOptions) -> None:
        self.out, self.report, self.say, self.wording = out, report, run.say, run.wording

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.say(f"{name}...")
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # a bug is reported too, as such, before it propagates
            reason = (
                self.wording(e) if isinstance(e, ResnestDeployError) else f"internal error: {first_line(e)}"
            )
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


def pipeline(config: PipelineConfig, run: RunOptions | None = None) -> dict[str, Any]:
    """Export, convert, build, check and bench as ``config`` says; report.json and report.md land
    in ``config.out``. ``run.executor`` runs the INT8 search's per-unit trials (``precision.convert``).
    Random weights are measured, not judged, and the report says the files are for speed and
    structure only."""
    run = run or RunOptions()
    out, arch, weights = config.out, config.arch, config.weights
    weights_file = weights if weights not in ("pretrained", "random") and "://" not in weights else None
    prepare_outputs(
        [out / f"{arch}.onnx", out / "report.json", out / "report.md"],
        [weights_file, config.calibration.calib_npy],
    )
    steps = _Run(
        out,
        {
            "arch": arch,
            "out_dir": str(out),
            "weights": weights,
            "precision": str(config.precision),
            "target": str(config.target),
            "started": metadata.now(),
            "status": "running",
            **({"note": metadata.RANDOM_WEIGHTS_NOTE} if weights == "random" else {}),
            "steps": {},
        },
        run,
    )
    fp32 = out / f"{arch}.onnx"
    exported = steps.step("export", lambda: _export(arch, weights, fp32))
    made = _made(steps, config, run, fp32, tuple(exported["input"]["shape"][2:]))
    _checks(steps, config, made)
    steps.step("bench", lambda: _timed(config, made))
    if made.engine and not made.engine_runs:
        steps.report["steps"]["bench"]["note"] = f"{made.engine.name} was built but not run: no CUDA GPU here"
    steps.report |= {"status": "ok", "finished": metadata.now(), "machine": metadata.machine()}
    write_reports(steps.report, out)
    return steps.report


@dataclass
class _Artifacts:
    """What the run made, in order: the FP32 export, its conversions, the engine."""

    fp32: Path
    files: list[Path]
    calib: calibration.CalibrationData | None = None
    engine: Path | None = None
    engine_runs: bool = False
    cpu_file: Path | None = None  # the CPU-target INT8 file made beside a TensorRT one

    @property
    def runnable(self) -> list[str]:
        return [*map(str, self.files), *([str(self.engine)] if self.engine_runs else [])]


def _made(
    steps: _Run, config: PipelineConfig, run: RunOptions, fp32: Path, hw: tuple[int, ...]
) -> _Artifacts:
    """The conversion (and its calibration set), the engine, and on a machine without a GPU the
    CPU-target INT8 file beside a TensorRT one."""
    made = _Artifacts(fp32, [fp32])
    precision, target = str(config.precision), str(config.target)
    if precision != "fp32":
        h, w = hw

        def convert_step() -> dict[str, Any]:
            c = config.calibration
            made.calib = calibration.resolve(
                config.arch, (h, w), c.calib_dir, c.calib_npy, c.count, eval_dir=c.eval_dir
            )
            return _conversion(fp32, config.conversion(precision, target, True), made.calib, run)

        made.files.append(Path(steps.step("convert", convert_step)["path"]))
    made.engine = _maybe_build(steps, made.files[-1], config.build, target, config.backend)
    made.engine_runs = made.engine is not None and _gpu()
    if precision == "int8" and target == "tensorrt" and not _gpu():
        # The TensorRT-target file is slower than FP32 on a CPU: also make what runs fast here.
        cpu_config = config.conversion("int8", "cpu", made.calib is not None)
        cpu = steps.step("convert-cpu", lambda: _conversion(fp32, cpu_config, made.calib, run))
        made.cpu_file = Path(cpu["path"])
        made.files.append(made.cpu_file)
    return made


def _checks(steps: _Run, config: PipelineConfig, made: _Artifacts) -> None:
    """Every runnable file against PyTorch FP32 on what the conversion was judged on: the evaluation
    set, else the held-out images (or ``config.images``)."""
    held_out = None
    calib = made.calib
    if calib is not None and calib.evaluation is not None:
        held_out = (calib.evaluation.x, calib.evaluation.record())
    elif calib is not None:
        kind = f"held-out {calib.source['kind']}"
        held_out = (calib.holdout, {**calib.source, "kind": kind, "count": len(calib.holdout)})
    precision, tolerance = str(config.precision), config.tolerance
    bars = {precision: tolerance} if tolerance is not None and precision != "fp32" else {}
    arch, weights, images = config.arch, config.weights, config.images
    inputs = None if images else held_out
    steps.step("check", lambda: _checked(made.runnable, arch, weights, images, inputs, bars=bars))
    if not _gpu() and _cpu_has_bf16():  # the CPU's other fast path: FP32 computed in BF16, own bar
        steps.step(
            "check-bf16", lambda: _checked([str(made.fp32)], arch, weights, images, inputs, "openvino-bf16")
        )


def _timed(config: PipelineConfig, made: _Artifacts) -> dict[str, Any]:
    """Every runnable file and PyTorch eager timed; the CPU INT8 file also in OpenVINO."""
    arch, batches, iterations = config.arch, config.batches, config.iterations
    results = _bench.bench(
        ["torch", *made.runnable], arch=arch, weights=config.weights, batches=batches, iterations=iterations
    )
    cpu_files = (
        [str(made.cpu_file)] if made.cpu_file else [str(a) for a in made.files if "int8-cpu" in a.name]
    )
    if cpu_files and _deps.has("openvino"):  # the same CPU file in the other CPU runtime
        results += _bench.bench(
            cpu_files, arch=arch, batches=batches, iterations=iterations, provider="openvino"
        )
    return {"results": [r.as_dict() for r in results]}


def _export(arch: str, weights: str, path: Path) -> dict[str, Any]:
    model, info = load_model(arch, weights)
    meta = export_onnx(model, path, weights=info).metadata
    return {"path": str(path), "input": meta["input"], "parity": meta.get("parity"), "file": meta.get("file")}


def _conversion(
    src: Path, config: ConversionConfig, calib: calibration.CalibrationData | None, run: RunOptions
) -> dict[str, Any]:
    """One conversion step: the file, its parity and conversion record, and the search's chart."""
    report = convert(src, None, config, calib, run)
    meta = report.metadata
    made = {
        "path": str(report.path),
        "parity": meta["parity"],
        "conversion": meta["conversion"],
        "file": meta["file"],
    }
    if report.search is not None and _deps.has("matplotlib"):
        chart = report.path.with_name(f"{report.path.name.removesuffix('.onnx')}.sensitivity.png")
        plot(report.search.ranking, chart, report.search.metric_name)
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
