"""A model on which plain INT8 loses accuracy, made offline and reproducibly from the bundled one.

Real networks grow a few activation channels far larger than the rest (outliers); per-tensor INT8
activations then spend their whole range on those channels and round every other channel to a few
levels. This makes such a network from the trained digits model exactly: one channel of the stem's
first convolution is scaled up by ``SCALE`` (its batch norm's weight and bias) and the next
convolution's weights for that channel down by the same factor. ReLU commutes with a positive scale,
so the FP32 network computes the same logits (99.44% top-1), while its INT8 file, with every
convolution quantized and max calibration, loses several points: the case INT8 search exists for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resnest_deploy.precision import CalibrationData, ConversionReport

SCALE = 128.0
CHANNEL = 0


def outlier_digits(path: str | os.PathLike[str]) -> Path:
    """Export the outlier variant of ``resnest14d_digits`` to ``path`` (needs the ``export`` extra)."""
    import torch

    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model, parts

    model, info = load_model("resnest14d_digits", "pretrained")
    names = parts("resnest14d_digits")
    norm = model.get_submodule(names.stem_norm)  # the stem: Conv, BN, ReLU, Conv, ...
    conv = model.get_submodule(names.stem_next_conv)
    with torch.no_grad():
        norm.weight[CHANNEL] *= SCALE  # type: ignore[index,operator]
        norm.bias[CHANNEL] *= SCALE  # type: ignore[index,operator]
        conv.weight[:, CHANNEL] /= SCALE  # type: ignore[index,operator]
    return export_onnx(model, path, weights=info).path


def quantize_every_conv(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    target: str,
    calib: CalibrationData,
    max_drop: float | None = None,
    **options: Any,
) -> ConversionReport:
    """The INT8 the search starts from: every convolution quantized (nothing kept in FP32 by name),
    calibrated afresh (no cache), and no parity bar: a search's budget judges it, not parity.
    ``max_drop`` searches from it; ``options`` are more ``ConversionConfig`` fields (``method``,
    ``cpu_isa``)."""
    from resnest_deploy.compare import UNCHECKED
    from resnest_deploy.precision import ConversionConfig, RunOptions, convert

    config = ConversionConfig(
        "int8", target, keep_fp32_nodes=(), tolerance=UNCHECKED, max_drop=max_drop, **options
    )
    return convert(src, dst, config, calib, RunOptions(use_cache=False))
