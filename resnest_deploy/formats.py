"""What an exported file looks like from outside: names, opsets and input formats (no torch).

Camera pipelines deliver uint8 RGB frames, and DeepStream's ``nvinfer`` normalises with one scalar
scale per network (``y = net-scale-factor * (x - offsets[c])``), which cannot express ImageNet's
per-channel std. So an export can take its input in one of four forms:

``float``        (x/255 - mean) / std, NCHW float32: the host-side eval transform (the default)
``uint8-nhwc``   raw RGB frames, N x H x W x 3 uint8; Cast, Transpose and normalisation in the graph
``uint8-nchw``   raw RGB planes, N x 3 x H x W uint8; Cast and normalisation in the graph
``deepstream``   x/255 - mean, NCHW float32: what nvinfer computes with net-scale-factor 1/255 and
                 offsets 255*mean; the 1/std is folded into the stem's first convolution's weights
                 (exact, since zero padding stays zero). The mean is not folded into its bias: at the
                 border, zero padding would then stand for a black pixel instead of 0 after
                 normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from resnest_deploy.errors import ArtifactError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
#: 13 is the first with Split taking sizes as an input; 20 is the newest the TorchScript exporter writes.
OPSET_RANGE = (13, 20)

INPUT_FORMATS = ("float", "uint8-nhwc", "uint8-nchw", "deepstream")
_DESCRIPTIONS = {
    "float": "float32 NCHW, (x/255 - mean) / std",
    "uint8-nhwc": "uint8 NHWC RGB frames, 0..255; normalised inside the graph",
    "uint8-nchw": "uint8 NCHW RGB planes, 0..255; normalised inside the graph",
    "deepstream": "float32 NCHW, x/255 - mean (nvinfer's net-scale-factor 1/255, offsets 255*mean); "
    "1/std folded into the first convolution",
}


def check_format(name: str) -> str:
    if name not in INPUT_FORMATS:
        raise ArtifactError(f"unknown input format {name!r}; choose one of {', '.join(INPUT_FORMATS)}")
    return name


def describe(name: str, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """The ``input.format`` entry of an artifact's metadata."""
    return {
        "name": check_format(name),
        "meaning": _DESCRIPTIONS[name],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def shape(name: str, batch: int | str, h: int | str, w: int | str) -> list[int | str]:
    return [batch, h, w, 3] if name == "uint8-nhwc" else [batch, 3, h, w]


def dtype(name: str) -> str:
    return "uint8" if name.startswith("uint8") else "float32"


def from_normalised(x: np.ndarray, name: str, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised NCHW float inputs, ``(u/255 - mean) / std`` of uint8 pixels ``u``, in the form a
    file of format ``name`` takes. Exact for inputs that came from uint8 pixels (the uint8 forms
    round back to them); other values are clipped to what a frame can hold."""
    if name == "float":
        return x
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    if name == "deepstream":
        return np.ascontiguousarray(x * s, dtype=np.float32)
    frames = np.clip(np.rint((x * s + m) * np.float32(255.0)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frames.transpose(0, 2, 3, 1) if name == "uint8-nhwc" else frames)


def nvinfer_normalisation(meta: dict[str, Any]) -> tuple[float, list[float]]:
    """(net-scale-factor, offsets) that make nvinfer feed this file exactly what it expects."""
    fmt = ((meta.get("input") or {}).get("format") or {}).get("name", "float")
    pre = meta.get("preprocessing") or {}
    mean = [float(v) for v in pre.get("mean", (0.485, 0.456, 0.406))]
    std = [float(v) for v in pre.get("std", (0.229, 0.224, 0.225))]
    offsets = [round(255.0 * m, 6) for m in mean]
    if fmt == "deepstream":
        return 1.0 / 255.0, offsets
    if fmt == "float" and max(std) - min(std) < 1e-9:  # one std for all channels: a scalar scale
        return 1.0 / (255.0 * std[0]), offsets
    if fmt == "float":
        raise ArtifactError(
            f"this file expects (x/255 - mean) / std with a per-channel std {std}, which nvinfer's one "
            "net-scale-factor cannot express; re-export with --input-format deepstream"
        )
    raise ArtifactError(
        f"this file takes {fmt} input, but nvinfer feeds networks float NCHW; "
        "re-export with --input-format deepstream"
    )
