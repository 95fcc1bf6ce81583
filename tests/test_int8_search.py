"""INT8 where it is hard: a model whose INT8 loses accuracy, its planted sensitive unit found first,
the fewest units kept in FP32 to meet a budget, calibration methods compared, and a refusal when no
choice of units can meet the budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from resnest_deploy import metadata
from resnest_deploy.cli.app import app
from resnest_deploy.data import Transform, digits, digits_batch
from resnest_deploy.models import get_spec
from resnest_deploy.precision import (
    ConversionConfig,
    ConversionReport,
    RunOptions,
    Timing,
    calibration,
    convert,
    int8,
)
from resnest_deploy.precision.fixtures import outlier_digits, quantize_every_conv
from resnest_deploy.precision.search import Metric, SearchError, search, sensitivity, units, without_qdq
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

#: the fixture's outlier channel is the stem's first batch norm's output, read by this convolution
PLANTED = "/conv1/conv1.3/Conv"
TRANSFORM = Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)


@pytest.fixture(scope="module")
def hard(tmp_path_factory, digits_onnx):
    folder = tmp_path_factory.mktemp("hard")
    src = outlier_digits(folder / "outlier.onnx")
    calib = calibration.from_digits(TRANSFORM)
    x, labels = digits("test")
    x = digits_batch(x, TRANSFORM)
    with OnnxRuntimeRunner(src) as runner:
        reference = runner.infer_batched(x, 64)
    plain = {
        target: onnx.load(quantize_every_conv(src, folder / f"plain.{target}.onnx", target, calib).path)
        for target in ("cpu", "tensorrt")
    }
    return {
        "src": src,
        "calib": calib,
        "x": x,
        "labels": labels,
        "reference": reference,
        "plain": plain,
        "folder": folder,
    }


def metric_for(hard, target: str) -> Metric:
    return Metric(hard["x"], hard["labels"], hard["reference"], target == "tensorrt", onnx.load(hard["src"]))


def test_the_outlier_model_computes_what_the_trained_one_does_but_plain_int8_loses_accuracy(
    hard, digits_onnx
):
    with OnnxRuntimeRunner(digits_onnx) as runner:
        original = runner.infer_batched(hard["x"], 64)
    np.testing.assert_allclose(hard["reference"], original, rtol=1e-3, atol=1e-3)  # FP32: the same net
    fp32 = metric_for(hard, "cpu").fp32
    assert fp32 == pytest.approx(99.44, abs=0.01)
    for target in ("cpu", "tensorrt"):
        assert fp32 - metric_for(hard, target)(hard["plain"][target]) >= 1.0, target  # INT8 hurts


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_the_planted_sensitive_unit_is_ranked_first(hard, target):
    _, ranked = sensitivity(hard["plain"][target], metric_for(hard, target))
    assert ranked[0].unit == "stem" and ranked[0].gain > 1.0
    assert ranked[0].gain > 5 * max(abs(s.gain) for s in ranked[1:])
    assert len(ranked) == len(units(hard["plain"][target])) >= 20  # every block's units, stem, classifier


def test_every_unit_back_in_fp32_is_the_fp32_model_again(hard):
    model = hard["plain"]["cpu"]
    restored = without_qdq(model, list(units(model)), onnx.load(hard["src"]))
    with OnnxRuntimeRunner(restored.SerializeToString()) as runner:
        got = runner.infer_batched(hard["x"][:64], 64)
    ref = hard["reference"][:64]
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.998 and np.mean(cos) > 0.9999  # only the Q/DQ outside every unit remain
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 63 / 64


def test_a_budget_is_met_with_the_fewest_units_in_fp32_and_recorded_for_inspect(hard, tmp_path):
    out = tmp_path / "searched.onnx"
    config = ConversionConfig("int8", "cpu", "auto", keep_fp32_nodes=(), max_drop=0.25)
    report = convert(hard["src"], out, config, hard["calib"], RunOptions(use_cache=False))
    found = report.search
    assert found is not None and found.kept_fp32 == ["stem"] and found.fp32_metric - found.metric <= 0.25
    assert found.fp32_metric - found.int8_metric >= 1.0
    tried = report.tournament
    assert tried is not None and [r.method for r in tried.results] == list(int8.METHODS)
    assert tried.chosen in int8.METHODS
    assert found.kept_fp32_layers == [PLANTED]
    assert found.layers_fp32 == {"plain": 0, "chosen": 1, "total": 28}
    recorded = ConversionReport.from_sidecar(out)  # what the file says about itself, typed again
    assert recorded.search == found and recorded.tournament == tried and recorded.cost == report.cost
    cost = report.cost  # what keeping it costs here, both CPU runtimes timed
    assert cost is not None and cost.batch == 1 and cost.cpu_flags == metadata.cpu_flags()
    for backend in ("onnxruntime-cpu", "openvino-cpu-f32"):
        timed = cost.backends[backend]
        assert isinstance(timed, Timing) and timed.plain_ms > 0 and timed.searched_ms > 0, cost
    shown = CliRunner().invoke(app, ["inspect", str(out)])
    assert f"INT8 search: units kept in FP32: stem (1 layer: {PLANTED})" in shown.output
    assert "latency at batch 1, plain -> searched: onnxruntime-cpu " in shown.output


def test_within_the_kept_unit_only_the_planted_layer_stays_fp32_for_tensorrt_too(hard):
    """The stem has three convolutions; only the one reading the outlier channel needs FP32, and
    every FP32 layer costs time: the others go back to INT8 while the budget holds."""
    model, found = search(hard["plain"]["tensorrt"], metric_for(hard, "tensorrt"), max_drop=0.25)
    assert found.kept_fp32 == ["stem"] and found.kept_fp32_layers == [PLANTED]
    back = [t for t in found.trials if "int8_again" in t]
    assert [t["int8_again"] for t in back if not t["kept"]] == [PLANTED] and len(back) == 3
    assert found.fp32_metric - metric_for(hard, "tensorrt")(model) <= 0.25


def test_a_budget_no_choice_of_units_can_meet_is_refused_with_what_was_reached(hard, tmp_path):
    """A loss planted in every unit (every activation's Q/DQ saturated): the search leaves at least
    one unit in INT8, and whichever it is still loses: refused, with the best reached, and nothing
    written."""
    model = onnx.load(hard["src"].with_name("plain.cpu.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        if getattr(producers.get(dq.input[0]), "op_type", None) == "QuantizeLinear":  # an activation
            scale = inits[dq.input[1]]
            scale.CopyFrom(numpy_helper.from_array(np.asarray(1e-6, np.float32), scale.name))
    with pytest.raises(SearchError, match=r"units in FP32 reach only .* more than the 0\.5 points allowed"):
        search(model, metric_for(hard, "cpu"), max_drop=0.5)


def test_the_split_attention_arithmetic_is_in_its_gate_unit_and_comes_back_in_float(hard):
    """The radix split, its sum, pooling and the attention-weighted ``Mul`` read Q/DQ too: they are
    the gate's unit (an outlier of the splits reaches the gate through them), and putting it back in
    FP32 makes a valid graph (a ``Split`` has two outputs: one float copy of it, not two)."""
    plain = hard["plain"]["cpu"]
    gate = units(plain)["layer2.0 attention gate"]
    assert {"/layer2/layer2.0/conv2/Mul", "/layer2/layer2.0/conv2/fc1/Conv"} <= set(gate)
    assert any("/conv2/Split" in n for n in gate)
    assert not any(n.endswith("/conv2/conv/Conv") for n in gate)  # the split-attention conv: its own unit
    kept = without_qdq(plain, ["layer2.0 attention gate"], onnx.load(hard["src"]))
    onnx.checker.check_model(kept)
    names = [n.name for n in kept.graph.node]
    assert len(names) == len(set(names))
    assert np.isfinite(metric_for(hard, "cpu").logits(kept)).all()  # ONNX Runtime runs it


def test_a_searched_conversion_starts_with_the_gates_and_classifier_in_int8():
    """Unsearched, INT8 keeps the gates and the classifier in FP32; a search judges them like any
    other unit, so it starts from them in INT8 (only the radix softmax stays FP32)."""
    assert ConversionConfig("int8", "cpu").keep() == list(int8.KEEP_FP32_NODES)
    assert ConversionConfig("int8", "cpu", max_drop=0.25).keep() == [r"/rsoftmax/"]
    assert ConversionConfig("int8", "cpu", max_drop=0.25, keep_fp32_nodes=("^/fc/",)).keep() == ["^/fc/"]


def test_the_digits_model_keeps_everything_in_int8_and_the_cli_says_so(digits_onnx, tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "quantize",
            "--onnx",
            str(digits_onnx),
            "-p",
            "int8",
            "--target",
            "cpu",
            "--max-drop",
            "0.25",
            "-o",
            str(tmp_path / "d.onnx"),
            "--plot",
            str(tmp_path / "s.png"),
            "--no-cache",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    found = ConversionReport.from_metadata(json.loads(r.stdout), tmp_path / "d.onnx").search
    assert found is not None and found.kept_fp32 == [] and found.fp32_metric - found.metric <= 0.25
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_a_cpu_conversion_makes_the_same_graph_after_a_tensorrt_one_in_the_same_process(hard, tmp_path):
    """ModelOpt edits ONNX Runtime's operator registries process-wide; the pipeline converts for
    TensorRT and then for the CPU, and its CPU file kept 19 ReLUs and 10 more Q/DQ pairs."""
    from collections import Counter

    # the fixture converted for TensorRT (ModelOpt) before this
    after = quantize_every_conv(hard["src"], tmp_path / "after.onnx", "cpu", hard["calib"])
    ops = Counter(n.op_type for n in onnx.load(after.path).graph.node)
    assert ops == Counter(n.op_type for n in hard["plain"]["cpu"].graph.node) and ops["Relu"] == 0


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_a_kept_residual_unit_reads_float_and_hands_float_to_the_identity_shortcut(tmp_path, target):
    """FP32 in and out for a block's residual ``Add`` (resnest26d: two blocks per stage, so layer1.1
    adds layer1.0's output on an identity shortcut): kept, the Add reads no Q/DQ; the next Add reads
    its output in float, while layer1.1's conv1, still INT8, keeps the Q/DQ it reads."""
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model
    from resnest_deploy.precision.qdq import quantized_inputs

    calib = calibration.from_digits(TRANSFORM, count=64)
    model, info = load_model("resnest26d", None, num_classes=10)
    src = tmp_path / "r26.onnx"
    export_onnx(model, src, input_size=tuple(calib.calib.shape[2:]), weights=info)
    plain = onnx.load(quantize_every_conv(src, tmp_path / "plain.onnx", target, calib).path)
    found = units(plain)
    assert [u for u in found if u.endswith(" residual")] == [
        f"layer{s}.{b} residual" for s in range(1, 5) for b in range(2)
    ]
    assert found["layer1.0 residual"] == ["/layer1/layer1.0/Add"]
    block_out = "/layer1/layer1.0/act3/Relu_output_0"
    assert block_out in quantized_inputs(plain, "/layer1/layer1.1/Add")  # the identity, rounded
    kept = without_qdq(plain, ["layer1.0 residual"], onnx.load(src))
    onnx.checker.check_model(kept)
    assert quantized_inputs(kept, "/layer1/layer1.0/Add") == []
    assert block_out not in quantized_inputs(kept, "/layer1/layer1.1/Add")  # FP32 out
    assert quantized_inputs(kept, "/layer1/layer1.1/conv1/Conv") == [block_out]  # INT8 reader keeps it
    x = calib.holdout[:32]
    with OnnxRuntimeRunner(src) as runner:
        reference = runner.infer_batched(x, 32)
    logits = Metric(x, None, reference, target == "tensorrt").logits(kept)  # run as its target runs it
    assert logits.shape == reference.shape and np.isfinite(logits).all()
