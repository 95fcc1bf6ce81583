"""What every artifact says about itself: a sidecar ``FILE.json`` and, for ONNX, ``metadata_props``."""

from __future__ import annotations

import collections
import datetime as _dt
import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Any

from resnest_deploy._io import load_onnx, sha256_file, write_json
from resnest_deploy.models.registry import ModelSpec

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
)


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
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "date": now(),
    }
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        info["gpu"] = sys.modules["torch"].cuda.get_device_name()
    return info | {"tools": tool_versions()}


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(artifact)}.json")


def write_sidecar(artifact: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``artifact``'s sidecar; if that fails, remove the artifact: never one without the other."""
    path = sidecar_path(artifact)
    try:
        write_json(path, data)
    except BaseException:
        Path(artifact).unlink(missing_ok=True)
        raise
    return path


def read_sidecar(artifact: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = sidecar_path(artifact)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


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


def from_onnx(model: Any) -> dict[str, Any] | None:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                return None
    return None


def file_and_graph(path: Path, model: Any) -> dict[str, Any]:
    """The ``file`` and ``graph`` entries of an ONNX file's sidecar, from the file as written."""
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return {
        "file": {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)},
        "graph": {"nodes": len(model.graph.node), "op_counts": dict(ops.most_common())},
    }


def of_artifact(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an ONNX file or engine says about itself (embedded metadata, else its sidecar)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        found = from_onnx(load_onnx(path))  # an unreadable file is an error, not "no metadata"
        if found:
            return found
    return read_sidecar(path) or {}
