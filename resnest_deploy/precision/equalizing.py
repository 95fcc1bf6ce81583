"""Cross-layer equalization inside a conversion (``ConversionConfig.equalize``): the FP32 source is
equalized (``precision.equalize``) before calibration and before any FP32 fallback, so outliers that
come from a channel's scale stay INT8 at INT8 speed. The equalized model replaces the source for
calibration and for the search (whose FP32 units take its weights); it is checked against the source
within ``equalize.REL_TOL`` first, so it computes the same logits.

``auto`` converts both ways (plain INT8, the job's calibration method, or the target's first when that
is auto too) and keeps the better on the held-out metric the calibration tournament uses
(``search.Metric``); ties keep the source as it is. Both conversions are cached, so the one kept is not
calibrated again."""

from __future__ import annotations

import collections
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.onnx_files import external_tensors, load_onnx
from resnest_deploy.precision.config import Equalize, Method, RunOptions
from resnest_deploy.precision.equalize import (
    REL_TOL,
    EqualizeError,
    EqualizeReport,
    equalize,
    relative_change,
)
from resnest_deploy.precision.job import Job, cached_convert

_TEMP: list[tempfile.TemporaryDirectory[str]] = []  # the equalized sources of this process, removed at exit


def equalized(job: Job, tmp: Path, random: bool, run: RunOptions, verbose: bool = False) -> Job:
    """The job to calibrate: ``job`` itself (``equalize="off"``), or one whose source is the equalized
    copy of ``job.src`` (same file name, same sha256 recorded: the user's file is the source), with
    ``config.equalize`` resolved to on or off and what was done in ``job.equalization``."""
    mode = Equalize(job.config.equalize)
    if mode == Equalize.off:
        return job
    off = replace(job, config=replace(job.config, equalize=Equalize.off))
    if mode == Equalize.auto and random:
        note = "random weights: whether it helps cannot be told from near-uniform logits; the source kept"
        run.say(f"equalization: off (auto skipped: {note})")
        return replace(off, equalization={"mode": "auto", "chosen": "off", "skipped": note})
    run.say(f"equalizing {job.src.name} (cross-layer, exact in FP32)")
    path, report, record = _equalized_copy(job)
    run.say(f"equalization: {report}")
    on = replace(job, src=path, config=replace(job.config, equalize=Equalize.on), equalization=record)
    if mode == Equalize.on:
        on.equalization["mode"] = "on"  # type: ignore[index]
        return on
    return _better(off, on, record, tmp, run, verbose)


def _better(off: Job, on: Job, record: dict[str, Any], tmp: Path, run: RunOptions, verbose: bool) -> Job:
    from resnest_deploy.precision.parity import held_out_metric

    assert off.calib is not None
    metric, _ = held_out_metric(off.src, off, off.calib, use_cache=run.use_cache)  # the user's source
    scores = []
    for job in (off, on):
        if job.config.method == Method.auto:
            job = replace(job, config=job.config.with_method(job.config.methods[0]))
        model, _ = cached_convert(job, tmp, run.say, run.use_cache, verbose)
        scores.append(round(metric(model), 3))
        run.say(f"equalization {job.config.equalize}: {scores[-1]:.2f} ({metric.name}, plain INT8)")
    chosen = on if scores[1] > scores[0] else off
    record |= {
        "mode": "auto",
        "metric": metric.name,
        "results": [{"equalize": "off", "metric": scores[0]}, {"equalize": "on", "metric": scores[1]}],
        "chosen": str(chosen.config.equalize),
    }
    return replace(chosen, equalization=record)


def _equalized_copy(job: Job) -> tuple[Path, EqualizeReport, dict[str, Any]]:
    """The equalized source written to a private temp folder under the source's own name, checked."""
    onnx = _deps.require("onnx")
    started = time.perf_counter()
    model = load_onnx(job.src)
    if any(True for _ in external_tensors(model)):
        onnx.external_data_helper.load_external_data_for_model(model, str(job.src.resolve().parent))
    out, report = equalize(model)
    change = relative_change(model, out)
    if not change <= REL_TOL:
        raise EqualizeError(
            f"equalizing {job.src.name} changes its logits by {change:.2g} of their scale (bar {REL_TOL:g}); "
            "convert with equalize=off and report this model"
        )
    if not _TEMP:
        _TEMP.append(tempfile.TemporaryDirectory(prefix="resnest-deploy-equalized-"))
    folder = Path(_TEMP[0].name) / job.src_sha256[:24]
    folder.mkdir(exist_ok=True)
    path = folder / job.src.name
    onnx.save(out, path)
    return path, report, summary(report) | {"relative_change": change, "seconds": _since(started)}


def summary(report: EqualizeReport) -> dict[str, Any]:
    """What a sidecar records of an equalization: which convolutions, of what kind, what it balanced,
    and what it left alone and why (``EqualizeReport.as_dict`` has every pair's numbers)."""
    return {
        "groups": len(report.equalized),
        "kinds": dict(collections.Counter(p.kind for p in report.equalized)),
        "convolutions": [c for p in report.equalized for c in p.producers or (p.first,)],
        "imbalance_before": round(report.imbalance_before, 4),
        "imbalance_after": round(report.imbalance_after, 4),
        "skipped": [{"first": s.first, "reason": s.reason} for s in report.skipped],
        "folded_batch_norms": report.folded_batch_norms,
    }


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
