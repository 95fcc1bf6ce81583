"""What every artifact says about itself: a sidecar ``FILE.json`` and, for ONNX, ``metadata_props``."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Any

from resnest_deploy._io import write_json
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
