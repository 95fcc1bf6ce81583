"""Graph surgery for FP32 units in a quantized ONNX graph: compute nodes put back in FP32 by taking
their Q/DQ out. FP32 means FP32 in and out: a kept node reads the float tensor its Q/DQ pair was made
from, through the per-channel ops between (pools, reshapes: copied in float where the INT8 path still
needs the original), and its int8 weights get float values. A Q/DQ pair nothing reads any more is
dropped; one that an INT8 consumer still reads stays for it. The search's trials and the files that
keep nodes in FP32 by name (``int8``) both go through ``layers_without_qdq``."""

from __future__ import annotations

import copy
import heapq
from collections.abc import Collection
from typing import Any

import numpy as np

from resnest_deploy import _deps

#: the ops whose inputs carry Q/DQ in both quantizers' graphs (what INT8 computes)
COMPUTE_OPS = frozenset({"Conv", "Gemm", "MatMul"})
#: ops that move or pool values without mixing channels' scales: a quantized tensor that reaches a
#: kept node through them is read in float by a float copy of them
TRANSPARENT_OPS = frozenset(
    {
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Relu",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Split",
        "Concat",
        "Identity",
        "Pad",
        "Resize",
    }
)


def layers_without_qdq(model: Any, wanted: Collection[str], source: Any = None) -> Any:
    """A copy of the quantized ``model`` with the nodes named in ``wanted`` computing in FP32: their
    inputs read the float tensors their Q/DQ pairs were made from (through float copies of the pools
    and reshapes between, when those read a Q/DQ'd tensor); weights stored as int8 get their original
    float values back from ``source`` (the FP32 export: ONNX Runtime's quantizer names them
    ``<name>_quantized``), else are dequantized; Q/DQ nodes nothing reads are dropped."""
    model = copy.deepcopy(model)
    surgery = _Surgery(model, source)
    kept_outputs: set[str] = set()
    for node in list(model.graph.node):
        if node.name in wanted:
            for i, name in enumerate(node.input):
                if name:
                    node.input[i] = surgery.float_of(name, weights=True)
            if node.op_type not in COMPUTE_OPS:
                kept_outputs.update(o for o in node.output if o)
    _float_outputs(model.graph, surgery, kept_outputs)
    _drop_unread(model.graph)
    _topological(model.graph)
    return model


def _float_outputs(graph: Any, surgery: _Surgery, kept: set[str]) -> None:
    """FP32 out: a kept non-compute node's output (a block's residual ``Add``, through the ReLU after
    it) is read in float by the elementwise nodes that read its Q/DQ (the next block's ``Add``, on an
    identity shortcut); convolutions and the pools before them keep the Q/DQ while they are INT8."""
    if not kept:
        return
    reader_ops = COMPUTE_OPS | TRANSPARENT_OPS | {"QuantizeLinear", "DequantizeLinear"}
    for node in list(graph.node):
        if node.op_type in reader_ops:
            continue
        for i, name in enumerate(node.input):
            if name and surgery.quantized_from(name) in kept:
                node.input[i] = surgery.float_of(name)


def quantized_inputs(model: Any, node_name: str) -> list[str]:
    """The activation inputs of node ``node_name`` that reach it through a Q/DQ pair, also through the
    per-channel ops between (``TRANSPARENT_OPS``): what rounds its input to 8 bits."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    found, todo, seen = [], [i for i in node.input if i], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        p = producers.get(name)
        if p is None:
            continue
        if p.op_type == "DequantizeLinear":
            q = producers.get(p.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                found.append(q.input[0])
        elif p.op_type in TRANSPARENT_OPS:
            todo.extend(i for i in p.input if i)
    return found


class _Surgery:
    """The float version of a tensor of a quantized graph, made once and shared by every kept node."""

    def __init__(self, model: Any, source: Any) -> None:
        self.onnx = _deps.require("onnx")
        self.numpy_helper = _deps.require("onnx.numpy_helper")
        self.graph = model.graph
        self.producers = {o: n for n in self.graph.node for o in n.output}
        self.inits = {t.name: t for t in self.graph.initializer}
        self.originals = {t.name: t for t in source.graph.initializer} if source is not None else {}
        self.made: dict[str, str] = {}  # tensor -> its float version
        self.added: dict[str, str] = {}  # quantized weight or clamped tensor -> what was added for it

    def float_of(self, name: str, weights: bool = False) -> str:
        if name not in self.made:
            self.made[name] = self._float_of(name, weights)
        return self.made[name]

    def _float_of(self, name: str, weights: bool) -> str:
        p = self.producers.get(name)
        if p is None:
            return name
        if p.op_type == "DequantizeLinear":
            quantized = p.input[0]
            q = self.producers.get(quantized)
            if q is not None and q.op_type == "QuantizeLinear":
                # the float activation before Q/DQ; ONNX Runtime's CPU quantizer drops a ReLU whose
                # output a uint8 Q with zero point 0 clamps anyway: put the clamp back
                # (after a pool or reshape it was never dropped: their input is clamped already)
                before = self.float_of(q.input[0])
                source = self.producers.get(q.input[0])
                if getattr(source, "op_type", None) in TRANSPARENT_OPS:
                    return before
                return self._relu(before) if _clamps_at_zero(q, self.inits, self.numpy_helper) else before
            if weights and quantized in self.inits:  # int8 weights stored quantized: their float values
                return self._weights(p, quantized)
            return name
        if p.op_type in TRANSPARENT_OPS:
            inputs = [self.float_of(i) if i else i for i in p.input]
            if inputs == list(p.input):
                return name
            clone = self.onnx.helper.make_node(
                p.op_type, inputs, [f"{o}_fp32" if o else o for o in p.output], name=f"{p.name}_fp32"
            )
            clone.attribute.extend(p.attribute)
            clone.domain = p.domain
            self.graph.node.append(clone)
            # one clone for every output (a Split has several): the others are asked for later
            self.made.update({o: f"{o}_fp32" for o in p.output if o})
            return f"{name}_fp32"
        return name

    def quantized_from(self, name: str) -> str | None:
        """The tensor a Q/DQ'd ``name`` was made from, before a ReLU between (ModelOpt keeps it)."""
        dq = self.producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = self.producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        before = self.producers.get(q.input[0])
        return str(before.input[0]) if before is not None and before.op_type == "Relu" else str(q.input[0])

    def _relu(self, name: str) -> str:
        if name not in self.added:
            relu = self.added[name] = f"{name}_relu_fp32"
            self.graph.node.append(self.onnx.helper.make_node("Relu", [name], [relu], name=relu))
        return self.added[name]

    def _weights(self, dq: Any, quantized: str) -> str:
        if quantized not in self.added:
            original = self.originals.get(quantized.removesuffix("_quantized"))
            if original is None:
                self.added[quantized] = _dequantized(self.numpy_helper, self.graph, dq, self.inits)
            else:
                restored = copy.deepcopy(original)
                restored.name = f"{quantized}_fp32"
                self.graph.initializer.append(restored)
                self.added[quantized] = restored.name
        return self.added[quantized]


def _clamps_at_zero(q: Any, inits: dict[str, Any], numpy_helper: Any) -> bool:
    if len(q.input) < 3 or q.input[2] not in inits:
        return False
    zero = numpy_helper.to_array(inits[q.input[2]])
    return bool(zero.dtype == np.uint8 and not zero.any())


def _dequantized(numpy_helper: Any, graph: Any, dq: Any, inits: dict[str, Any]) -> str:
    w = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 else 0.0
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    name = f"{dq.input[0]}_fp32"
    graph.initializer.append(numpy_helper.from_array((w - zero) * scale, name))
    return name


def _drop_unread(graph: Any) -> None:
    """Drop the Q/DQ nodes, and the pools and reshapes (now copied in float), that nothing reads."""
    outputs = {o.name for o in graph.output}
    droppable = TRANSPARENT_OPS | {"QuantizeLinear", "DequantizeLinear"}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in droppable and not set(n.output) & read]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)


def _topological(graph: Any) -> None:
    """Nodes in an order where each comes after what it reads (the float copies were appended);
    Kahn's algorithm, stable: nodes already in order stay where they are."""
    produced_by = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    readers: dict[int, list[int]] = {}
    waiting = []
    for k, n in enumerate(graph.node):
        deps = {produced_by[i] for i in n.input if i in produced_by}
        waiting.append(len(deps))
        for d in deps:
            readers.setdefault(d, []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for r in readers.get(k, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(graph.node) or order == sorted(order):
        return  # a cycle (left as it was), or already in order
    nodes = [copy.deepcopy(graph.node[k]) for k in order]
    del graph.node[:]
    graph.node.extend(nodes)
