"""Residual streams under attack: graphs a stream detection could get wrong are equalized exactly or
left alone with a sentence, never a traceback."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnest_deploy.precision.equalize import equalize
from tests.test_equalize import _conv, _graph

RNG = np.random.default_rng(7)
C = 4


def _w(*shape: int) -> np.ndarray:
    w = RNG.standard_normal(shape)
    w[0] *= 40  # an outlier channel: equalization has something to move
    return w


def _stage(nodes: list, inits: list, blocks: int) -> str:
    """A stage on ``x``: conv1 -> ReLU -> conv3 plus a downsample, then ``blocks - 1`` identity blocks;
    its output's name."""

    def conv(name: str, x: str) -> None:
        node, weights = _conv(name, x, _w(C, C, 3, 3))
        nodes.append(node)
        inits.extend(weights)

    def block(b: int, x: str, shortcut: str) -> str:
        conv(f"b{b}.c1", x)
        nodes.append(helper.make_node("Relu", [f"b{b}.c1.y"], [f"b{b}.r1"], name=f"b{b}.r1"))
        conv(f"b{b}.c3", f"b{b}.r1")
        nodes.append(helper.make_node("Add", [f"b{b}.c3.y", shortcut], [f"b{b}.sum"], name=f"b{b}.sum"))
        nodes.append(helper.make_node("Relu", [f"b{b}.sum"], [f"b{b}.out"], name=f"b{b}.relu"))
        return f"b{b}.out"

    conv("b0.down", "x")
    stream = block(0, "x", "b0.down.y")
    for b in range(1, blocks):
        stream = block(b, stream, stream)
    return stream


def _worst_change(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """Largest change of any output, relative to its largest magnitude (inputs scaled so ReLUs cut)."""
    outs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        for m in (a, b)
    ]
    return max(float(np.max(np.abs(x - y)) / np.max(np.abs(x))) for x, y in zip(*outs, strict=True))


def _x() -> dict[str, np.ndarray]:
    return {"x": (3 * RNG.standard_normal((2, C, 8, 8)) + 0.5).astype(np.float32)}


def test_a_conv_both_reading_and_adding_to_the_stream_and_grouped_readers_after_a_padded_pool() -> None:
    nodes: list = []
    inits: list = []
    stream = _stage(nodes, inits, 3)
    loop, wl = _conv("loop", stream, _w(C, C, 3, 3))  # reads the stream, its output is added straight back
    pool = helper.make_node(
        "MaxPool", ["loop.out"], ["p"], name="p", kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2]
    )
    dw, wd = _conv("dw", "p", _w(C, 1, 3, 3), group=C)
    grouped, wg = _conv("grouped", "loop.out", _w(6, 2, 3, 3), group=2)
    nodes += [
        loop,
        helper.make_node("Add", ["loop.y", stream], ["loop.sum"], name="loop.sum"),
        helper.make_node("Relu", ["loop.sum"], ["loop.out"], name="loop.relu"),
        pool,
        dw,
        grouped,
    ]
    model = _graph(nodes, inits + wl + wd + wg, ["dw.y", "grouped.y"])
    out, report = equalize(model)
    stream_pair = next(p for p in report.equalized if p.kind == "residual stream")
    assert stream_pair.first == "b0.sum" and not report.skipped
    assert stream_pair.producers == ("b0.down", "b0.c3", "b1.c3", "b2.c3", "loop")
    assert stream_pair.seconds == ("b1.c1", "b2.c1", "loop", "dw", "grouped")
    assert stream_pair.imbalance_after < stream_pair.imbalance_before / 10
    assert _worst_change(model, out, _x()) < 1e-5
    assert equalize(model)[1] == report  # the same report for the same graph


@pytest.mark.parametrize(
    "weights", ["a graph input", "shared by two readers", "shared with a conv elsewhere"]
)
def test_a_stream_read_by_a_conv_without_weights_of_its_own_is_left_alone(weights: str) -> None:
    """Was a KeyError (no initializer to read), or a stream scaled twice through the shared weights."""
    nodes: list = []
    inits: list = []
    stream = _stage(nodes, inits, 2)
    shared = numpy_helper.from_array(_w(3, C, 3, 3).astype(np.float32), "shared")
    inputs = {"x": _x()["x"]}
    if weights == "a graph input":
        inputs["w"] = RNG.standard_normal((3, C, 3, 3)).astype(np.float32)
        nodes.append(helper.make_node("Conv", [stream, "w"], ["head"], name="head", pads=[1] * 4))
    else:
        inits.append(shared)
        other = stream if weights == "shared by two readers" else "x"
        nodes += [
            helper.make_node("Conv", [stream, "shared"], ["head"], name="head", pads=[1] * 4),
            helper.make_node("Conv", [other, "shared"], ["other"], name="other", pads=[1] * 4),
        ]
    model = _graph(nodes, inits, ["head"] if weights == "a graph input" else ["head", "other"])
    if weights == "a graph input":
        model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, C, 3, 3]))
    out, report = equalize(model)
    assert "residual stream" not in {p.kind for p in report.equalized}
    assert ("b0.sum", "head's weights are not initializers of its own") in [
        (s.first, s.reason) for s in report.skipped
    ]
    assert _worst_change(model, out, inputs) < 1e-5


def test_convolutions_of_different_ranks_broadcast_into_one_sum_are_left_alone() -> None:
    """A 1-d conv's [1, 8, 8] output broadcast against a 2-d conv's [n, 8, 8, 8]: its channels meet the
    other's rows, so one scale per channel is not exact (was equalized, logits moved by 0.7)."""
    conv2d, w2 = _conv("c2d", "x", _w(8, C, 3, 3))
    conv1d, w1 = _conv("c1d", "row", _w(8, C, 3))
    conv1d.attribute.pop()  # 2-d pads
    conv1d.attribute.append(helper.make_attribute("pads", [1, 1]))
    head, wh = _conv("head", "s", _w(3, 8, 3, 3))
    index = [
        numpy_helper.from_array(np.array(v, np.int64), n) for v, n in ((0, "i0"), ([0], "z"), ([1], "one"))
    ]
    nodes = [
        helper.make_node("Gather", ["x", "i0"], ["rows"], name="rows", axis=2),  # [n, C, 8]
        helper.make_node("Slice", ["rows", "z", "one", "z"], ["row"], name="row"),  # [1, C, 8]
        conv2d,
        conv1d,
        helper.make_node("Add", ["c2d.y", "c1d.y"], ["sum"], name="sum"),
        helper.make_node("Relu", ["sum"], ["s"], name="relu"),
        head,
    ]
    model = _graph(nodes, w2 + w1 + wh + index, ["head.y"])
    out, report = equalize(model)
    assert not report.equalized
    assert [(s.first, s.reason) for s in report.skipped] == [
        ("sum", "its convolutions differ in rank, so their sum does not add channel to channel")
    ]
    assert _worst_change(model, out, _x()) == 0


def test_a_tensor_read_inside_a_subgraph_is_read_there() -> None:
    """An ``If`` branch reading the stream, or a pair's activation, from the outer scope is a reader like
    any other (was invisible: both were scaled and the branch's output moved)."""
    nodes: list = []
    inits: list = []
    stream = _stage(nodes, inits, 2)
    head, wh = _conv("head", stream, _w(3, C, 3, 3))
    branch = helper.make_graph(
        [helper.make_node("Concat", [stream, "b0.r1"], ["both"], axis=1)],
        "branch",
        [],
        [helper.make_tensor_value_info("both", TensorProto.FLOAT, None)],
    )
    nodes += [
        head,
        helper.make_node("If", ["yes"], ["picked"], name="if", then_branch=branch, else_branch=branch),
    ]
    yes = numpy_helper.from_array(np.array(True), "yes")
    model = _graph(nodes, inits + wh + [yes], ["head.y", "picked"])
    out, report = equalize(model)
    reasons = {s.first: s.reason for s in report.skipped}
    assert reasons["b0.sum"] == "a block output goes to If if, not only to convolutions and sums"
    assert reasons["b0.c1"] == "its activation goes to If if, not only to convolutions and pools"
    assert _worst_change(model, out, _x()) < 1e-5


def test_a_batch_norm_whose_convolution_is_read_inside_a_subgraph_is_not_folded() -> None:
    """Folding renames the convolution's output: the branch reading it would name a tensor no longer
    made (was folded into an invalid graph)."""
    a, wa = _conv("a", "x", _w(C, C, 3, 3))
    b, wb = _conv("b", "r", _w(3, C, 3, 3))
    stats = [numpy_helper.from_array(RNG.uniform(0.5, 2, C).astype(np.float32), f"bn.{n}") for n in "gbmv"]
    branch = helper.make_graph(
        [helper.make_node("Identity", ["a.y"], ["seen"])],
        "branch",
        [],
        [helper.make_tensor_value_info("seen", TensorProto.FLOAT, None)],
    )
    nodes = [
        a,
        helper.make_node("BatchNormalization", ["a.y", *(s.name for s in stats)], ["bn.y"], name="bn"),
        helper.make_node("Relu", ["bn.y"], ["r"], name="r"),
        b,
        helper.make_node("If", ["yes"], ["picked"], name="if", then_branch=branch, else_branch=branch),
    ]
    model = _graph(
        nodes, wa + wb + stats + [numpy_helper.from_array(np.array(True), "yes")], ["b.y", "picked"]
    )
    out, report = equalize(model)
    assert report.folded_batch_norms == 0 and not report.equalized  # a's output goes to the BN and If
    assert _worst_change(model, out, _x()) < 1e-5
