"""What a file takes and gives, read from the file itself (no torch, no TensorRT).

Metadata can be edited; the graph cannot lie about what ONNX Runtime or TensorRT will run. So the
configs written for other tools (Triton, nvinfer) take names, types, dims and class counts from the
ONNX graph, and for an engine (opaque without TensorRT) from a sidecar that describes its very bytes,
every number within this tool's bounds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnest_deploy import formats
from resnest_deploy.errors import ArtifactError
from resnest_deploy.limits import MAX_BATCH
from resnest_deploy.onnx_files import load_onnx

ONNX_TYPES = {1: "float32", 10: "float16", 2: "uint8"}  # onnx.TensorProto elem types
MAX_SIDE = 8192  # an input's height or width
MAX_CLASSES = 100_000
#: what an input or output name may hold: it is written into other tools' config files
NAME = r"[A-Za-z0-9_.:/-]{1,128}"


def of(path: Path, kind: str, meta: dict[str, Any]) -> Io:
    """``kind`` is 'onnx' or 'engine' (``runners.artifact_kind``)."""
    io = _engine(path, meta) if kind == "engine" else _onnx(path, meta)
    for name in (io.input_name, io.output_name):
        if not re.fullmatch(NAME, name):
            raise ArtifactError(f"{path.name} names a tensor {name!r}; re-export it (names are {NAME})")
    return io


@dataclass(frozen=True)
class Io:
    """An artifact's input and output as the file itself defines them (its graph, or for an engine
    the profile its verified sidecar records), within this tool's bounds."""

    input_name: str
    dtype: str  # float32, float16 or uint8
    input_dims: list[int]
    layout: str
    output_name: str
    num_classes: int
    batch_min: int
    batch_max: int | None  # the profile's or static export's batch; None: dynamic, unbounded
    static_batch: bool

    @property
    def sample_elements(self) -> int:
        return math.prod(self.input_dims)


def _bounded(value: Any, what: str, path: Path, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise ArtifactError(f"{path.name} records {what} {value!r}, outside 1..{maximum}; rebuild it")
    return value


def _onnx(path: Path, meta: dict[str, Any]) -> Io:
    """Names, types and dims from the graph; the metadata only adds the input form's layout."""
    model = load_onnx(path)
    inp, out = model.graph.input[0], model.graph.output[0]
    dtype = ONNX_TYPES.get(inp.type.tensor_type.elem_type)
    if dtype is None:
        raise ArtifactError(
            f"{path.name} takes input of ONNX type {inp.type.tensor_type.elem_type}, "
            "which this tool cannot describe to Triton"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_value if d.HasField("dim_value") else None for d in out.type.tensor_type.shape.dim]
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise ArtifactError(
            f"{path.name} has input shape {dims}; a Triton model needs fixed H and W "
            "(re-export without --dynamic-hw)"
        )
    if len(out_dims) != 2 or out_dims[1] is None:
        raise ArtifactError(f"{path.name} has output shape {out_dims}; expected batch x classes")
    for d in dims[1:]:
        _bounded(d, "an input dimension", path, MAX_SIDE)
    form = formats.InputForm.of(meta)
    batch = dims[0]
    return Io(
        input_name=inp.name,
        dtype=dtype,
        input_dims=[int(d) for d in dims[1:] if d is not None],
        layout=form.layout,
        output_name=out.name,
        num_classes=_bounded(out_dims[1], "classes", path, MAX_CLASSES),
        batch_min=1,
        batch_max=_bounded(batch, "a static batch", path, MAX_BATCH) if batch is not None else None,
        static_batch=batch is not None,
    )


def _engine(path: Path, meta: dict[str, Any]) -> Io:
    """An engine is opaque without TensorRT: its verified sidecar's profile, bounded."""
    inp, out = meta.get("input") or {}, meta.get("output") or {}
    profile = inp.get("profile") or {}
    lo, hi = profile.get("min"), profile.get("max")
    if not (isinstance(lo, list) and isinstance(hi, list) and len(lo) == len(hi) == 4):
        raise ArtifactError(f"{path.name}'s sidecar records no 4-d optimization profile; rebuild it")
    form = formats.InputForm.of(meta)
    dtype = formats.dtype(form.name)
    for d in hi[1:]:
        _bounded(d, "an input dimension", path, MAX_SIDE)
    return Io(
        input_name=str(inp.get("name") or formats.INPUT_NAME),
        dtype=dtype,
        input_dims=[int(d) for d in hi[1:]],
        layout=form.layout,
        output_name=str(out.get("name") or formats.OUTPUT_NAME),
        num_classes=_bounded(meta.get("num_classes"), "classes", path, MAX_CLASSES),
        batch_min=_bounded(lo[0], "a profile minimum", path, MAX_BATCH),
        batch_max=_bounded(hi[0], "a profile maximum", path, MAX_BATCH),
        static_batch=False,
    )
