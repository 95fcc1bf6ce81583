"""The FP32 export a conversion starts from, and where its result goes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from resnest_deploy import metadata
from resnest_deploy._io import require_file
from resnest_deploy.errors import ArtifactError
from resnest_deploy.formats import InputForm
from resnest_deploy.onnx_files import load_onnx


def default_output(src: str | os.PathLike[str], precision: str, target: str) -> Path:
    """``m.onnx`` -> ``m.fp16.onnx``, ``m.int8.onnx`` (TensorRT) or ``m.int8-cpu.onnx``."""
    src = Path(src)
    suffix = precision if target == "tensorrt" else f"{precision}-{target}"
    return src.with_name(f"{src.stem}.{suffix}.onnx")


def read_source(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an FP32 resnest-deploy export and its metadata, or say why it is not one."""
    path = require_file(path, "ONNX file")
    meta = metadata.of_onnx(load_onnx(path), path)
    if not meta.get("arch"):
        raise ArtifactError(
            f"{path} is not a resnest-deploy export (no resnest_deploy metadata); "
            "create it with `resnest-deploy export --arch ...`"
        )
    if meta.get("precision") != "fp32":
        raise ArtifactError(f"{path} is already {meta.get('precision')}; convert the FP32 export instead")
    return meta


def input_hw(meta: dict[str, Any]) -> tuple[int, int]:
    shape = (meta.get("input") or {}).get("shape") or []
    if len(shape) != 4:
        raise ArtifactError(f"the export records input shape {shape}, not four dimensions; re-export it")
    h, w = InputForm.of(meta).hw(shape)
    if not (isinstance(h, int) and isinstance(w, int)):
        raise ArtifactError(
            "the export has a dynamic height/width; re-export without --dynamic-hw to quantize"
        )
    return h, w
