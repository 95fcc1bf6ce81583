"""`inspect`: everything known about an artifact, from its bytes, its metadata and its sidecar."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

from resnest_deploy import metadata
from resnest_deploy._io import require_file
from resnest_deploy.artifacts import Artifact
from resnest_deploy.engine.flavour import engine_flavour
from resnest_deploy.errors import ArtifactError, first_line
from resnest_deploy.onnx_files import load_onnx


def describe(path: str | os.PathLike[str], layers: bool = True) -> dict[str, Any]:
    """What ``inspect`` shows: the artifact's description (``artifacts.Artifact``) as the file has it
    (its metadata shown, not judged), with its graph's details or an engine's layers."""
    artifact = Artifact.at(path)
    if artifact.kind == "torch":
        raise ArtifactError("inspect takes a file (.onnx, .plan); for models use `resnest-deploy models`")
    file = require_file(path)
    info: dict[str, Any] = {
        "path": str(file),
        "kind": artifact.kind,
        "bytes": file.stat().st_size,
        "sha256": artifact.sha256,
    }
    info |= _onnx(file, artifact) if artifact.kind == "onnx" else _engine(file, artifact, layers)
    return info


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _onnx(path: Path, artifact: Artifact) -> dict[str, Any]:
    import onnx

    model = load_onnx(path)
    dtype = onnx.helper.tensor_dtype_to_np_dtype
    ops = collections.Counter(n.op_type for n in model.graph.node)
    weights = collections.Counter(str(dtype(t.data_type)) for t in model.graph.initializer)
    stored: collections.Counter[str] = collections.Counter()
    for t in model.graph.initializer:
        numel = 1
        for d in t.dims:
            numel *= d
        stored[str(dtype(t.data_type))] += numel * dtype(t.data_type).itemsize
    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [
            {"name": i.name, "dtype": str(dtype(i.type.tensor_type.elem_type)), "shape": _dims(i)}
            for i in model.graph.input
        ],
        "outputs": [
            {"name": o.name, "dtype": str(dtype(o.type.tensor_type.elem_type)), "shape": _dims(o)}
            for o in model.graph.output
        ],
        "nodes": len(model.graph.node),
        "op_counts": dict(ops.most_common()),
        "initializer_dtypes": dict(weights),
        #: what the weights take by precision: an INT8 file with FP32 weights behind Q/DQ is FP32-sized
        "initializer_bytes": dict(stored.most_common()),
        "metadata": metadata.from_onnx(model),
        "sidecar": artifact.sidecar,
        "quantized": quantized(model),
    }


#: the compute ops whose inputs an INT8 file quantizes (``precision.search.COMPUTE_OPS``)
_COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
#: onnx.TensorProto.UINT8 and INT8 (onnx is imported lazily): what stored 8-bit weights are
_EIGHT_BIT = (2, 3)


def quantized(model: Any) -> dict[str, Any]:
    """Which tensors an INT8 graph rounds to 8 bits (the activations a QuantizeLinear reads, the
    weights stored as int8 for a DequantizeLinear) and which compute nodes read no Q/DQ'd input, so
    run in FP32 (read from the graph: what runs, whatever the metadata says)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer if t.data_type in _EIGHT_BIT}
    activations = sorted({n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"})
    # int8 weights: 8-bit initializers a DequantizeLinear reads (a CPU file's int32 biases are not)
    weights = sorted(
        {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    )
    compute = [n for n in model.graph.node if n.op_type in _COMPUTE_OPS]
    fp32 = [
        n.name
        for n in compute
        if not any(getattr(producers.get(i), "op_type", None) == "DequantizeLinear" for i in n.input)
    ]
    return {
        "activations": activations,
        "weights": weights,
        "fp32_compute": fp32 if activations or weights else [],
        "compute": len(compute),
    }


def _engine(path: Path, artifact: Artifact, layers: bool) -> dict[str, Any]:
    flavour = engine_flavour(path)
    sidecar = artifact.sidecar
    out: dict[str, Any] = {"sidecar": sidecar, "flavour": flavour}
    if sidecar:
        keys = ("arch", "precision", "weights", "tensorrt", "target", "input")
        out["metadata"] = {k: sidecar.get(k) for k in keys}
    if layers:
        out["layers"] = _engine_layers(path)
    return out


def _engine_layers(path: Path) -> Any:
    """Per-layer information needs the engine deserialized: a matching TensorRT and a GPU."""
    try:
        from resnest_deploy.loaders import open_runner
        from resnest_deploy.runners.options import RunnerOptions

        runner: Any
        with open_runner(path, RunnerOptions(cache=False)) as runner:
            inspector = runner.engine.create_engine_inspector()
            text = inspector.get_engine_information(runner.trt.LayerInformationFormat.JSON)
            return json.loads(text).get("Layers", text)
    except Exception as e:  # the rest of inspect is still useful
        return f"unavailable: {first_line(e)}"
