"""Units: what a user recognises in a ResNeSt (the stem, each block's convolutions, its attention
gate, its residual ``Add``, the classifier), found in an export by the node names the registry declares
(``models.parts``); the INT8 search keeps whole units in FP32."""

from __future__ import annotations

import re
from typing import Any

from resnest_deploy.models import parts
from resnest_deploy.models.config import RESNEST_PARTS, ModelParts
from resnest_deploy.precision.qdq import COMPUTE_OPS as COMPUTE_OPS

#: the op where a block's conv3 and shortcut meet (the residual stream): both quantizers put Q/DQ on
#: its inputs (ModelOpt on the shortcut's alone) and on its output, which no convolution's unit covers
RESIDUAL_OPS = frozenset({"Add"})


def unit_of(node_name: str, names: ModelParts = RESNEST_PARTS) -> str | None:
    """The unit a node of an export belongs to (node names carry the module path; the model's
    ``names`` of its parts say which)."""
    if re.search(names.stem_nodes, node_name):
        return "stem"
    if re.search(names.classifier_nodes, node_name):
        return "classifier"
    m = re.search(names.residual_nodes, node_name)
    if m is not None:
        return f"{m.group(1)}.{m.group(2)} residual"
    m = re.search(names.block_nodes, node_name)
    if m is None:
        return None
    layer, block, part, _ = m.groups()
    where = f"{layer}.{block}"
    if part == names.split_attention:
        gate = any(re.search(p, node_name) for p in (*names.gate_nodes, names.attention_nodes))
        return f"{where} attention gate" if gate else f"{where} split-attention conv"
    return f"{where} {part}"


def units(model: Any) -> dict[str, list[str]]:
    """Unit -> the names of its nodes that read a Q/DQ'd input (what INT8 touches): compute nodes,
    each block's residual ``Add`` (its unit kept in FP32, the Add reads float inputs, and the Q/DQ
    on its output goes where no INT8 consumer reads it), and the split attention's arithmetic (in
    its gate's unit: an outlier channel of the splits reaches the gate through it)."""
    recorded = next((p.value for p in model.metadata_props if p.key == "arch"), None)
    names = parts(recorded)  # the family's names for a file that records no arch we know
    found: dict[str, list[str]] = {}
    reading = _reading_qdq(model)
    quantized = [  # compute nodes first, then the residual Adds, then the attention's arithmetic
        *(n for n in reading if n.op_type in COMPUTE_OPS),
        *(n for n in reading if n.op_type in RESIDUAL_OPS and re.search(names.residual_nodes, n.name)),
        *(
            n
            for n in reading
            if n.op_type not in COMPUTE_OPS
            and n.op_type not in _QDQ_OPS
            and re.search(names.attention_nodes, n.name)
        ),
    ]
    for node in quantized:
        unit = unit_of(node.name, names)
        if unit is not None:
            found.setdefault(unit, []).append(node.name)
    return found


_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _reading_qdq(model: Any) -> list[Any]:
    """The nodes that read an input through a DequantizeLinear (what INT8 touches), in graph order."""
    producers = {o: n for n in model.graph.node for o in n.output}
    return [
        n
        for n in model.graph.node
        if any(getattr(producers.get(i), "op_type", None) == "DequantizeLinear" for i in n.input)
    ]


def fp32_layers(model: Any) -> tuple[int, int]:
    """How many compute layers (Conv, Gemm, MatMul) run in FP32, of all: what TensorRT will build
    as FP32 kernels, and the cost a CPU-less latency figure stands for."""
    compute = sum(n.op_type in COMPUTE_OPS for n in model.graph.node)
    return compute - sum(n.op_type in COMPUTE_OPS for n in _reading_qdq(model)), compute
