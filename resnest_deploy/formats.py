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
from dataclasses import dataclass
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


def form_record(name: str, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
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


@dataclass(frozen=True)
class InputForm:
    """The input form a file takes and the normalisation built into it, as its metadata records.

    Everything that feeds a file (conversion, the runners' adapter, nvinfer, Triton) reads it here,
    so they agree on what the file expects."""

    name: str = "float"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def of(cls, meta: dict[str, Any]) -> InputForm:
        """From checked metadata (``metadata.validate``); files from before input forms are float."""
        fmt = (meta.get("input") or {}).get("format") or {}
        pre = meta.get("preprocessing") or {}
        mean, std = fmt.get("mean", pre.get("mean")), fmt.get("std", pre.get("std"))
        return cls(
            check_format(str(fmt.get("name", "float"))),
            tuple(float(v) for v in mean) if mean else None,
            tuple(float(v) for v in std) if std else None,
        )

    @property
    def takes_frames(self) -> bool:
        return self.name.startswith("uint8")

    @property
    def layout(self) -> str:
        return "NHWC" if self.name == "uint8-nhwc" else "NCHW"

    def hw(self, shape: list[Any]) -> tuple[Any, Any]:
        """Height and width out of an input shape in this form's layout."""
        return (shape[1], shape[2]) if self.layout == "NHWC" else (shape[2], shape[3])

    def _stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.std is None:
            raise ArtifactError(f"the file takes {self.name} input but records no mean/std; re-export it")
        return (
            np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1),
            np.asarray(self.std, np.float32).reshape(1, 3, 1, 1),
        )

    def from_normalised(self, x: np.ndarray) -> np.ndarray:
        """Normalised NCHW float inputs, ``(u/255 - mean) / std`` of uint8 pixels ``u``, in this form.
        Exact for inputs that came from uint8 pixels (the uint8 forms round back to them); other
        values are clipped to what a frame can hold."""
        if self.name == "float":
            return x
        m, s = self._stats()
        if self.name == "deepstream":
            return np.ascontiguousarray(x * s, dtype=np.float32)
        frames = np.clip(np.rint((x * s + m) * np.float32(255.0)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(frames.transpose(0, 2, 3, 1) if self.layout == "NHWC" else frames)

    def nvinfer(self) -> tuple[float, list[float]]:
        """(net-scale-factor, offsets) that make nvinfer feed this file exactly what it expects."""
        m, s = (v.ravel().tolist() for v in self._stats())
        offsets = [round(255.0 * v, 6) for v in m]
        if self.name == "deepstream":
            return 1.0 / 255.0, offsets
        if self.name == "float" and max(s) - min(s) < 1e-9:  # one std for all channels: a scalar scale
            return 1.0 / (255.0 * s[0]), offsets
        if self.name == "float":
            raise ArtifactError(
                f"this file expects (x/255 - mean) / std with a per-channel std {s}, which nvinfer's one "
                "net-scale-factor cannot express; re-export with --input-format deepstream"
            )
        raise ArtifactError(
            f"this file takes {self.name} input, but nvinfer feeds networks float NCHW; "
            "re-export with --input-format deepstream"
        )
