"""What a hostile first reading of INT8 judging (issue 34) found, each pinned on the real digits: the
evaluation set kept apart from calibration by content, images that do not decode said, calibration
using every image when an evaluation set judges, FP16 refusing INT8-only options, and what `inspect`
shows without --json."""

from __future__ import annotations

import onnx
from onnx import numpy_helper
from typer.testing import CliRunner

from resnest_deploy.cli.app import app
from resnest_deploy.inspection import describe


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
