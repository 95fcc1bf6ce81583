"""What every artifact says about itself: a sidecar ``FILE.json`` and, for ONNX, ``metadata_props``."""

from __future__ import annotations

import collections
import datetime as _dt
import importlib.metadata
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnest_deploy._io import read_json_object, sha256_file, sidecar_path
from resnest_deploy.errors import ArtifactError
from resnest_deploy.formats import INPUT_FORMATS
from resnest_deploy.models.registry import ModelSpec
from resnest_deploy.onnx_files import load_onnx

METADATA_KEY = "resnest_deploy"
_TOOLS = (
    "resnest-deploy",
    "torch",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "onnxscript",
    "nvidia-modelopt",
    "tensorrt",
    "tensorrt-rtx-cu13",
    "polygraphy",
    "openvino",
)


#: said wherever an artifact made from random weights shows a figure or a prediction
RANDOM_WEIGHTS_NOTE = (
    "made from random weights: for speed and structure only (accuracy figures are recorded, not judged; "
    "predictions mean nothing)"
)


def random_weights(meta: dict[str, Any]) -> bool:
    """Whether an artifact's metadata records random weights: a network never trained has near-uniform
    logits, so how closely a reduced-precision copy follows them measures noise, not the conversion."""
    weights = meta.get("weights")
    return isinstance(weights, dict) and weights.get("kind") == "random"


def tool_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for dist in _TOOLS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def preprocessing(spec: ModelSpec, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    p = spec.pretrained
    return {
        "input_size": list(input_size or (p.input_size, p.input_size)),
        "resize_shorter_side": p.resize_size,
        "crop_pct": p.crop_pct,
        "interpolation": p.interpolation,
        "mean": list(p.mean),
        "std": list(p.std),
        "layout": "NCHW, RGB, float32 in [0, 1] before normalisation",
    }


_SPEED_FLAGS = frozenset({"avx", "avx2", "fma", "f16c", "avx_vnni", "sse4_2"})


def cpu_flags() -> list[str]:
    """The CPU flags that decide which kernels run (AVX2, AVX-512, VNNI, BF16, AMX, ...)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        have = set(next(ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in have if f in _SPEED_FLAGS or f.startswith(("avx512", "amx")))


def machine() -> dict[str, Any]:
    """The CPU (and GPU, when torch sees one) that figures were measured on."""
    import contextlib
    import platform

    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_flags": cpu_flags(),  # what decides CPU kernels: compare only figures from one run
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "date": now(),
    }
    from resnest_deploy._cuda import device_name, gpu_count

    if gpu_count():
        info["gpu"] = device_name(0)
    return info | {"tools": tool_versions()}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_sidecar(artifact: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any] | None:
    """``artifact``'s sidecar, checked: a JSON object of the expected shape that describes this very
    file (its recorded sha256); ``None`` when there is none. Anything else is an error."""
    path = sidecar_path(artifact)
    if not path.exists():
        return None
    fix = f"delete it or recreate {Path(artifact).name} with resnest-deploy"
    data = validate(read_json_object(path, "sidecar", fix), f"sidecar {path}")
    recorded = (data.get("file") or {}).get("sha256")
    if verify and recorded and Path(artifact).is_file() and sha256_file(artifact) != recorded:
        raise ArtifactError(
            f"sidecar {path} describes another file than {Path(artifact).name} (sha256 differs: replaced, "
            f"or an interrupted write); {fix}"
        )
    return data


_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: top-level keys we read, and the JSON type each must have when present (None is always allowed)
_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "arch": str,
    "precision": str,
    "target": (str, dict),
    "num_classes": int,
    "weights": dict,
    "input": dict,
    "output": dict,
    "preprocessing": dict,
    "tensorrt": dict,
    "source_onnx": dict,
    "file": dict,
    "parity": dict,
    "conversion": dict,
    "reference": dict,
}


def validate(data: Any, where: str) -> dict[str, Any]:
    """Metadata from a file is untrusted: check the type of everything the tool reads from it."""

    def bad(key: str, want: str) -> ArtifactError:
        return ArtifactError(f"{where} has a malformed {key!r} (expected {want}); re-export the artifact")

    if not isinstance(data, dict):
        raise ArtifactError(f"{where} is not a JSON object; re-export the artifact")
    for key, kind in _TYPES.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise bad(key, getattr(kind, "__name__", "an object or a string"))
    if data.get("precision") is not None and data["precision"] not in _PRECISIONS:
        raise bad("precision", " or ".join(_PRECISIONS))
    for section in ("weights", "file", "source_onnx"):
        for k, v in (data.get(section) or {}).items():
            if v is not None and not isinstance(v, str | int | float):
                raise bad(f"{section}.{k}", "a string or number")
    inp = data.get("input") or {}
    shape = inp.get("shape")
    if shape is not None and not (
        isinstance(shape, list) and all(isinstance(d, int | str) and not isinstance(d, bool) for d in shape)
    ):
        raise bad("input.shape", "a list of ints and names")
    fmt = inp.get("format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("name") in INPUT_FORMATS):
        raise bad("input.format", f"an object naming one of {', '.join(INPUT_FORMATS)}")
    for key, stats in [(f"input.format.{k}", (fmt or {}).get(k)) for k in ("mean", "std")] + [
        (f"preprocessing.{k}", (data.get("preprocessing") or {}).get(k)) for k in ("mean", "std")
    ]:
        if stats is not None and not _three_numbers(stats, positive=key.endswith("std")):
            raise bad(key, f"three finite numbers, mean in {MEAN_RANGE}, std in {STD_RANGE}")
    profile = inp.get("profile")
    if profile is not None and not (
        isinstance(profile, dict)
        and all(
            isinstance(v, list) and all(isinstance(d, int) and d >= 1 for d in v) for v in profile.values()
        )
    ):
        raise bad("input.profile", "min/opt/max lists of positive ints")
    return data


#: normalisation statistics a real model has (fractions of 255): JSON also parses NaN and Infinity
MEAN_RANGE = (-10.0, 10.0)
STD_RANGE = (1e-4, 100.0)


def _three_numbers(v: Any, positive: bool) -> bool:
    ok = (
        isinstance(v, list)
        and len(v) == 3
        and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    )
    lo, hi = STD_RANGE if positive else MEAN_RANGE
    return ok and all(lo <= x <= hi for x in v)


#: ops that only appear in a quantized graph
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
    }
)


def graph_precision(model: Any) -> str:
    """What an ``onnx.ModelProto`` computes in, read from the graph itself rather than a label:
    int8 (any quantized op), fp16 / bf16 (weights or casts of that type), else fp32."""
    if any(n.op_type in QUANTIZED_OPS for n in model.graph.node):
        return "int8"
    elem_types = {t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Cast":
            elem_types |= {a.i for a in node.attribute if a.name == "to"}
    if 10 in elem_types:  # TensorProto.FLOAT16
        return "fp16"
    if 16 in elem_types:  # TensorProto.BFLOAT16
        return "bf16"
    return "fp32"


def embed(model: Any, data: dict[str, Any]) -> None:
    """Store ``data`` in an ``onnx.ModelProto``'s metadata_props (JSON plus a few flat keys)."""
    flat = {METADATA_KEY: json.dumps(data, default=str)}
    for key in ("arch", "precision", "num_classes"):
        if data.get(key) is not None:
            flat[key] = str(data[key])
    del model.metadata_props[:]
    for k, v in flat.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def from_onnx(model: Any) -> Any:
    """The raw embedded metadata (JSON of any type: untrusted until ``validate``), or ``None``."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError as e:
                raise ArtifactError(
                    f"the {METADATA_KEY} metadata of this ONNX file is not valid JSON ({e.msg}); re-export it"
                ) from e
    return None


def file_entry(written: Path, name: str) -> dict[str, Any]:
    """The sidecar's ``file`` entry for bytes written at ``written`` (a temp file) to be called ``name``."""
    return {"file": {"name": name, "bytes": written.stat().st_size, "sha256": sha256_file(written)}}


def file_and_graph(written: Path, name: str, model: Any) -> dict[str, Any]:
    """The ``file`` and ``graph`` entries of an ONNX file's sidecar, from the file as written."""
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return file_entry(written, name) | {
        "graph": {"nodes": len(model.graph.node), "op_counts": dict(ops.most_common())}
    }


def of_onnx(model: Any, path: Path) -> dict[str, Any]:
    """An ONNX model's embedded metadata, checked: the right shape, and a precision label that agrees
    with the graph (``{}`` if it has none)."""
    found = from_onnx(model)
    meta = validate(found, f"{path.name}'s metadata") if found is not None else {}
    actual = graph_precision(model)
    label = meta.get("precision")
    if label is not None and label != actual:
        raise ArtifactError(
            f"{path} is labelled {label} but its graph is {actual}; the metadata was edited or the file "
            "replaced: re-create it with resnest-deploy"
        )
    return {**meta, "precision": actual} if meta else {}


def checked_onnx_meta(path: Path, sidecar: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """An ONNX file's checked metadata: embedded, else its sidecar's (``sidecar()`` reads it), with
    the precision its graph computes in."""
    model = load_onnx(path)  # an unreadable file is an error, not "no metadata"
    meta = of_onnx(model, path)
    if not meta:
        meta = sidecar() or {}
        if meta:
            meta = {**meta, "precision": graph_precision(model)}
    return meta


def of_artifact(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an ONNX file or engine says about itself, checked: ``artifacts.describe(path).meta``,
    the one description of an artifact (kept for callers that want the dict alone)."""
    from resnest_deploy.artifacts import describe

    return describe(path).meta
