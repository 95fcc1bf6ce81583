"""INT8 judged the way users judge it (issue 34): labels of class folders kept, a labelled evaluation set
(``--eval-dir``) kept apart from calibration, the drop with its 95% interval, a search whose own gate
never overrules it, and FP32 references computed once per (source, set). Real digits throughout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import write_class_folders
from PIL import Image
from typer.testing import CliRunner

from resnest_deploy.cli.app import app
from resnest_deploy.compare import TOLERANCES, Tolerance
from resnest_deploy.data import Transform, digits, digits_batch
from resnest_deploy.errors import ArtifactError
from resnest_deploy.models import get_spec
from resnest_deploy.precision import (
    CONVERSION_SCHEMA,
    CalibrationOptions,
    ConversionConfig,
    ConversionReport,
    RunOptions,
    calibration,
    calibration_for,
    convert,
)
from resnest_deploy.precision.fixtures import quantize_every_conv
from resnest_deploy.precision.outliers import SPECS, from_spec
from resnest_deploy.precision.search import ACCEPTANCE, Metric, SearchError, search
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

DIGITS = Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The digits as users hand them over: class folders; train to calibrate on, the 899 held-out
    test digits to judge on, and 320 train digits (256 to calibrate, 64 held out)."""
    root = tmp_path_factory.mktemp("labelled")
    train, train_labels = digits("train")
    test, test_labels = digits("test")
    return {
        "train": write_class_folders(root / "train", train, train_labels),
        "small": write_class_folders(root / "small", train[:320], train_labels[:320]),
        "val": write_class_folders(root / "val", test, test_labels),
    }


def _quantize(args: list[str]) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["quantize", "-p", "int8", "--target", "cpu", *args])
    return r.exit_code, r.stdout, r.output


def test_class_folders_label_the_held_out_part_and_plain_folders_stay_unlabelled(folders, tmp_path):
    calib = calibration.from_images(folders["small"], DIGITS, 256, use_cache=False, num_classes=10)
    assert len(calib.holdout) == 64 and calib.holdout_labels is not None
    # the labels are the folders' (checked against the images: the same digits, decoded the same way)
    train, labels = digits("train")
    chosen = {digits_batch(train[i : i + 1], DIGITS).tobytes(): labels[i] for i in range(320)}
    for x, y in zip(calib.holdout, calib.holdout_labels, strict=True):
        assert chosen[x[None].tobytes()] == y
    judged = calib.judged_on()
    assert judged.labelled and judged.source["kind"] == "held-out images"

    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list((folders["small"] / "3").iterdir())[:20]:
        (flat / p.name).write_bytes(p.read_bytes())
    assert calibration.from_images(flat, DIGITS, 10, use_cache=False).holdout_labels is None

    (bad := tmp_path / "bad" / "12").mkdir(parents=True)
    Image.fromarray(train[0]).save(bad / "a.png")
    (tmp_path / "bad" / "3").mkdir()
    Image.fromarray(train[1]).save(tmp_path / "bad" / "3" / "b.png")
    with pytest.raises(ArtifactError, match="label 12, but the model has 10 classes"):
        calibration.from_images(tmp_path / "bad", DIGITS, 1, use_cache=False, num_classes=10)


def test_labels_survive_the_calibration_cache(folders):
    first = calibration.from_images(folders["small"], DIGITS, 256, num_classes=10)
    again = calibration.from_images(folders["small"], DIGITS, 256, num_classes=10)
    assert "cache" in again.source and again.holdout_labels is not None
    assert np.array_equal(first.holdout_labels, again.holdout_labels)
    assert again.files == first.files and len(again.files) == 256


def test_an_evaluation_set_that_shares_images_with_calibration_is_refused(digits_onnx, folders):
    options = CalibrationOptions(folders["small"], None, 256, eval_dir=folders["small"])
    with pytest.raises(ArtifactError, match="shares 256 image"):
        calibration_for(digits_onnx, options)


def test_labelled_calib_dir_judges_top1_and_says_64_images_cannot_resolve_the_budget(
    digits_onnx, folders, tmp_path
):
    out = tmp_path / "d.onnx"
    code, _, output = _quantize(
        [
            "--onnx",
            str(digits_onnx),
            "--calib-dir",
            str(folders["small"]),
            "--max-drop",
            "0.25",
            "-o",
            str(out),
        ]
    )
    assert code == 0, output
    assert "INT8 search (top-1):" in output and "agreement with FP32" not in output
    note = (
        "note: 64 held-out images cannot resolve a 0.25-point budget (one image is 1.56 points); "
        "give --eval-dir with at least 800 labelled images"
    )
    assert output.count("cannot resolve") == 1 and note in " ".join(output.split())
    assert output.index("cannot resolve") < output.index("sensitivity:")  # before any of the work
    report = ConversionReport.from_sidecar(out)
    assert report.evaluation is not None and report.evaluation.count == 64 and report.evaluation.labelled
    assert report.evaluation.resolves is False and report.evaluation.images_needed == 800
    assert report.drop is not None and report.drop.n == 64 and report.acceptance == ACCEPTANCE


def test_eval_dir_reports_the_drop_with_its_interval_and_a_rerun_reads_the_references(
    digits_onnx, folders, tmp_path
):
    args = [
        "--onnx",
        str(digits_onnx),
        "--calib-dir",
        str(folders["train"]),
        "--eval-dir",
        str(folders["val"]),
    ]
    code, stdout, output = _quantize([*args, "--max-drop", "0.5", "-o", str(tmp_path / "a.onnx"), "--json"])
    assert code == 0, output
    meta = json.loads(stdout)
    section = meta["conversion"]
    assert section["schema"] == CONVERSION_SCHEMA == 3
    assert section["evaluation"]["count"] == 899 and section["evaluation"]["labelled"] is True
    assert section["evaluation"]["kind"] == "eval_dir" and section["evaluation"]["resolves"] is True
    assert section["drop"]["n"] == 899 and section["drop"]["method"] == "Tango score"
    assert section["drop"]["low"] <= section["drop"]["points"] <= section["drop"]["high"]
    assert section["acceptance"]["rule"] == ACCEPTANCE and meta["parity"]["metrics"]["samples"] == 899
    first = section["evaluation"]["references"]
    assert first["from"] in ("computed", "cache")

    code, _, output = _quantize([*args, "--max-drop", "0.5", "-o", str(tmp_path / "b.onnx")])
    assert code == 0, output
    report = ConversionReport.from_sidecar(tmp_path / "b.onnx")
    assert report.evaluation is not None and report.evaluation.references["from"] == "cache"
    assert report.drop is not None and report.drop.n == 899
    text = " ".join(output.split())
    assert "INT8 top-1 drop against FP32 on 899 evaluation images" in text and "95% CI" in text
    assert "cannot resolve" not in text  # 899 images resolve 0.5 points (400 needed)


def test_a_damaged_reference_cache_entry_is_recomputed_not_trusted(digits_onnx, tmp_path):
    from resnest_deploy.precision.calibration import EvaluationSet
    from resnest_deploy.precision.parity import REFERENCES_CACHE, references

    x = digits_batch(digits("test")[0][:32], DIGITS)
    evaluation = EvaluationSet(x)
    first = references(digits_onnx, "f" * 64, x, evaluation)
    hit = references(digits_onnx, "f" * 64, x, evaluation)
    assert hit.cached and np.array_equal(hit.logits, first.logits)
    for entry in REFERENCES_CACHE.root.glob("*.npz"):
        entry.write_bytes(entry.read_bytes()[:-8] + b"\0" * 8)
    again = references(digits_onnx, "f" * 64, x, evaluation)
    assert not again.cached and np.array_equal(again.logits, first.logits)


@pytest.fixture(scope="module")
def outlier(tmp_path_factory, digits_onnx):
    """``deep-256x``: outliers in layer3's and layer4's first convolutions. One unit in FP32 brings
    top-1 within 0.25 points, but not the logits within the parity gate (cosine about 0.92 < 0.98):
    the case where the search met the budget and the gate then refused its file."""
    folder = tmp_path_factory.mktemp("outlier")
    spec = next(s for s in SPECS if s.name == "deep-256x")
    model, _ = from_spec(onnx.load(digits_onnx), spec)
    src = folder / "outlier.onnx"
    onnx.save(model, src)
    calib = calibration.from_digits(DIGITS)
    plain = onnx.load(quantize_every_conv(src, folder / "plain.onnx", "cpu", calib).path)
    x, labels = digits_batch(digits("test")[0], DIGITS), digits("test")[1]
    with OnnxRuntimeRunner(src) as runner:
        reference = runner.infer_batched(x, 64)
    return {"src": src, "plain": plain, "x": x, "labels": labels, "reference": reference, "calib": calib}


def _metric(o, bar: Tolerance | None) -> Metric:
    return Metric(o["x"], o["labels"], o["reference"], False, onnx.load(o["src"]), bar)


def test_the_budget_alone_accepts_a_file_the_gate_refuses_and_the_search_goes_on_until_both_hold(outlier):
    gate = TOLERANCES["int8"]
    alone, budget_only = search(outlier["plain"], _metric(outlier, None), 0.25)
    assert _metric(outlier, gate).judge(alone).problems  # what the old rule wrote, then refused
    model, found = search(outlier["plain"], _metric(outlier, gate), 0.25)
    judged = _metric(outlier, gate).judge(model)
    assert not judged.problems and found.fp32_metric - judged.value <= 0.25
    assert len(found.kept_fp32) > len(budget_only.kept_fp32)
    assert found.drop is not None and found.drop.n == 899 and found.drop.points <= 0.25
    assert found.acceptance == ACCEPTANCE


def test_a_strict_user_bar_is_met_by_the_search_or_refused_once_with_the_best_reached(outlier, tmp_path):
    """The user's bar is the gate: convert either writes a file that passes it and the budget (its
    sidecar says by which rule) or refuses once, from the search, writing nothing."""
    bar = TOLERANCES["int8"].with_bars(cosine=0.9995)
    config = ConversionConfig("int8", "cpu", keep_fp32_nodes=(), tolerance=bar, max_drop=0.25)
    out = tmp_path / "searched.onnx"
    try:
        report = convert(outlier["src"], out, config, outlier["calib"], RunOptions(use_cache=False))
    except SearchError as e:
        assert "parity gate" in str(e) or "points allowed" in str(e)
        assert "nothing written" in str(e) and not out.exists()
        return
    assert report.parity.cosine >= 0.9995 and report.search is not None
    assert report.search.fp32_metric - report.search.metric <= 0.25


def test_convert_writes_what_the_search_accepted_where_the_budget_alone_was_refused_by_parity(
    outlier, tmp_path
):
    config = ConversionConfig("int8", "cpu", keep_fp32_nodes=(), max_drop=0.25)
    out = tmp_path / "searched.onnx"
    report = convert(outlier["src"], out, config, outlier["calib"], RunOptions(use_cache=False))
    found = report.search
    assert found is not None
    trapped = [
        t
        for t in found.trials
        if "kept_fp32" in t and found.fp32_metric - t["metric"] <= 0.25 and not t["parity_ok"]
    ]
    assert trapped  # a step the budget alone accepted and the gate refused: the search went on
    assert report.parity.cosine >= TOLERANCES["int8"].cosine
    assert report.drop is not None and report.drop.points <= 0.25 and report.acceptance == ACCEPTANCE
    assert report.evaluation is not None and report.evaluation.count == 899 and report.evaluation.labelled
    again = ConversionReport.from_sidecar(out)
    assert again.drop == report.drop and again.evaluation == report.evaluation
    assert again.search is not None and again.search.drop == found.drop


def test_an_older_sidecar_without_the_judging_fields_still_reads(digits_converted):
    report = ConversionReport.from_sidecar(digits_converted["int8-cpu"])
    meta = dict(report.metadata)
    section = {k: v for k, v in meta["conversion"].items() if k not in ("evaluation", "drop", "acceptance")}
    old = ConversionReport.from_metadata({**meta, "conversion": {**section, "schema": 2}}, report.path)
    assert old.evaluation is None and old.drop is None and old.acceptance is None


def test_quantize_and_pipeline_take_an_evaluation_set_in_the_calibration_group():
    for command in ("quantize", "pipeline"):
        r = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert r.exit_code == 0 and "--eval-dir" in r.output, command
    r = CliRunner().invoke(app, ["quantize", "--onnx", "m.onnx", "-p", "fp16", "--eval-dir", "val"])
    assert r.exit_code == 2 and "judges INT8" in r.output


def test_a_residual_outlier_is_repaired_by_keeping_its_blocks_add_in_fp32(digits_onnx, tmp_path):
    """``residual1-32x``: the outlier is in layer1's block output, where conv3 and the shortcut meet at
    an ``Add`` whose Q/DQ no convolution's unit covers (21 of 22 such units in FP32 still reached only
    97.44 against 99.44). Its own unit, ``layer1.0 residual``, puts the Add on float inputs: the file
    written is within 0.25 points on the 899 held-out digits and passes the parity gate."""
    from resnest_deploy.precision.qdq import quantized_inputs

    spec = next(s for s in SPECS if s.name == "residual1-32x")
    src = tmp_path / "residual1.onnx"
    onnx.save(from_spec(onnx.load(digits_onnx), spec)[0], src)
    out = tmp_path / "searched.onnx"
    calib = calibration.from_digits(DIGITS)
    report = convert(
        src, out, ConversionConfig("int8", "cpu", max_drop=0.25), calib, RunOptions(use_cache=False)
    )
    found = report.search
    assert found is not None and report.evaluation is not None and report.evaluation.count == 899
    assert {f"layer{i}.0 residual" for i in range(1, 5)} <= {s.unit for s in found.ranking}
    assert "layer1.0 residual" in found.kept_fp32 and len(found.kept_fp32) <= 3, found.kept_fp32
    assert found.fp32_metric - found.int8_metric >= 1.0  # plain INT8 is hard here
    assert report.drop is not None and report.drop.points <= 0.25 and report.drop.n == 899
    assert report.parity.cosine >= TOLERANCES["int8"].cosine
    model = onnx.load(out)
    assert quantized_inputs(model, "/layer1/layer1.0/Add") == []  # FP32 in
    assert quantized_inputs(model, "/layer2/layer2.0/Add")  # the other blocks' Adds stay INT8


def test_equalized_residual_streams_leave_the_search_nothing_to_keep_in_fp32(digits_onnx, tmp_path):
    """``residuals-32x`` (outliers in layer2's and layer3's block outputs): with equalization on, each
    stage's stream is balanced across its conv3, its shortcut and the next stage's readers, so the
    outliers are gone before calibration: the search keeps no unit in FP32 and the file is within
    0.25 points on the 899 held-out digits, every compute layer INT8."""
    spec = next(s for s in SPECS if s.name == "residuals-32x")
    src = tmp_path / "residuals.onnx"
    onnx.save(from_spec(onnx.load(digits_onnx), spec)[0], src)
    out = tmp_path / "searched.onnx"
    config = ConversionConfig("int8", "cpu", max_drop=0.25, equalize="on")
    report = convert(src, out, config, calibration.from_digits(DIGITS), RunOptions(use_cache=False))
    assert report.search is not None and report.search.kept_fp32 == []
    assert report.drop is not None and report.drop.points <= 0.25 and report.drop.n == 899
    record = json.loads(Path(report.sidecar).read_text())["conversion"]["equalization"]
    assert record["kinds"]["residual stream"] == 3, record
