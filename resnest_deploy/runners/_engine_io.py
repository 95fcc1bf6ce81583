"""The shapes and types of an engine's I/O, the CPU-side part of the TensorRT runner."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from resnest_deploy.errors import ArtifactError

#: TensorRT I/O types we can feed and read from NumPy, by ``trt.DataType`` name
NUMPY_DTYPES: dict[str, type] = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


def numpy_dtype(trt_dtype: Any, tensor: str) -> type:
    """The NumPy type of a TensorRT I/O tensor; types NumPy cannot hold (BF16, FP8, INT4) are refused."""
    name = str(trt_dtype).rsplit(".", 1)[-1]
    if name not in NUMPY_DTYPES:
        raise ArtifactError(
            f"engine tensor {tensor!r} is {name}, which NumPy cannot hold; build the engine from an "
            "ONNX file with FP32/FP16 inputs and outputs (resnest-deploy keeps FP32 I/O)"
        )
    return NUMPY_DTYPES[name]


@dataclass(frozen=True)
class Profile:
    """The optimization profile of one input: min, opt and max shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def check(self, shape: tuple[int, ...], tensor: str) -> None:
        if len(shape) != len(self.min) or any(
            not lo <= s <= hi for s, lo, hi in zip(shape[1:], self.min[1:], self.max[1:], strict=True)
        ):
            raise ArtifactError(
                f"input {tensor!r} of shape {list(shape)} is outside the engine's profile "
                f"(min {list(self.min)}, max {list(self.max)}); rebuild with another --batch-profile or size"
            )

    def pieces(self, batch: int) -> list[slice]:
        """Split ``batch`` into the fewest slices that each lie within [min, max] of the profile,
        the first ones as large as allowed: 33 on a 2..32 profile runs as 31 + 2. A batch that no
        such split covers is refused (padding would time work that was not asked for)."""
        lo, hi = self.min[0], self.max[0]
        k = max(1, math.ceil(batch / hi))
        if batch < 1 or k * lo > batch:
            raise ArtifactError(
                f"batch {batch} does not split into runs of {lo}..{hi} images (the engine's profile); "
                "rebuild it with --batch-profile 1,OPT,MAX"
            )
        sizes, extra = [lo] * k, batch - k * lo
        for i in range(k):
            grow = min(hi - lo, extra)
            sizes[i] += grow
            extra -= grow
        ends = list(itertools.accumulate(sizes))
        return [slice(end - size, end) for size, end in zip(sizes, ends, strict=True)]
