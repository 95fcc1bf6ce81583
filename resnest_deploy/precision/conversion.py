"""The orchestration of one conversion: calibrate (once, or every method: the tournament), search
the units to keep in FP32, time what that costs, measure parity, write the file and its sidecar.
Parity lives in ``parity``, the latency cost in ``cost``, the typed results in ``results``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from resnest_deploy import _deps, _verbosity, metadata, stats
from resnest_deploy._io import artifact_pair, prepare_outputs, sha256_file
from resnest_deploy.compare import TOLERANCES, UNCHECKED, Metrics, assert_close, compare
from resnest_deploy.errors import ArtifactError, ParityError
from resnest_deploy.formats import InputForm
from resnest_deploy.precision import equalizing, search
from resnest_deploy.precision.calibration import CalibrationData
from resnest_deploy.precision.config import ConversionConfig, ConversionError, Method, RunOptions
from resnest_deploy.precision.cost import LatencyCost, latency_cost
from resnest_deploy.precision.job import Job, cached_convert, quiet_modelopt, random_inputs
from resnest_deploy.precision.parity import (
    References,
    arithmetic,
    gate_record,
    held_out_metric,
    measure_parity,
)
from resnest_deploy.precision.results import (
    ConversionReport,
    Evaluation,
    MethodScore,
    Tournament,
    conversion_section,
)
from resnest_deploy.precision.search import SearchResult
from resnest_deploy.precision.source import default_output, input_hw, read_source


def convert(
    src: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    config: ConversionConfig,
    calib: CalibrationData | None = None,
    run: RunOptions | None = None,
) -> ConversionReport:
    """Convert ``src`` as ``config`` says and check the result against it; raise (writing nothing)
    if it drifted. ``output`` None: beside ``src`` (``m.int8.onnx``, ``m.int8-cpu.onnx``, ...).

    A calibrated model is cached under the key (source sha256, calibration data, the config's
    fields, tool versions), so rerunning with the same data skips calibration, the slow part
    (resnest50 on 256 images: about 45 s here); the parity check always runs.

    INT8 only: ``method="auto"`` calibrates with every method the target's quantizer offers and keeps
    the best on the evaluation set; ``max_drop`` keeps the most sensitive units in FP32 until the
    budget AND the parity gate hold on it (``search.ACCEPTANCE``: what the search accepts is what is
    written), whose trials ``run.executor`` may run elsewhere. The evaluation set is ``calib``'s
    (``CalibrationData.evaluation``, from ``eval_dir``), else its held-out part; its FP32 logits are
    cached per (source file, set). The drop is reported with its 95% interval (``stats.paired_drop``).

    A source made from random weights is measured but not judged: its near-uniform logits make
    any INT8 file look far from them (``metadata.random_weights``).
    """
    run = run or RunOptions()
    verbose = run.verbose or _verbosity.verbose()
    if config.precision == "int8" and calib is None:
        raise ConversionError(
            "INT8 needs calibration data; pass {calib_dir=DIR} (images) or {calib_npy=FILE}",
            param=("calib_dir", "calib_npy"),
        )
    onnx = _deps.require("onnx")
    started = time.perf_counter()
    src = Path(src)
    meta = read_source(src)
    hw = input_hw(meta)
    if calib is not None and tuple(calib.calib.shape[2:]) != hw:
        raise ArtifactError(f"calibration inputs are {calib.calib.shape[2:]}, the model wants {hw}")
    output = Path(output) if output else default_output(src, str(config.precision), str(config.target))
    prepare_outputs([output], [src])
    random = metadata.random_weights(meta)
    if config.precision == "int8" and config.max_drop is not None and calib is not None:
        _say_if_unresolved(len(calib.judged_on().x), config.max_drop, calib.evaluation is None, run)
    with artifact_pair(output) as pair, quiet_modelopt(verbose):
        job = Job(src, sha256_file(src), config, calib, InputForm.of(meta), hw)
        made = _made(job, pair.tmp, random, run, verbose)
        parity, out_meta = _judged(meta, made, random, run)
        metadata.embed(made.model, out_meta)
        onnx.save(made.model, pair.tmp)
        out_meta |= metadata.file_and_graph(pair.tmp, output.name, made.model)
        sidecar = pair.write_sidecar(out_meta)
    return ConversionReport(
        output,
        sidecar,
        str(config.precision),
        str(config.target),
        parity,
        time.perf_counter() - started,
        out_meta["graph"]["op_counts"],
        out_meta,
        made.tournament,
        made.found,
        made.cost,
        made.evaluation,
        made.drop,
        made.found.acceptance if made.found is not None else None,
    )


def _say_if_unresolved(n: int, max_drop: float, held_out: bool, run: RunOptions) -> None:
    """One line before any work when ``n`` images cannot resolve the budget (``stats.resolves``)."""
    if max_drop <= 0 or stats.resolves(n, max_drop):
        return
    needed = stats.images_needed(max_drop)
    what = "held-out" if held_out else "evaluation"
    run.say(
        f"note: {n} {what} images cannot resolve a {max_drop:g}-point budget (one image is "
        f"{100 / n:.2f} points); give {run.name('eval_dir')} with at least {needed} labelled images"
    )


@dataclass
class _Made:
    """The converted model and what made it, before parity is measured."""

    job: Job  # the one whose model was kept (the tournament's winner)
    model: Any
    settings: dict[str, Any]
    metric: search.Metric | None = None
    tournament: Tournament | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    found: SearchResult | None = None
    cost: LatencyCost | None = None
    references: References | None = None
    evaluation: Evaluation | None = None
    drop: stats.Drop | None = None


#: a search on at least this many images says first what it will cost
ESTIMATE_FROM = 500


def _made(job: Job, tmp: Path, random: bool, run: RunOptions, verbose: bool) -> _Made:
    """Calibrate (every method when auto), then search the units to keep in FP32 and time them."""
    job = equalizing.equalized(job, tmp, random, run, verbose)  # the source calibration sees
    config, skipped = _for_random_weights(job.config, random, run.say)
    job = replace(
        job, config=config if config.method != Method.auto else config.with_method(config.methods[0])
    )
    metric, refs = None, None
    if config.precision == "int8" and job.calib is not None:
        bar = None if random else config.tolerance or TOLERANCES[str(config.precision)]
        metric, refs = held_out_metric(job.src, job, job.calib, bar, run.use_cache)
    if config.auto:
        assert metric is not None
        made = _tournament(job, metric, tmp, run, verbose)
    else:
        model, settings = cached_convert(job, tmp, run.say, run.use_cache, verbose)
        made = _Made(job, model, settings, metric)
    made.skipped, made.references = skipped, refs
    if config.max_drop is not None and metric is not None:
        plain = made.model
        _say_estimate(plain, metric, run)
        made.model, made.found = search.search(plain, metric, config.max_drop, run.say, run.executor)
        if made.found.kept_fp32:
            made.cost = latency_cost(plain, made.model, metric.x[:1], str(config.target), run.say)
    graph = metadata.graph_precision(made.model)
    if graph != config.precision:
        raise ConversionError(
            f"the {config.precision} conversion left a {graph} graph (no node was converted: does "
            "{keep_fp32_nodes} match everything?); keep fewer nodes in FP32",
            param="keep_fp32_nodes",
        )
    return made


def _say_estimate(plain: Any, metric: search.Metric, run: RunOptions) -> None:
    """Before a search on a large set: images x trials x the measured time per image, and where to
    run it faster. The time is one run of the plain file on the set (the search's first trial)."""
    n = len(metric.x)
    if n < ESTIMATE_FROM:
        return
    started = time.perf_counter()
    metric(plain)
    per_image = (time.perf_counter() - started) / n
    trials = len(search.units(plain)) + 2
    cluster = run.name("ray_address", "ADDRESS")
    run.say(
        f"search: about {n} images x {trials} trials x {per_image * 1000:.2f} ms per image = "
        f"{n * trials * per_image:.0f} s here; {cluster} runs the trials on a cluster"
    )


def _for_random_weights(
    config: ConversionConfig, random: bool, say: Callable[[str], None]
) -> tuple[ConversionConfig, dict[str, str]]:
    """Random weights: which method, or which units, are best cannot be told from near-uniform
    logits; the default method, once, and no search (each said, and recorded)."""
    skipped: dict[str, str] = {}
    if random and config.auto:
        first = config.methods[0]
        skipped["calibration_methods_skipped"] = f"random weights: {first}, the default, used"
        say(f"calibration: {first} (auto skipped: random weights)")
        config = config.with_method(first)
    if random and config.max_drop is not None:
        skipped["search_skipped"] = (
            "random weights: which units INT8 hurts cannot be told from near-uniform logits"
        )
        say(f"INT8 search skipped ({skipped['search_skipped']}); every unit stays INT8")
        config = replace(config, max_drop=None)
    return config, skipped


def _tournament(job: Job, metric: search.Metric, tmp: Path, run: RunOptions, verbose: bool) -> _Made:
    """Every method the target offers, scored on the held-out inputs; ties: the first (max)."""
    tried = []
    for m in job.config.methods:
        candidate = replace(job, config=job.config.with_method(m))
        model, settings = cached_convert(candidate, tmp, run.say, run.use_cache, verbose)
        tried.append((metric(model), candidate, model, settings))
        run.say(f"calibration {m}: {tried[-1][0]:.2f} ({metric.name})")
    _, best, model, settings = max(tried, key=lambda t: t[0])
    scores = tuple(MethodScore(j.method, round(v, 3)) for v, j, _, _ in tried)
    return _Made(best, model, settings, metric, Tournament(metric.name, scores, best.method))


def _judged(
    meta: dict[str, Any], made: _Made, random: bool, run: RunOptions
) -> tuple[Metrics, dict[str, Any]]:
    """Parity against the FP32 source on the evaluation set (seeded random inputs without data),
    the gate applied, the drop measured, and the metadata of the file to write. An INT8 file is run
    exactly as the search ran its candidates (``Metric.logits``), against the same references, so
    the gate cannot overrule what the search accepted."""
    job, config = made.job, made.job.config
    precision, target = str(config.precision), str(config.target)
    metric = made.metric
    if metric is not None and job.calib is not None:
        judged_on = job.calib.judged_on()
        n = len(metric.x)
        inputs = f"{n} evaluation images" if job.calib.evaluation else f"{n} held-out calibration inputs"
        run.say(f"measuring against the FP32 source in ONNX Runtime on {inputs}")
        logits = metric.logits(made.model)
        parity, measured = compare(metric.reference, logits), arithmetic(precision, target)
        made.drop = metric.drop(logits)
        made.evaluation = _evaluation(judged_on.record(), metric, config.max_drop, made.references)
    else:
        x = job.feed(job.calib.holdout if job.calib is not None else random_inputs(job))
        inputs = (
            f"{len(x)} held-out calibration inputs"
            if job.calib is not None
            else f"{len(x)} seeded random inputs"
        )
        run.say(f"measuring against the FP32 source in ONNX Runtime on {inputs}")
        parity, measured = measure_parity(job.src, made.model, x, precision, target)
    bar = UNCHECKED if random else config.tolerance or TOLERANCES[precision]
    try:
        assert_close(parity, bar, f"{precision} ({target}) model")
    except ParityError as e:
        raise _with_a_way_forward(e, config) from None
    if random:
        run.say(f"{job.src.name} is {metadata.RANDOM_WEIGHTS_NOTE}")
    section = conversion_section(
        made.settings, made.tournament, made.skipped, made.found, made.cost, made.evaluation, made.drop
    )
    return parity, {
        **meta,
        "precision": precision,
        "target": target,
        "source": {"file": job.src.name, "sha256": job.src_sha256},
        "conversion": section,
        "parity": {
            "reference": f"{job.src.name} (fp32) in onnxruntime cpu",
            "arithmetic": measured,
            "inputs": inputs,
            "metrics": parity.as_dict(),
            "gate": gate_record(parity, precision, config.tolerance, random),
        },
        "created": metadata.now(),
        "tools": metadata.tool_versions(),
    }


def _evaluation(
    record: dict[str, Any], metric: search.Metric, max_drop: float | None, refs: References | None
) -> Evaluation:
    budget = max_drop is not None and max_drop > 0
    return Evaluation(
        str(record.get("kind", "held-out")),
        None if record.get("path") is None else str(record["path"]),
        len(metric.x),
        metric.labels is not None,
        metric.name,
        stats.resolves(len(metric.x), max_drop) if budget and max_drop is not None else None,
        stats.images_needed(max_drop) if budget and max_drop is not None else None,
        refs.record() if refs is not None else {},
    )


def _with_a_way_forward(error: ParityError, config: ConversionConfig) -> ParityError:
    """A refused INT8 file, with what the user can do about it: search for the units to keep in
    FP32, equalize first, or accept the file below the bar (recorded)."""
    if config.precision != "int8" or config.max_drop is not None:
        return error
    tries = ["{max_drop=0.25} (the units INT8 hurts stay FP32)"]
    if config.equalize == "off":
        tries.append("{equalize=auto}")
    return ParityError(
        f"{error}; try {' or '.join(tries)}, or accept it with {{min_cosine}} (recorded)",
        param=("max_drop", "equalize", "min_cosine"),
    )
