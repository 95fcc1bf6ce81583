"""Cross-layer equalization: exact in FP32, balanced where it acts, hands off where it cannot be exact."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnest_deploy.errors import ArtifactError, ConversionError
from resnest_deploy.precision.equalize import EqualizedPair, equalize, relative_change, write_equalized


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def _digits_inputs() -> tuple[np.ndarray, np.ndarray]:
    from resnest_deploy import data
    from resnest_deploy.models import get_spec

    images, labels = data.digits("test")
    transform = data.Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)
    return data.digits_batch(images, transform), np.asarray(labels)


def _ranges(model: onnx.ModelProto, pair: EqualizedPair) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel weight ranges recomputed from the file: r1 over the first conv's output channels
    (the largest over radix branches), r2 over the readers' input channels (grouped: each group's rows),
    the largest over the readers."""
    nodes = {n.name: n for n in model.graph.node}
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    r1 = np.zeros(pair.channels)
    for first in pair.producers or (pair.first,):  # a residual stream: every conv added into it
        w1 = arrays[nodes[first].input[1]]
        r1 = np.maximum(
            r1, np.abs(w1).reshape(len(w1), -1).max(axis=1).reshape(-1, pair.channels).max(axis=0)
        )
    r2 = np.zeros(pair.channels)
    for second in pair.seconds:
        w2 = arrays[nodes[second].input[1]]
        groups = next((a.i for a in nodes[second].attribute if a.name == "group"), 1)
        per_in, per_out = w2.shape[1], w2.shape[0] // groups
        for c in range(pair.channels):
            rows = w2[c // per_in * per_out : (c // per_in + 1) * per_out, c % per_in]
            r2[c] = max(r2[c], np.abs(rows).max())
    return r1, r2


def test_digits_logits_unchanged_and_every_equalized_group_balanced(digits_onnx: Path) -> None:
    src = onnx.load(digits_onnx)
    out, report = equalize(src)
    x, labels = _digits_inputs()
    a, b = _logits(src, x), _logits(out, x)
    assert np.max(np.abs(a - b)) / np.max(np.abs(a)) < 1e-5
    assert (a.argmax(1) == b.argmax(1)).all() and (a.argmax(1) == labels).mean() > 0.99
    assert relative_change(src, out) < 1e-5
    # stem pairs, the stem's last conv into the first block's conv1 and shortcut, and in each block:
    # conv1 -> split-attention conv (grouped), the split attention -> fc1 and conv3, fc1 -> fc2; the
    # residual streams of layer1-3 (conv3 and the shortcut into the next stage's conv1 and shortcut)
    kinds = Counter(p.kind for p in report.equalized)
    assert kinds == {"pair": 10, "branches": 1, "split attention": 4, "residual stream": 3}
    # layer4's output goes to the classifier through a flatten: left alone, and said why
    assert [(s.first, s.reason) for s in report.skipped] == [
        ("/layer4/layer4.0/Add", "a block output goes to Reshape /Flatten, not only to convolutions and sums")
    ]
    stream = next(p for p in report.equalized if p.kind == "residual stream")
    assert stream.first == "/layer1/layer1.0/Add" and stream.producers == (
        "/layer1/layer1.0/downsample/downsample.1/Conv",
        "/layer1/layer1.0/conv3/Conv",
    )
    assert stream.seconds == ("/layer2/layer2.0/downsample/downsample.1/Conv", "/layer2/layer2.0/conv1/Conv")
    assert report.imbalance_before > 3 and report.imbalance_after < 1.001
    attention = next(p for p in report.equalized if p.first.endswith("layer3.0/conv2/conv/Conv"))
    assert attention.kind == "split attention" and attention.channels == 64
    assert [s.rsplit("/", 2)[-2] for s in attention.seconds] == ["fc1", "conv3"]
    for pair in report.equalized:
        r1, r2 = _ranges(out, pair)
        np.testing.assert_allclose(r1, r2, rtol=1e-3, err_msg=pair.first)
        before = _ranges(src, pair)
        assert np.max(np.maximum(*before) / np.minimum(*before)) == pytest.approx(pair.imbalance_before)
    assert (
        "18 convolution group(s) (10 pairs, 1 with branches, 4 split attentions, 3 residual streams)"
        in str(report)
    )


def test_resnest50_random_weights_logits_within_1e_5(tmp_path: Path) -> None:
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model("resnest50", "random")
    path = export_onnx(
        model, tmp_path / "r50.onnx", input_size=(64, 64), weights=info, parity_batches=(1,)
    ).path
    src = onnx.load(path)
    out, report = equalize(src)
    assert relative_change(src, out) < 1e-5
    x = np.random.default_rng(1).standard_normal((4, 3, 64, 64)).astype(np.float32)
    a, b = _logits(src, x), _logits(out, x)
    assert np.max(np.abs(a - b)) / np.max(np.abs(a)) < 1e-5
    # 16 bottlenecks: conv1 -> split-attention conv, the split attention, fc1 -> fc2; the stem's three;
    # a residual stream per stage but the last, each through its identity shortcuts (3, 4, 6 blocks):
    # every block's conv3 and the stage's shortcut, read by every later block's conv1 and the next stage
    kinds = Counter(p.kind for p in report.equalized)
    assert kinds == {"pair": 2 * 16 + 2, "branches": 1, "split attention": 16, "residual stream": 3}
    streams = [p for p in report.equalized if p.kind == "residual stream"]
    assert [(len(p.producers), len(p.seconds)) for p in streams] == [(4, 4), (5, 5), (7, 7)]
    assert [s.first for s in report.skipped] == [f"/layer4/layer4.{b}/Add" for b in range(3)]
    for p in streams:  # balanced across every producer and reader
        r1, r2 = _ranges(out, p)
        np.testing.assert_allclose(r1, r2, rtol=1e-3, err_msg=p.first)


@pytest.mark.parametrize("arch", ["resnest50_fast_1s1x64d", "resnest50_fast_4s2x40d"])
def test_radix_1_gates_and_radix_4_cardinality_2_attention_are_equalized_exactly(
    arch: str, tmp_path: Path
) -> None:
    """Radix 1 (a sigmoid gate, no Split) and radix 4 x cardinality 2 (grouped fc1, radix softmax across
    four branches): every block's attention is one group, and the logits do not move."""
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    model, info = load_model(arch, "random")
    path = export_onnx(
        model, tmp_path / "m.onnx", input_size=(64, 64), weights=info, parity_batches=(1,)
    ).path
    src = onnx.load(path)
    out, report = equalize(src)
    assert relative_change(src, out) < 1e-5
    assert Counter(p.kind for p in report.equalized)["split attention"] == 16
    assert {s.reason for s in report.skipped} == {  # only the last stage's stream, into the classifier
        "a block output goes to Reshape /Flatten, not only to convolutions and sums"
    }


def _conv(name: str, x: str, w: np.ndarray, group: int = 1) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    b = np.random.default_rng(len(name)).standard_normal(w.shape[0]).astype(np.float32)
    inits = [
        numpy_helper.from_array(w.astype(np.float32), f"{name}.w"),
        numpy_helper.from_array(b, f"{name}.b"),
    ]
    node = helper.make_node(
        "Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name, group=group, pads=[1, 1, 1, 1]
    )
    return node, inits


def _graph(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: list[str], chans: int = 4
) -> onnx.ModelProto:
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", chans, 8, 8])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    return helper.make_model(
        helper.make_graph(nodes, "g", [inp], outs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )


def test_a_conv_read_by_anything_but_convolutions_is_left_alone_and_branches_are_exact() -> None:
    rng = np.random.default_rng(0)
    w_a = rng.standard_normal((8, 4, 3, 3))
    w_a[2] *= 50  # an outlier channel
    a, ia = _conv("a", "x", w_a)
    b, ib = _conv("b", "ra", rng.standard_normal((6, 8, 3, 3)))
    gate = helper.make_node("Sigmoid", ["ra"], ["gate"], name="gate")  # a's activation also goes here
    d, id_ = _conv("d", "x", w_a.copy())
    e, ie = _conv("e", "pd", rng.standard_normal((8, 4, 3, 3)), group=2)  # grouped, after a pool
    f, if_ = _conv("f", "rd", rng.standard_normal((5, 8, 3, 3)))  # and a second reader of d's
    relus = [
        helper.make_node("Relu", ["a.y"], ["ra"], name="ra"),
        helper.make_node("Relu", ["d.y"], ["rd"], name="rd"),
    ]
    pool = helper.make_node("MaxPool", ["rd"], ["pd"], name="pd", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [a, d, *relus, pool, gate, b, e, f]
    model = _graph(nodes, ia + ib + id_ + ie + if_, ["b.y", "gate", "e.y", "f.y"])
    out, report = equalize(model)
    assert [(p.first, set(p.seconds), p.kind) for p in report.equalized] == [("d", {"e", "f"}, "branches")]
    assert report.skipped[0].first == "a" and "Sigmoid gate" in report.skipped[0].reason
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    for name in ("a.w", "a.b", "b.w"):
        np.testing.assert_array_equal(before[name], after[name])
    assert report.equalized[0].imbalance_before > 10 and report.equalized[0].imbalance_after < 1.0001
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    sess = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (model, out)
    ]
    ref, new = ([*s.run(["e.y", "f.y"], {"x": x})] for s in sess)
    for r, n in zip(ref, new, strict=True):
        assert np.max(np.abs(r - n)) / np.max(np.abs(r)) < 1e-5


def test_batch_norms_are_folded_first() -> None:
    rng = np.random.default_rng(3)
    a, ia = _conv("a", "x", rng.standard_normal((8, 4, 3, 3)))
    b, ib = _conv("b", "r", rng.standard_normal((5, 8, 3, 3)))
    stats = [rng.uniform(0.5, 2, 8), rng.standard_normal(8), rng.standard_normal(8), rng.uniform(0.5, 2, 8)]
    names = ["bn.g", "bn.b", "bn.m", "bn.v"]
    inits = [numpy_helper.from_array(s.astype(np.float32), n) for s, n in zip(stats, names, strict=True)]
    bn = helper.make_node("BatchNormalization", ["a.y", *names], ["bn.y"], name="bn")
    relu = helper.make_node("Relu", ["bn.y"], ["r"], name="r")
    model = _graph([a, bn, relu, b], ia + ib + inits, ["b.y"])
    out, report = equalize(model)
    assert report.folded_batch_norms == 1 and [p.first for p in report.equalized] == ["a"]
    assert report.equalized[0].imbalance_after < 1.0001
    assert not any(n.op_type == "BatchNormalization" for n in out.graph.node)
    assert relative_change(model, out) < 1e-5


def test_write_equalized_records_what_it_did_and_never_overwrites_its_input(
    digits_onnx: Path, tmp_path: Path
) -> None:
    from resnest_deploy.precision.source import read_source

    with pytest.raises(ArtifactError, match="overwrite the input"):
        write_equalized(digits_onnx, digits_onnx)
    dest = tmp_path / "digits.equalized.onnx"
    report = write_equalized(digits_onnx, dest)
    meta = read_source(dest)  # still an FP32 resnest-deploy export, with PyTorch's recorded outputs
    assert meta["arch"] == "resnest14d_digits" and meta["reference"] == read_source(digits_onnx)["reference"]
    side = json.loads(Path(f"{dest}.json").read_text())
    record = side["equalization"]
    assert len(record["equalized"]) == len(report.equalized) == 18
    assert record["relative_change"] < 1e-5 and side["source"]["file"] == digits_onnx.name
    assert str(report).startswith("equalized 18 convolution group(s)")
    # `check` proves it equal to PyTorch within the FP32 bar, as it does the export itself
    from typer.testing import CliRunner

    from resnest_deploy.cli.app import app

    result = CliRunner().invoke(app, ["check", str(dest), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["passed"] is True


def test_write_equalized_refuses_a_file_that_is_not_an_fp32_export(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    a, ia = _conv("a", "x", rng.standard_normal((8, 4, 3, 3)))
    b, ib = _conv("b", "r", rng.standard_normal((5, 8, 3, 3)))
    bare = tmp_path / "bare.onnx"
    onnx.save(_graph([a, helper.make_node("Relu", ["a.y"], ["r"], name="r"), b], ia + ib, ["b.y"]), bare)
    with pytest.raises(ArtifactError, match="not a resnest-deploy export"):
        write_equalized(bare, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.onnx"]


@pytest.fixture(scope="module")
def stem_outliers(digits_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from resnest_deploy.precision.outliers import SPECS, from_spec

    path = tmp_path_factory.mktemp("stem") / "stem-64x.onnx"
    onnx.save(from_spec(onnx.load(digits_onnx), next(s for s in SPECS if s.name == "stem-64x"))[0], path)
    return path


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_conversion_equalizes_the_source_before_calibration_and_auto_keeps_the_better(
    stem_outliers: Path, tmp_path: Path, target: str
) -> None:
    """``equalize="auto"`` on the stem fixture: plain INT8 loses 6.6 (CPU) / 10.5 (TensorRT) points on
    the 899 held-out digits, equalized first it loses at most one image; the sidecar records both and
    the choice, what was equalized, and the user's file as the source."""
    from resnest_deploy._io import sha256_file
    from resnest_deploy.data import Transform
    from resnest_deploy.models import get_spec
    from resnest_deploy.precision import ConversionConfig, RunOptions, calibration, convert

    calib = calibration.from_digits(Transform.from_pretrained(get_spec("resnest14d_digits").pretrained))
    said: list[str] = []
    config = ConversionConfig("int8", target, equalize="auto")
    report = convert(stem_outliers, tmp_path / "q.onnx", config, calib, RunOptions(said.append))
    record = json.loads(report.sidecar.read_text())["conversion"]["equalization"]
    off, on = (r["metric"] for r in record["results"])
    assert record["mode"] == "auto" and record["chosen"] == "on" and record["metric"] == "top-1"
    assert on - off > 5 and on > 99.2, record["results"]
    assert record["groups"] == 18 and record["kinds"]["split attention"] == 4 and len(record["skipped"]) == 1
    assert record["relative_change"] < 1e-5 and record["imbalance_before"] > 1000
    assert report.parity.cosine > 0.99 and report.parity.top1 > 0.99  # against the user's FP32 file
    side = json.loads(report.sidecar.read_text())
    assert side["source"] == {"file": stem_outliers.name, "sha256": sha256_file(stem_outliers)}
    assert any(line.startswith("equalization: equalized 18") for line in said)
    # the library refuses what it cannot mean
    with pytest.raises(ConversionError, match="equalize balances INT8 ranges"):
        ConversionConfig("fp16", "tensorrt", equalize="on")


def test_the_equalize_command_writes_what_check_proves_and_inspect_shows(
    digits_onnx: Path, stem_outliers: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from resnest_deploy.cli.app import app

    runner = CliRunner()
    dest = tmp_path / "digits.equalized.onnx"
    r = runner.invoke(app, ["equalize", str(digits_onnx), "-o", str(dest), "--json"])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["path"] == str(dest) and len(record["equalized"]) == 18 and record["relative_change"] < 1e-5
    streams = [p for p in record["equalized"] if p["kind"] == "residual stream"]  # named by what makes them
    assert [p["producers"][-1] for p in streams] == [f"/layer{i}/layer{i}.0/conv3/Conv" for i in (1, 2, 3)]
    r = runner.invoke(app, ["check", str(dest), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["passed"] is True
    r = runner.invoke(app, ["inspect", str(dest)])
    assert "equalized: 18 convolution group(s)" in r.stdout and "quantized:" not in r.stdout
    # the table names each pair by its module path
    r = runner.invoke(app, ["equalize", str(stem_outliers), "-o", str(tmp_path / "s.onnx")])
    assert r.exit_code == 0 and "conv1.0" in r.stdout and "prove it with: resnest-deploy check" in r.stdout
    # an output never overwrites its input: one line, non-zero, nothing written
    before = sorted(tmp_path.iterdir())
    r = runner.invoke(app, ["equalize", str(dest), "-o", str(dest)])
    assert r.exit_code != 0 and r.output.count("error:") == 1 and "overwrite" in r.output
    assert sorted(tmp_path.iterdir()) == before
    # quantize --equalize on: the INT8 file records it, inspect says what is quantized and what was equalized
    q = tmp_path / "q.onnx"
    r = runner.invoke(
        app, ["quantize", "--onnx", str(stem_outliers), "--target", "cpu", "--equalize", "on", "-o", str(q)]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["inspect", str(q), "--json"])
    info = json.loads(r.stdout)
    assert info["quantized"]["activations"] and info["quantized"]["fp32_compute"]
    assert "/fc/Gemm" in info["quantized"]["fp32_compute"]
    assert info["sidecar"]["conversion"]["equalization"]["mode"] == "on"
    r = runner.invoke(app, ["inspect", str(q)])
    assert "activation tensors" in r.stdout and "equalized: 18 convolution group(s)" in r.stdout


def test_relative_change_reads_every_output_not_only_the_first() -> None:
    """A rescaling that reaches only a second output is a change: ``write_equalized`` would refuse it."""

    def model(k: float) -> onnx.ModelProto:
        nodes = [
            helper.make_node("Identity", ["x"], ["first"]),
            helper.make_node("Mul", ["x", "k"], ["second"]),
        ]
        inits = [numpy_helper.from_array(np.array(k, np.float32), "k")]
        return _graph(nodes, inits, ["first", "second"])

    assert relative_change(model(2.0), model(2.0)) == 0.0
    assert relative_change(model(2.0), model(3.0)) == pytest.approx(0.5, rel=1e-6)
