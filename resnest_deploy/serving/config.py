"""What Triton is told about one artifact (config.pbtxt), decided from the file itself.

One model per artifact, named after the file's stem, version folder ``1/``: ``tensorrt_plan`` for
engines, ``onnxruntime_onnx`` for ONNX files, or (``python_backend``) a ``python`` model whose
``model.py`` runs the file through this package's runners (what ``serve`` uses). Input and output
names, types and dims come from the graph (``interface``); ``max_batch_size`` from the engine's
profile or the export's batch, within this tool's bounds; labels so the classification extension
answers with names; warm-up at the smallest and largest batch. Nothing is written here
(``serving.repository`` writes).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnest_deploy import formats
from resnest_deploy._io import sha256_file
from resnest_deploy.artifacts import deployable
from resnest_deploy.data import Transform
from resnest_deploy.engine.flavour import engine_flavour
from resnest_deploy.errors import ArtifactError, UnknownArchError
from resnest_deploy.limits import MAX_BATCH, check_positive
from resnest_deploy.models import ModelSpec, get_spec
from resnest_deploy.serving.pbtxt import Enum, to_text

TRITON_TYPES = {"float32": Enum("TYPE_FP32"), "float16": Enum("TYPE_FP16"), "uint8": Enum("TYPE_UINT8")}
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 500
MAX_NAME = 100
#: the warm-up batches, zero-filled, may take at most this much memory
MAX_WARMUP_BYTES = 2**30
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_servable(paths: list[Path]) -> None:
    """``serve`` takes artifacts and writes its own repository: a folder is refused first, before
    anything starts, and a Triton model repository with the files inside it to serve instead."""
    for path in paths:
        if not path.is_dir():
            continue
        models = sorted(path.glob("*/config.pbtxt"))
        if not models:
            raise ArtifactError(
                f"{path} is a folder; serve takes artifacts: .onnx files or engines (.plan), e.g. "
                "resnest-deploy serve models/resnest50/resnest50.onnx"
            )
        files = [
            f for m in models for f in sorted(m.parent.glob("*/model.*")) if f.suffix in (".onnx", ".plan")
        ]
        example = " ".join(str(f) for f in files[:3]) or f"{path}/<model>/1/model.onnx"
        example += "".join(f" --name {f.parent.parent.name}" for f in files[:3])
        count = f"{len(models)} model{'s' if len(models) != 1 else ''}"
        raise ArtifactError(
            f"{path} is a Triton model repository ({count}); serve takes artifacts and writes "
            f"its own repository: serve the files in it (resnest-deploy serve {example}), or run "
            f"tritonserver --model-repository {path} yourself"
        )


def transform_record(spec: ModelSpec, hw: tuple[int, int]) -> dict[str, Any]:
    """The eval transform of ``spec`` at ``hw`` as plain numbers (``serving.client`` reads it back):
    resize the shorter side, centre-crop, RGB in [0, 1], normalise; then the input form."""
    t = Transform.from_pretrained(spec.pretrained, *hw)
    return {
        "crop": list(t.hw),
        "resize": t.resize,
        "interpolation": t.interpolation,
        "mean": list(t.mean),
        "std": list(t.std),
    }


@dataclass
class ModelEntry:
    """One model of a repository, as written."""

    name: str
    artifact: Path
    platform: str  # onnxruntime_onnx, tensorrt_plan or python
    max_batch_size: int
    config: str
    notes: list[str] = field(default_factory=list)
    input_dims: list[int] = field(default_factory=list)  # one input image, without the batch dim
    num_classes: int = 0

    @property
    def sample_elements(self) -> int:
        return math.prod(self.input_dims)


def model_config(
    artifact: str | os.PathLike[str],
    *,
    name: str | None = None,
    python_backend: bool = False,
    max_batch_size: int | None = None,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    gpu: bool = False,
    tensorrt_accelerator: bool = False,
    instances: int = 1,
    provider: str = "cpu",
) -> ModelEntry:
    """The config.pbtxt of one artifact (nothing written). Everything in it comes from the file
    itself, within this tool's bounds: metadata is only trusted for what the graph cannot say.
    Messages name parameters (``{name}``); the CLI writes them as its options."""
    info = deployable(artifact, "a Triton model")
    path, kind, meta = Path(info.name), info.kind, info.meta
    name = path.stem if name is None else name
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise ArtifactError(
            (
                f"model name {name[:MAX_NAME]!r} is not a valid Triton model name (letters, digits, "
                f"'_', '.', '-', at most {MAX_NAME}); pass {{name}}"
            ),
            param="name",
        )
    check_positive(instances, "instances", maximum=64)
    io = info.io
    notes = _engine_notes(path, name, kind, meta) if kind == "engine" and not python_backend else []
    if io.batch_min > 1:
        raise ArtifactError(
            f"{path.name}'s optimization profile starts at batch {io.batch_min}, but Triton's batcher forms "
            "batches from 1; rebuild with --batch-profile 1,OPT,MAX"
        )
    # a python model's instances are where its runner runs; an engine always runs on a GPU
    runs_on_gpu = kind == "engine" or provider in ("cuda", "tensorrt")
    gpu = runs_on_gpu if python_backend else gpu or kind == "engine"
    batch = _batch(io, kind, path, max_batch_size)
    if queue_delay_us < 0:
        raise ArtifactError(f"the queue delay must be 0 or more microseconds, got {queue_delay_us}")
    platform = "python" if python_backend else "tensorrt_plan" if kind == "engine" else "onnxruntime_onnx"
    config: dict[str, Any] = {"name": name}
    config["backend" if python_backend else "platform"] = platform
    config |= _tensors(io, batch)
    config["dynamic_batching"] = {"max_queue_delay_microseconds": queue_delay_us}
    config["instance_group"] = [{"count": instances, "kind": Enum("KIND_GPU" if gpu else "KIND_CPU")}]
    config["model_warmup"] = _warmup(io, batch)
    if tensorrt_accelerator:
        if kind != "onnx" or python_backend:
            raise ArtifactError(
                "{tensorrt_accelerator} applies to ONNX files served by onnxruntime_onnx",
                param="tensorrt_accelerator",
            )
        config["optimization"] = _accelerator(meta)
    provenance = _provenance(path, meta, io)
    if python_backend:  # what runs the file inside the python model (see `provider`)
        if provider not in ("cpu", "openvino", "openvino-bf16", "cuda", "tensorrt"):
            raise ArtifactError(f"unknown provider {provider!r} for a python-backend model")
        if kind == "engine" and provider not in ("cpu", "tensorrt", "cuda"):
            raise ArtifactError(
                f"{{provider}} {provider} runs .onnx files; an engine runs in TensorRT",
                param="provider",
            )
        provenance["provider"] = provider
        if not gpu:  # several CPU instances share the cores instead of each taking them all
            provenance["threads"] = max(1, (os.cpu_count() or 1) // instances)
    config["parameters"] = [{"key": k, "value": {"string_value": str(v)}} for k, v in provenance.items()]
    text = to_text(config) + "\n"
    return ModelEntry(name, path, platform, batch, text, notes, io.input_dims, io.num_classes)


def _engine_notes(path: Path, name: str, kind: str, meta: dict[str, Any]) -> list[str]:
    """An engine served by tensorrt_plan: full TensorRT's, and the container its version needs."""
    flavour = engine_flavour(path)
    if flavour != "tensorrt":
        raise ArtifactError(
            f"{path} was built by {flavour} (its header says so), but Triton's tensorrt_plan backend is "
            "full TensorRT: rebuild with --backend tensorrt, or serve the ONNX file (onnxruntime_onnx, "
            "optionally with {tensorrt_accelerator})",
            param="tensorrt_accelerator",
        )
    version = (meta.get("tensorrt") or {}).get("version", "?")
    return [
        f"{name}: built with TensorRT {version}. Serve it with the tritonserver container whose TensorRT "
        f"is {version} (NGC releases of nvcr.io/nvidia/tritonserver:<yy.mm>-py3 and "
        "nvcr.io/nvidia/tensorrt:<yy.mm>-py3 of the same yy.mm carry the same TensorRT: build there); "
        "another version refuses the plan."
    ]


def _batch(io: Any, kind: str, path: Path, max_batch_size: int | None) -> int:
    """max_batch_size: as asked, within the file's profile or static batch, and the warm-up's bytes."""
    limit = io.batch_max
    if max_batch_size is not None:
        if limit is not None and max_batch_size > limit:
            what = "engine's optimization profile" if kind == "engine" else "export's static batch"
            raise ArtifactError(
                (
                    f"max_batch_size {max_batch_size} is above the {what} maximum ({limit}) of "
                    f"{path.name}; use {{max_batch_size}} {limit} or rebuild with a larger --batch-profile"
                ),
                param="max_batch_size",
            )
        check_positive(max_batch_size, "max_batch_size", maximum=MAX_BATCH)
    batch: int = max_batch_size or (limit if limit is not None else DEFAULT_MAX_BATCH)
    if io.static_batch and batch != limit:
        raise ArtifactError(f"{path.name} has a static batch of {limit}; it cannot batch {batch}")
    itemsize = {"uint8": 1, "float16": 2}.get(io.dtype, 4)
    if batch * io.sample_elements * itemsize > MAX_WARMUP_BYTES:
        raise ArtifactError(
            (
                f"a batch of {batch} {io.input_dims} inputs needs more than {MAX_WARMUP_BYTES >> 20} "
                f"MiB; choose a smaller {{max_batch_size}}"
            ),
            param="max_batch_size",
        )
    return batch


def _tensors(io: Any, batch: int) -> dict[str, Any]:
    dims_input: dict[str, Any] = {
        "name": io.input_name,
        "data_type": TRITON_TYPES[io.dtype],
        "dims": io.input_dims,
    }
    if io.input_dims[0] == 3 or io.layout == "NHWC":
        dims_input["format"] = Enum("FORMAT_NHWC" if io.layout == "NHWC" else "FORMAT_NCHW")
    output = {
        "name": io.output_name,
        "data_type": Enum("TYPE_FP32"),
        "dims": [io.num_classes],
        "label_filename": "labels.txt",
    }
    return {"max_batch_size": batch, "input": [dims_input], "output": [output]}


def _warmup(io: Any, batch: int) -> list[dict[str, Any]]:
    value = {"data_type": TRITON_TYPES[io.dtype], "dims": io.input_dims, "zero_data": True}
    return [
        {"name": f"batch_{b}", "batch_size": b, "inputs": {"key": io.input_name, "value": value}}
        for b in sorted({io.batch_min, batch})
    ]


def _accelerator(meta: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime's TensorRT execution accelerator, at the file's precision."""
    precision = {"fp16": "FP16", "int8": "INT8"}.get(str(meta.get("precision")), "FP32")
    trt = {"name": "tensorrt", "parameters": {"key": "precision_mode", "value": precision}}
    return {"execution_accelerators": {"gpu_execution_accelerator": [trt]}}


def _provenance(path: Path, meta: dict[str, Any], io: Any) -> dict[str, Any]:
    """What the model's parameters record: where it came from, and how a client preprocesses."""
    provenance = {
        "arch": meta.get("arch"),
        "precision": meta.get("precision"),
        "sha256": sha256_file(path),
        "input_format": formats.InputForm.of(meta).name,
    }
    hw = formats.InputForm.of(meta).hw([0, *io.input_dims])
    if all(isinstance(v, int) for v in hw):
        # what a client must do to an image before sending it: the transform local `predict` uses
        with contextlib.suppress(UnknownArchError):  # an arch this version does not know: none
            provenance["preprocessing"] = json.dumps(transform_record(get_spec(str(meta["arch"])), hw))
    return provenance
