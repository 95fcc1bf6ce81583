"""Where a per-channel rescaling of an ONNX graph is exact: the groups cross-layer equalization may
touch, found from the graph node by node (``precision.equalize`` says why each shape is exact), and
batch norms folded into their convolutions first.

A group is one producer convolution followed by ReLU and every convolution that reads its channels:
directly, through per-channel pools (``PASS_THROUGH``), or through ResNeSt's split attention (a radix
sum read by ``fc1`` after a global pool, and the attention-weighted radix sum read by ``conv3``).
Anything else reading the activation, a graph output, or weights shared with another node, and the
producer is skipped with a sentence saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from resnest_deploy import _deps

#: ops between the ReLU and a reading convolution that act on each channel alone, positively homogeneous
PASS_THROUGH = ("MaxPool", "AveragePool", "GlobalAveragePool")


class Graph:
    """Who reads each tensor, and the initializers as float64 arrays (written back by ``store``)."""

    def __init__(self, model: Any) -> None:
        numpy_helper = _deps.require("onnx.numpy_helper")
        self.model = model
        self.outputs = {o.name for o in model.graph.output}
        self.consumers: dict[str, list[Any]] = {}
        self.producer = {out: n for n in model.graph.node for out in n.output}
        self.uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in [*node.input, *_captured(node)]:
                self.consumers.setdefault(name, []).append(node)
                self.uses[name] = self.uses.get(name, 0) + 1
        self.init = {t.name: t for t in model.graph.initializer}
        self.arrays = {n: numpy_helper.to_array(t).astype(np.float64) for n, t in self.init.items()}

    def only_consumer(self, tensor: str) -> Any | None:
        readers = self.consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in self.outputs else None

    def own_weights(self, node: Any) -> bool:
        """Weights (and bias) are FP32 initializers read by this node only (FP16 or quantized weights
        are not rescaled: that is for the FP32 source)."""
        return all(
            n in self.init and self.uses.get(n) == 1 and self.init[n].data_type == 1 for n in node.input[1:3]
        )

    def store(self) -> None:
        numpy_helper = _deps.require("onnx.numpy_helper")
        for name, tensor in self.init.items():
            if tensor.data_type == 1:  # FLOAT
                tensor.CopyFrom(numpy_helper.from_array(self.arrays[name].astype(np.float32), name))


def _captured(node: Any) -> list[str]:
    """Every name the subgraphs of ``node`` (``If``, ``Loop``, ``Scan``) read, outer-scope tensors among
    them: a tensor read there is read by ``node`` (a superset; names made inside are never ours)."""
    graphs = [a.g for a in node.attribute if a.HasField("g")] + [x for a in node.attribute for x in a.graphs]
    return [name for sub in graphs for inner in sub.node for name in [*inner.input, *_captured(inner)]]


def conv_groups(node: Any) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def fold_batch_norms(model: Any) -> int:
    """Fold every ``Conv -> BatchNormalization`` (inference form) whose convolution feeds nothing else
    into the convolution, in place; return how many were folded."""
    g = Graph(model)
    folded: list[Any] = []
    for bn in list(model.graph.node):
        conv = g.producer.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or len(bn.output) != 1:
            continue
        if id(g.only_consumer(conv.output[0])) != id(bn) or not g.own_weights(conv):
            continue
        if all(name in g.arrays for name in list(bn.input)[1:5]):
            _fold(g, conv, bn)
            folded.append(bn)
    for done in folded:
        model.graph.node.remove(done)
    g.store()
    return len(folded)


def _fold(g: Graph, conv: Any, bn: Any) -> None:
    numpy_helper = _deps.require("onnx.numpy_helper")
    gamma, beta, mean, var = (g.arrays[n] for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    k = gamma / np.sqrt(var + eps)
    w = g.arrays[conv.input[1]]
    bias = g.arrays[conv.input[2]] if len(conv.input) > 2 else np.zeros(w.shape[0])
    g.arrays[conv.input[1]] = w * k.reshape(-1, *([1] * (w.ndim - 1)))
    if len(conv.input) == 2:  # a bias of its own, to hold the batch norm's shift
        name = f"{conv.name or conv.output[0]}.folded_bias"
        g.model.graph.initializer.append(numpy_helper.from_array(np.zeros(w.shape[0], np.float32), name))
        g.init[name] = g.model.graph.initializer[-1]
        conv.input.append(name)
    g.arrays[conv.input[2]] = (bias - mean) * k + beta
    conv.output[0] = bn.output[0]


@dataclass
class Group:
    """``first``'s output channel ``c`` (in each of its ``radix`` branches) is read as input channel
    ``c`` by each of ``seconds``."""

    first: Any
    seconds: list[Any]
    radix: int
    kind: str  # "pair", "branches", "split attention" (or "residual stream": ``equalize_stream``)

    @staticmethod
    def _by_input(w2: np.ndarray, second: Any) -> np.ndarray:
        """``w2`` as (groups, outputs per group, inputs per group, taps): input channel ``c`` of a
        grouped conv is column ``c % inputs`` of group ``c // inputs``, read by that group's rows only."""
        groups = conv_groups(second)
        return w2.reshape(groups, w2.shape[0] // groups, w2.shape[1], -1)

    def ranges(self, g: Graph) -> tuple[np.ndarray, np.ndarray]:
        """Per channel: the largest weight magnitude producing it, and the largest reading it."""
        w1 = g.arrays[self.first.input[1]]
        r1 = np.abs(w1).reshape(self.radix, w1.shape[0] // self.radix, -1).max(axis=(0, 2))
        return r1, self.reader_ranges(g, r1)

    def reader_ranges(self, g: Graph, r1: np.ndarray) -> np.ndarray:
        r2 = np.zeros_like(r1)
        for second in self.seconds:
            by_input = np.abs(self._by_input(g.arrays[second.input[1]], second)).max(axis=(1, 3))
            r2 = np.maximum(r2, by_input.reshape(-1))
        return r2

    def scale(self, g: Graph, s: np.ndarray) -> None:
        """Divide ``first``'s channels (every radix branch alike) by ``s``, multiply the readers' by it."""
        every = np.tile(s, self.radix)
        w1 = g.arrays[self.first.input[1]]
        g.arrays[self.first.input[1]] = w1 / every.reshape(-1, *([1] * (w1.ndim - 1)))
        if len(self.first.input) > 2:
            g.arrays[self.first.input[2]] = g.arrays[self.first.input[2]] / every
        self.scale_readers(g, s)

    def scale_readers(self, g: Graph, s: np.ndarray) -> None:
        for second in self.seconds:
            w2 = g.arrays[second.input[1]]
            by_input = self._by_input(w2, second)
            scaled = by_input * s.reshape(by_input.shape[0], 1, by_input.shape[2], 1)
            g.arrays[second.input[1]] = scaled.reshape(w2.shape)


def _names(readers: list[Any], tensor: str, g: Graph) -> str:
    names = [r.name or r.op_type for r in readers] + (["the graph output"] if tensor in g.outputs else [])
    return ", ".join(names)


def block_sum(g: Graph, node: Any) -> bool:
    """``node`` is a two-input ``Add`` read by one ``Relu`` only: a residual block's end."""
    if node is None or node.op_type != "Add" or len(node.input) != 2:
        return False
    relu = g.only_consumer(node.output[0])
    return relu is not None and relu.op_type == "Relu"


def reach(g: Graph, tensor: str, skip: Any = None, sums: list[Any] | None = None) -> list[Any] | str:
    """The convolutions reading ``tensor`` directly or through per-channel pools, or why not only they
    (the node ``skip`` reading ``tensor`` itself is left out). Given ``sums`` (``tensor`` a residual
    block's output), the block sums reading ``tensor`` itself as their identity shortcut go there,
    and being read by nothing but them is no reason."""
    what, others = ("its activation", "pools") if sums is None else ("a block output", "sums")
    convs, todo = [], [tensor]
    while todo:
        t = todo.pop()
        if t in g.outputs:
            return f"{what} is a graph output"
        for r in g.consumers.get(t, []):
            if r is skip and t == tensor:
                continue
            if r.op_type == "Conv" and r.input[0] == t and t not in r.input[1:]:
                convs.append(r)
            elif r.op_type in PASS_THROUGH and r.input[0] == t:
                todo.append(r.output[0])
            elif sums is not None and t == tensor and block_sum(g, r) and list(r.input).count(t) == 1:
                sums.append(r)
            else:
                return f"{what} goes to {r.op_type} {r.name}, not only to convolutions and {others}"
    return convs if convs or sums is not None else f"{what} is read by nothing"


def _radix_sum(g: Graph, split: Any) -> tuple[str, int] | None:
    """The tensor that sums the equal channel chunks of ``split`` (``s0 + s1 + ...``), and the chunks'
    count, or ``None`` when ``split`` is not such a radix sum."""
    axis = next((int(a.i) for a in split.attribute if a.name == "axis"), 0)
    sizes = next((list(a.ints) for a in split.attribute if a.name == "split"), None)
    if len(split.input) > 1 and split.input[1]:
        sizes = [int(v) for v in g.arrays.get(split.input[1], np.array([0, 1])).ravel()]
    radix = len(split.output)
    if axis != 1 or radix < 2 or (sizes is not None and len(set(sizes)) != 1):
        return None
    total, used = split.output[0], {split.output[0]}
    for _ in range(radix - 1):
        add: Any = g.only_consumer(total)
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            return None
        other = add.input[1] if add.input[0] == total else add.input[0]
        if other not in split.output or other in used or id(g.only_consumer(other)) != id(add):
            return None
        used.add(other)
        total = add.output[0]
    return total, radix


def _split_attention(g: Graph, act: str) -> tuple[list[Any], int] | str | None:
    """The convolutions behind a split attention reading ``act`` (``fc1`` after the radix sum and
    global pool, ``conv3`` after the attention-weighted radix sum), or why not, or ``None`` when
    ``act`` does not feed a split attention."""
    readers = g.consumers.get(act, [])
    split = [r for r in readers if r.op_type == "Split"]
    mul = [r for r in readers if r.op_type == "Mul"]
    if not split and len(mul) == 1 and list(mul[0].input).count(act) == 1 and act not in g.outputs:
        return _gate(g, act, mul[0])
    if len(readers) != 2 or len(split) != 1 or len(mul) != 1 or act in g.outputs:
        return None
    pooled = _radix_sum(g, split[0])
    after: Any = g.only_consumer(mul[0].output[0])
    weighted = _radix_sum(g, after) if after is not None and after.op_type == "Split" else None
    if pooled is None or weighted is None or pooled[1] != weighted[1] or list(mul[0].input).count(act) != 1:
        return "it feeds a Split and a Mul that are not a split attention's radix sums"
    readers_pooled, readers_weighted = reach(g, pooled[0]), reach(g, weighted[0])
    for found in (readers_pooled, readers_weighted):
        if isinstance(found, str):
            return f"in its split attention, {found.removeprefix('its ')}"
    assert isinstance(readers_pooled, list) and isinstance(readers_weighted, list)
    return readers_pooled + readers_weighted, pooled[1]


def _gate(g: Graph, act: str, mul: Any) -> tuple[list[Any], int] | str:
    """Radix 1: the activation goes (through pools) to ``fc1`` and to the ``Mul`` by a sigmoid gate
    computed from it; the gate is unchanged when every other reader is compensated (in a DAG it cannot
    depend on the ``Mul`` itself), so the product is scaled as the activation and ``conv3`` restores it."""
    direct, gated = reach(g, act, skip=mul), reach(g, mul.output[0])
    for found in (direct, gated):
        if isinstance(found, str):
            return f"in its attention gate, {found.removeprefix('its ')}"
    assert isinstance(direct, list) and isinstance(gated, list)
    return direct + gated, 1


def group_of(g: Graph, conv: Any) -> Group | str | None:
    """The group ``conv`` produces for, or a sentence saying why there is none (``None`` when ``conv``
    is not followed by a ReLU: nothing to speak of)."""
    out = conv.output[0]
    readers = g.consumers.get(out, [])
    if not any(r.op_type == "Relu" for r in readers):
        return None
    if g.only_consumer(out) is None:
        return f"its output also goes to {_names(readers, out, g)} (before the ReLU)"
    if not g.own_weights(conv):
        return "its weights are not initializers of its own"
    act = readers[0].output[0]
    attention = _split_attention(g, act)
    if isinstance(attention, str):
        return attention
    seconds, radix = attention if attention is not None else (reach(g, act), 1)
    if isinstance(seconds, str):
        return seconds
    shared = [s.name for s in seconds if not g.own_weights(s)]
    if shared:
        return f"{shared[0]}'s weights are not initializers of its own"
    width = g.arrays[conv.input[1]].shape[0] // radix
    wrong = [s.name for s in seconds if g.arrays[s.input[1]].shape[1] * conv_groups(s) != width]
    if wrong:
        return f"{wrong[0]} does not read its {width} channels one to one"
    kind = "split attention" if attention is not None else "pair" if len(seconds) == 1 else "branches"
    return Group(conv, seconds, radix, kind)
