"""FP16 for TensorRT: a strongly typed mixed-precision graph from NVIDIA ModelOpt's AutoCast.

AutoCast keeps in FP32 what would overflow in FP16 (it runs the graph once to find large
activations) and what we name here. The radix softmax stays FP32 by default: its inputs are
attention logits with no bound, FP16 softmax has overflowed in other timm exports, and the Casts
around a B x C x 1 x 1 tensor cost nothing measurable. Graph inputs and outputs stay FP32
(``keep_io_types``) so every runner and preprocessing path is unchanged.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np

from resnest_deploy import _deps
from resnest_deploy.precision.config import FP16_KEEP_FP32_NODES, FP16_KEEP_FP32_OPS

#: the defaults live with the conversion's other choices (``config``), which imports no numpy
KEEP_FP32_OPS, KEEP_FP32_NODES = FP16_KEEP_FP32_OPS, FP16_KEEP_FP32_NODES


def to_fp16(
    src: str | os.PathLike[str],
    keep_fp32_ops: Sequence[str] = KEEP_FP32_OPS,
    keep_fp32_nodes: Sequence[str] = (),
    inputs: np.ndarray | None = None,
) -> object:
    """Return the FP16 ``onnx.ModelProto`` of ``src`` (nothing is written here). ``inputs`` (in the
    file's own input form) replace the random values AutoCast runs the graph on to find ranges."""
    autocast = _deps.require("modelopt.onnx.autocast")
    with tempfile.TemporaryDirectory(prefix="resnest-deploy-") as tmp:
        data = None
        if inputs is not None:
            data = os.path.join(tmp, "inputs.npz")
            np.savez(data, input=inputs)
        return autocast.convert_to_mixed_precision(
            os.fspath(src),
            low_precision_type="fp16",
            op_types_to_exclude=list(keep_fp32_ops) or None,
            nodes_to_exclude=list(keep_fp32_nodes) or None,
            keep_io_types=True,
            calibration_data=data,
            providers=["cpu"],
        )
