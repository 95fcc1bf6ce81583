"""Graph surgery for the INT8 search: compute nodes of a quantized ONNX graph put back in FP32 by
taking their Q/DQ out (their inputs read the float tensors again; int8 weights get float values)."""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any

import numpy as np

from resnest_deploy import _deps


def layers_without_qdq(model: Any, wanted: Collection[str], source: Any = None) -> Any:
    """A copy of the quantized ``model`` with the compute nodes named in ``wanted`` computing in
    FP32: their inputs read the float tensors their Q/DQ pairs were made from; weights stored as int8
    get their original float values back from ``source`` (the FP32 export: ONNX Runtime's quantizer
    names them ``<name>_quantized``), else are dequantized; Q/DQ nodes nothing reads are dropped."""
    onnx = _deps.require("onnx")
    numpy_helper = _deps.require("onnx.numpy_helper")
    model = copy.deepcopy(model)
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    originals = {t.name: t for t in source.graph.initializer} if source is not None else {}
    added: dict[str, str] = {}
    for node in graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            quantized = dq.input[0]
            q = producers.get(quantized)
            if q is not None and q.op_type == "QuantizeLinear":
                # the float activation (or weight) before Q/DQ; ONNX Runtime's CPU quantizer drops a
                # ReLU whose output a uint8 Q with zero point 0 clamps anyway: put the clamp back
                node.input[i] = q.input[0]
                if _clamps_at_zero(q, inits, numpy_helper):
                    relu = f"{q.input[0]}_relu_fp32"
                    if relu not in added:
                        graph.node.append(onnx.helper.make_node("Relu", [q.input[0]], [relu], name=relu))
                        added[relu] = relu
                    node.input[i] = relu
            elif quantized in inits:  # int8 weights stored quantized: their float values back, once
                if quantized not in added:
                    original = originals.get(quantized.removesuffix("_quantized"))
                    if original is not None:
                        restored = copy.deepcopy(original)
                        restored.name = f"{quantized}_fp32"
                        graph.initializer.append(restored)
                        added[quantized] = restored.name
                    else:
                        added[quantized] = _dequantized(onnx, numpy_helper, graph, dq, inits)
                node.input[i] = added[quantized]
    _drop_unread(graph)
    return model


def _clamps_at_zero(q: Any, inits: dict[str, Any], numpy_helper: Any) -> bool:
    if len(q.input) < 3 or q.input[2] not in inits:
        return False
    zero = numpy_helper.to_array(inits[q.input[2]])
    return bool(zero.dtype == np.uint8 and not zero.any())


def _dequantized(onnx: Any, numpy_helper: Any, graph: Any, dq: Any, inits: dict[str, Any]) -> str:
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
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [
            n
            for n in graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not set(n.output) & read
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)
