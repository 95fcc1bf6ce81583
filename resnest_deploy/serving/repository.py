"""Triton model repositories written from what an artifact says about itself (no torch, no Triton).

One model per artifact, named after the file's stem, version folder ``1/``:
``tensorrt_plan`` for engines, ``onnxruntime_onnx`` for ONNX files, or (``python_backend``) a
``python`` model whose ``model.py`` runs the file through this package's runners, which is what
``serve`` uses with the CPU-only ``tritonserver`` that ``nvidia-pytriton`` bundles. Input and output
names, types and dims come from the artifact (the batch dim left out); ``max_batch_size`` from the
engine's profile or the export's dynamic batch; labels so the classification extension answers with
names; warm-up requests for the smallest and largest batch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnest_deploy import formats, metadata
from resnest_deploy._io import atomic_path, sha256_file
from resnest_deploy.artifacts import deployable
from resnest_deploy.errors import ArtifactError
from resnest_deploy.limits import MAX_BATCH


class Enum(str):
    """A protobuf enum value (written bare), as opposed to a string (written quoted)."""


TRITON_TYPES = {"float32": Enum("TYPE_FP32"), "float16": Enum("TYPE_FP16"), "uint8": Enum("TYPE_UINT8")}
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 500
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ModelEntry:
    """One model of a repository, as written."""

    name: str
    artifact: Path
    platform: str  # onnxruntime_onnx, tensorrt_plan or python
    max_batch_size: int
    config: str
    notes: list[str] = field(default_factory=list)


def _pb(value: Any, indent: int = 0) -> str:
    """A Python value in protobuf text format (dicts are messages, lists repeated fields)."""
    pad = "  " * indent
    if isinstance(value, dict):
        lines = []
        for key, v in value.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                lines.append(f"{pad}{key} [")
                lines.append(",\n".join(f"{pad}  {{\n{_pb(item, indent + 2)}\n{pad}  }}" for item in v))
                lines.append(f"{pad}]")
            elif isinstance(v, dict):
                lines.append(f"{pad}{key} {{\n{_pb(v, indent + 1)}\n{pad}}}")
            else:
                lines.append(f"{pad}{key}: {_scalar(v)}")
        return "\n".join(lines)
    raise TypeError(f"cannot write {type(value).__name__} as a message")


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[ " + ", ".join(_scalar(x) for x in v) + " ]"
    if isinstance(v, Enum):
        return str(v)  # written bare: TYPE_FP32, KIND_CPU
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


@dataclass(frozen=True)
class _Io:
    """What the artifact's metadata says about its input and output."""

    input_name: str
    input_type: Enum
    input_dims: list[int]
    layout: str
    output_name: str
    num_classes: int
    batch_max: int | None  # the profile's or static export's batch; None: dynamic, unbounded
    static_batch: bool


def _io_of(meta: dict[str, Any], path: Path) -> _Io:
    inp, out = meta.get("input") or {}, meta.get("output") or {}
    shape = inp.get("shape") or (inp.get("profile") or {}).get("max")
    if not shape or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise ArtifactError(
            f"{path} has input shape {shape}; a Triton model needs fixed H and W "
            "(re-export without --dynamic-hw)"
        )
    profile_max = (inp.get("profile") or {}).get("max")
    static = isinstance(shape[0], int) and not profile_max
    dtype = str(inp.get("dtype") or "float32")
    if dtype not in TRITON_TYPES:
        raise ArtifactError(f"{path} takes {dtype} input, which this tool cannot describe to Triton")
    return _Io(
        input_name=str(inp.get("name") or formats.INPUT_NAME),
        input_type=TRITON_TYPES[dtype],
        input_dims=[int(d) for d in shape[1:]],
        layout=str(inp.get("layout") or "NCHW"),
        output_name=str(out.get("name") or formats.OUTPUT_NAME),
        num_classes=int(meta.get("num_classes") or 1000),
        batch_max=profile_max[0] if profile_max else shape[0] if static else None,
        static_batch=static,
    )


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
    """The config.pbtxt of one artifact (nothing written)."""
    info = deployable(artifact, "a Triton model")
    path, kind, meta = Path(info.name), info.kind, info.meta
    name = name or path.stem
    if not _NAME.match(name):
        raise ArtifactError(f"model name {name!r} is not a valid Triton model name; pass --name")
    io = _io_of(meta, path)
    notes: list[str] = []
    trt = meta.get("tensorrt") or {}
    if kind == "engine" and not python_backend:
        if trt.get("flavour") != "tensorrt":
            raise ArtifactError(
                f"{path} was built by {trt.get('flavour') or 'an unknown TensorRT'}, but Triton's "
                "tensorrt_plan backend is full TensorRT: rebuild with --backend tensorrt, or serve the ONNX "
                "file (onnxruntime_onnx, optionally with --tensorrt-accelerator)"
            )
        version = trt.get("version", "?")
        notes.append(
            f"{name}: built with TensorRT {version}. Serve it with the tritonserver container whose TensorRT "
            f"is {version} (NGC releases of nvcr.io/nvidia/tritonserver:<yy.mm>-py3 and "
            "nvcr.io/nvidia/tensorrt:<yy.mm>-py3 of the same yy.mm carry the same TensorRT: build there); "
            "another version refuses the plan."
        )
    if kind == "engine" and gpu is False and not python_backend:
        gpu = True  # TensorRT plans only run on GPUs
    limit = io.batch_max
    if max_batch_size is not None:
        if limit is not None and max_batch_size > limit:
            what = "engine's optimization profile" if kind == "engine" else "export's static batch"
            raise ArtifactError(
                f"max_batch_size {max_batch_size} is above the {what} maximum ({limit}) of {path.name}; "
                f"use --max-batch-size {limit} or rebuild with a larger --batch-profile"
            )
        if not 1 <= max_batch_size <= MAX_BATCH:
            raise ArtifactError(f"max_batch_size must be 1..{MAX_BATCH}, got {max_batch_size}")
    batch = max_batch_size or (limit if limit is not None else DEFAULT_MAX_BATCH)
    if io.static_batch and batch != limit:
        raise ArtifactError(f"{path.name} has a static batch of {limit}; it cannot batch {batch}")
    if queue_delay_us < 0:
        raise ArtifactError(f"the queue delay must be 0 or more microseconds, got {queue_delay_us}")
    platform = "python" if python_backend else "tensorrt_plan" if kind == "engine" else "onnxruntime_onnx"
    dims_input: dict[str, Any] = {"name": io.input_name, "data_type": io.input_type, "dims": io.input_dims}
    if io.input_dims[0] == 3 or io.layout == "NHWC":
        dims_input["format"] = Enum("FORMAT_NHWC" if io.layout == "NHWC" else "FORMAT_NCHW")
    config: dict[str, Any] = {"name": name}
    config["backend" if python_backend else "platform"] = platform
    config |= {
        "max_batch_size": batch,
        "input": [dims_input],
        "output": [
            {
                "name": io.output_name,
                "data_type": Enum("TYPE_FP32"),
                "dims": [io.num_classes],
                "label_filename": "labels.txt",
            }
        ],
        "dynamic_batching": {"max_queue_delay_microseconds": queue_delay_us},
        "instance_group": [{"count": instances, "kind": Enum("KIND_GPU" if gpu else "KIND_CPU")}],
        "model_warmup": [
            {
                "name": f"batch_{b}",
                "batch_size": b,
                "inputs": {
                    "key": io.input_name,
                    "value": {"data_type": io.input_type, "dims": io.input_dims, "zero_data": True},
                },
            }
            for b in sorted({1, batch})
        ],
    }
    if tensorrt_accelerator:
        if kind != "onnx" or python_backend:
            raise ArtifactError("--tensorrt-accelerator applies to ONNX files served by onnxruntime_onnx")
        precision = {"fp16": "FP16", "int8": "INT8"}.get(str(meta.get("precision")), "FP32")
        config["optimization"] = {
            "execution_accelerators": {
                "gpu_execution_accelerator": [
                    {
                        "name": "tensorrt",
                        "parameters": {"key": "precision_mode", "value": precision},
                    }
                ]
            }
        }
    provenance = {
        "arch": meta.get("arch"),
        "precision": meta.get("precision"),
        "sha256": sha256_file(path),
        "input_format": formats.InputForm.of(meta).name,
    }
    if python_backend:  # what runs the file inside the python model (see --provider)
        if provider not in ("cpu", "openvino", "openvino-bf16", "cuda", "tensorrt"):
            raise ArtifactError(f"unknown provider {provider!r} for a python-backend model")
        provenance["provider"] = provider
    config["parameters"] = [{"key": k, "value": {"string_value": str(v)}} for k, v in provenance.items()]
    text = _pb(config) + "\n"
    return ModelEntry(name, path, platform, batch, text, notes)


def labels_for(num_classes: int) -> list[str]:
    from resnest_deploy.predict import class_names

    return class_names(num_classes)


PYTHON_MODEL = Path(__file__).with_name("triton_model.py")


def write_repository(
    artifacts: list[str | os.PathLike[str]],
    repo: str | os.PathLike[str],
    *,
    names: list[str] | None = None,
    **options: Any,
) -> list[ModelEntry]:
    """Write one model per artifact under ``repo``; refuses to overwrite an existing model folder."""
    repo = Path(repo)
    if names is not None and len(names) != len(artifacts):
        raise ArtifactError(f"{len(names)} --name for {len(artifacts)} artifacts; give one per artifact")
    entries = [model_config(a, name=names[i] if names else None, **options) for i, a in enumerate(artifacts)]
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise ArtifactError(f"two artifacts would be model {e.name!r}; name them apart with --name")
        seen.add(e.name)
        if (repo / e.name).exists():
            raise ArtifactError(f"{repo / e.name} exists; choose another --repo or remove it")
        if repo.resolve() in e.artifact.resolve().parents:
            raise ArtifactError(
                f"{e.artifact} is inside the repository {repo}; write the repository elsewhere"
            )
    for e in entries:
        _write_model(repo, e)
    if any(e.notes for e in entries):
        with atomic_path(repo / "TENSORRT_PAIRING.txt") as tmp:
            tmp.write_text("\n".join(n for e in entries for n in e.notes) + "\n")
    return entries


def _write_model(repo: Path, e: ModelEntry) -> None:
    folder = repo / e.name
    staging = repo / f".{e.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "1").mkdir(parents=True)
    try:
        suffix = "plan" if e.artifact.suffix.lower() != ".onnx" else "onnx"
        shutil.copyfile(e.artifact, staging / "1" / f"model.{suffix}")
        sidecar = metadata.sidecar_path(e.artifact)
        if sidecar.is_file():
            shutil.copyfile(sidecar, staging / "1" / f"model.{suffix}.json")
        if e.platform == "python":
            shutil.copyfile(PYTHON_MODEL, staging / "1" / "model.py")
        meta = metadata.of_artifact(e.artifact)
        (staging / "labels.txt").write_text(
            "\n".join(labels_for(int(meta.get("num_classes") or 1000))) + "\n"
        )
        (staging / "config.pbtxt").write_text(e.config)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
