"""What a hostile first reading of INT8 judging (issue 34) found, each pinned on the real digits: the
evaluation set kept apart from calibration by content, images that do not decode said, calibration
using every image when an evaluation set judges, FP16 refusing INT8-only options, and what `inspect`
shows without --json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import pytest
from helpers import write_class_folders
from onnx import numpy_helper
from typer.testing import CliRunner

from resnest_deploy.cli.app import app
from resnest_deploy.data import Transform, digits
from resnest_deploy.errors import ArtifactError
from resnest_deploy.inspection import describe
from resnest_deploy.models import get_spec
from resnest_deploy.precision import CalibrationOptions, calibration, calibration_for

DIGITS = Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict[str, Path]:
    """Class folders of real digits: 100 train digits to calibrate on, 60 test digits to judge on."""
    root = tmp_path_factory.mktemp("review")
    train, train_labels = digits("train")
    test, test_labels = digits("test")
    return {
        "calib": write_class_folders(root / "calib", train[:100], train_labels[:100]),
        "val": write_class_folders(root / "val", test[:60], test_labels[:60]),
    }


def _val_copy(labelled: dict[str, Path], tmp_path: Path) -> Path:
    val = tmp_path / "val"
    shutil.copytree(labelled["val"], val)
    return val


def test_inspect_counts_only_8_bit_weights_and_names_initializer_dtypes_in_words(digits_converted):
    path = digits_converted["int8-cpu"]
    model = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq_read = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    eight_bit = {n for n in dq_read if n in inits and inits[n].dtype.kind in "iu" and inits[n].itemsize == 1}
    assert any(inits[n].dtype.name == "int32" for n in dq_read if n in inits)  # the CPU file's biases
    weights = describe(path)["quantized"]["weights"]
    assert set(weights) == eight_bit and eight_bit
    r = CliRunner().invoke(app, ["inspect", str(path)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert f"{len(eight_bit)} int8 weights" in r.output
    line = next(x for x in r.output.splitlines() if "weights stored" in x)
    assert "{" not in line and "'" not in line and " float32" in line, line


def test_arguments_read_as_placeholders_in_usage_lines_not_as_unfilled_templates():
    lines = (("equalize", "[OPTIONS] SRC"), ("check", "ARTIFACTS..."), ("eval", "[ARTIFACTS]..."))
    for command, usage in lines:
        r = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert r.exit_code == 0 and usage in r.output, r.output
        assert "{" not in r.output.split("Usage:", 1)[1].splitlines()[0]


def test_an_eval_dir_that_is_a_file_is_called_a_file_not_missing(digits_onnx, tmp_path):
    r = CliRunner().invoke(
        app,
        ["quantize", "--onnx", str(digits_onnx), "-p", "int8", "--eval-dir", str(digits_onnx)],
        terminal_width=300,
    )
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "is a file, not a folder" in text and "not found" not in text, text


def test_equalize_counts_groups_in_words_and_refuses_an_equalized_file(digits_onnx, tmp_path):
    once = tmp_path / "d.equalized.onnx"
    r = CliRunner().invoke(app, ["equalize", str(digits_onnx), "-o", str(once)], terminal_width=300)
    assert r.exit_code == 0, r.output
    assert "1 with branches" in r.output and "10 pairs" in r.output and "1 branches" not in r.output
    r = CliRunner().invoke(app, ["equalize", str(once)], terminal_width=300)
    assert r.exit_code == 1 and "already equalized" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.equalized.onnx", "d.equalized.onnx.json"]


def test_an_evaluation_set_holding_a_copy_or_a_hard_link_of_a_calibration_image_is_refused(
    digits_onnx, labelled, tmp_path
):
    val = _val_copy(labelled, tmp_path)
    calibrated = sorted((labelled["calib"] / "3").iterdir())[0]
    shutil.copyfile(calibrated, val / "3" / "copied.png")  # same bytes, another file
    os.link(sorted((labelled["calib"] / "7").iterdir())[0], val / "7" / "linked.png")  # same file
    options = CalibrationOptions(labelled["calib"], None, 256, eval_dir=val)
    with pytest.raises(ArtifactError, match="shares 2 image") as refused:
        calibration_for(digits_onnx, options, use_cache=False)
    assert f"{val / '3' / 'copied.png'} has the bytes of {calibrated}" in str(refused.value)
    for _ in range(2):  # the images written to the cache, then read from it: checked alike
        with pytest.raises(ArtifactError, match="shares 2 image"):
            calibration_for(digits_onnx, options)
    (val / "3" / "copied.png").unlink()
    (val / "7" / "linked.png").unlink()
    assert calibration_for(digits_onnx, options, use_cache=False).evaluation is not None


def test_evaluation_images_that_do_not_decode_are_counted_in_one_warning_and_none_decoding_is_refused(
    labelled, tmp_path
):
    val = _val_copy(labelled, tmp_path)
    (val / "3" / "broken.png").write_bytes(b"not a png")
    (val / "5" / "empty.png").write_bytes(b"")
    for use_cache in (False, True, True):  # decoded, written to the cache, read from it: said each time
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            evaluation, _ = calibration.from_eval_dir(val, DIGITS, 10, use_cache)
        assert len(evaluation.x) == 60
        (line,) = [str(w.message) for w in said]
        assert line.startswith("skipped 2 of the 62 evaluation images that do not decode (e.g. ")
        assert "broken.png" in line and "judged on the other 60" in line

    nothing = tmp_path / "nothing"
    for label in ("1", "2"):
        (nothing / label).mkdir(parents=True)
        (nothing / label / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ArtifactError, match=r"none of the 2 images under .* decode \(e\.g\. .*x\.png"):
        calibration.from_eval_dir(nothing, DIGITS, 10, use_cache=False)


def _quantize(*args: str) -> subprocess.CompletedProcess[str]:
    """The console script itself: a library warning is printed as it prints it."""
    return subprocess.run(
        [sys.executable, "-m", "resnest_deploy.cli", "quantize", "-p", "int8", "--target", "cpu", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_with_an_evaluation_set_every_calibration_image_calibrates_and_the_sidecar_says_how_many(
    digits_onnx, labelled, tmp_path
):
    val = _val_copy(labelled, tmp_path)
    (val / "4" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "judged.onnx"
    calib = ["--onnx", str(digits_onnx), "--calib-dir", str(labelled["calib"])]
    run = _quantize(*calib, "--eval-dir", str(val), "-o", str(out))
    assert run.returncode == 0, run.stderr
    warned = [line for line in run.stderr.splitlines() if "warning" in line]
    assert len(warned) == 1 and "skipped 1 of the 61 evaluation images" in warned[0], run.stderr
    assert "calibrating INT8 (max) on 100 inputs" in run.stdout + run.stderr
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["conversion"]["calibration"]["used"] == 100  # not 80: nothing is held out
    assert meta["conversion"]["calibration"]["held_out"] == 0
    assert meta["conversion"]["evaluation"]["count"] == 60
    assert meta["parity"]["inputs"] == "60 evaluation images"

    plain = tmp_path / "held_out.onnx"  # without an evaluation set, a fifth is still held out to judge
    run = _quantize(*calib, "-o", str(plain))
    assert run.returncode == 0, run.stderr
    meta = json.loads(Path(f"{plain}.json").read_text())
    section = meta["conversion"]["calibration"]
    assert (section["used"], section["held_out"]) == (80, 20)
    assert meta["conversion"]["evaluation"]["count"] == 20


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--max-drop", "0.5"], "--max-drop searches the units INT8 hurts"),
        (["--calibration", "entropy"], "--calibration entropy calibrates INT8"),
        (["--calibration", "auto"], "--calibration auto calibrates INT8"),
        (["--eval-dir", "val"], "--eval-dir judges INT8 conversions"),
    ],
)
def test_fp16_refuses_what_only_int8_uses_in_one_line_naming_the_flag(digits_onnx, tmp_path, option, said):
    out = tmp_path / "h.onnx"
    r = CliRunner().invoke(
        app,
        ["quantize", "--onnx", str(digits_onnx), "-p", "fp16", *option, "-o", str(out)],
        terminal_width=300,
    )
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert line.startswith("error: ") and said in line and "--precision int8" in line, line
    assert not out.exists()


def test_the_library_refuses_the_same_for_fp16_and_keeps_them_for_int8():
    from resnest_deploy.errors import ConversionError
    from resnest_deploy.pipeline import PipelineConfig
    from resnest_deploy.precision import ConversionConfig

    with pytest.raises(ConversionError, match="max_drop searches"):
        ConversionConfig("fp16", max_drop=0.25)
    with pytest.raises(ConversionError, match="method percentile calibrates INT8"):
        ConversionConfig("fp16", method="percentile")
    assert ConversionConfig("int8", method="percentile", max_drop=0.25).max_drop == 0.25
    with pytest.raises(ConversionError, match="eval_dir judges INT8"):
        PipelineConfig(
            "resnest14d_digits", precision="fp16", calibration=CalibrationOptions(eval_dir=Path("v"))
        )
    PipelineConfig("resnest14d_digits", precision="int8", calibration=CalibrationOptions(eval_dir=Path("v")))
    int8 = PipelineConfig("resnest14d_digits", precision="int8", equalize="on")
    assert (str(int8.method), int8.max_drop) == ("auto", 0.5)  # the pipeline's defaults for INT8
    with pytest.raises(ConversionError, match="max_drop and equalize apply only to INT8"):
        PipelineConfig("resnest14d_digits", precision="fp16", max_drop=1.0, equalize="on")
    with pytest.raises(ConversionError, match="method applies only to INT8"):
        PipelineConfig("resnest14d_digits", precision="fp32", method="entropy")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["-p", "fp16", "--max-drop", "1"], "--max-drop applies only to INT8"),
        (["-p", "fp32", "--calibration", "entropy", "--equalize", "on"], "--calibration and --equalize"),
    ],
)
def test_pipeline_refuses_int8_flags_for_fp16_and_fp32_before_any_work(tmp_path, flags, named):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["pipeline", "--arch", "resnest14d_digits", *flags, "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert named in r.output and "--precision int8" in r.output
    assert not out.exists()


def test_inspect_text_says_what_the_file_was_judged_on_the_drop_what_was_equalized_and_what_stayed_fp32(
    digits_onnx, labelled, tmp_path
):
    out = tmp_path / "judged.onnx"
    args = [
        "--onnx",
        str(digits_onnx),
        "--calib-dir",
        str(labelled["calib"]),
        "--eval-dir",
        str(labelled["val"]),
    ]
    r = CliRunner().invoke(
        app,
        [
            "quantize",
            "-p",
            "int8",
            "--target",
            "cpu",
            *args,
            "--max-drop",
            "0.5",
            "--equalize",
            "on",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    shown = CliRunner().invoke(app, ["inspect", str(out)], terminal_width=400)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "calibration: max on 100 images" in text
    assert f"on 60 evaluation images in {labelled['val'].resolve()} (labelled)" in text
    assert "0 points (95% CI -6.02 to 6.02, 60 images, Tango score)" in text
    assert "60 images cannot resolve the 0.5-point budget; 400 would" in text
    assert "kept in FP32 by name (where a search starts: the radix softmax)" in text
    assert "INT8 search: units kept in FP32: none" in text
    assert "(10 pairs, 1 with branches, 4 split attentions, 3 residual streams)" in text
    assert "conv1.0, conv1.3" in text


def test_pipeline_with_an_evaluation_set_calibrates_on_every_image_and_checks_on_the_set(labelled, tmp_path):
    from resnest_deploy.pipeline import PipelineConfig, pipeline

    options = CalibrationOptions(labelled["calib"], None, 256, eval_dir=labelled["val"])
    config = PipelineConfig(
        "resnest14d_digits",
        precision="int8",
        target="cpu",
        calibration=options,
        method="max",
        out_dir=tmp_path,
        build=False,
        batches=(1,),
        iterations=2,
    )
    report = pipeline(config)
    assert report["status"] == "ok", report["status"]
    checked = report["steps"]["check"]["inputs"]
    assert checked["kind"] == "eval_dir" and checked["count"] == 60  # not the (now empty) held-out part
    meta = json.loads((tmp_path / "resnest14d_digits.int8-cpu.onnx.json").read_text())
    assert (
        meta["conversion"]["calibration"]["used"] == 100 and meta["conversion"]["evaluation"]["count"] == 60
    )
    md = (tmp_path / "report.md").read_text()
    assert "## INT8 search for the CPU: " in md and "for TensorRT" not in md  # the file's own target


def test_inspect_says_why_an_unsearched_int8_file_keeps_the_gates_and_classifier(digits_onnx, tmp_path):
    out = tmp_path / "plain.onnx"
    r = CliRunner().invoke(
        app, ["quantize", "--onnx", str(digits_onnx), "-p", "int8", "--target", "cpu", "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    shown = CliRunner().invoke(app, ["inspect", str(out)], terminal_width=400)
    text = " ".join(shown.output.split())
    assert "kept in FP32 by name (the default: the attention gates and the classifier)" in text
    assert "INT8 search" not in text  # nothing was searched
