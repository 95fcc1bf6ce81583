"""Bounds on counts and batch sizes, checked before any memory is touched.

A batch of a billion images is a typo, not a benchmark: it is refused with the size it would need,
instead of dying in the allocator (or, worse, being timed on fewer images than claimed).
"""

from __future__ import annotations

import os

from resnest_deploy.errors import LimitError

#: the largest batch any command accepts; TensorRT profiles and Triton configs stay far below it
MAX_BATCH = 4096
#: intra-op threads any runner may be asked for
MAX_THREADS = 256
#: an input tensor may take at most this share of the memory available now
MEMORY_SHARE = 0.25


def available_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: do not guess low
        return 1 << 40


def check_positive(value: int, name: str, *, maximum: int | None = None) -> int:
    """``value`` from 1 to ``maximum``. A ``name`` that is a parameter's (``batch_size``) is named
    as the parameter (the CLI writes its flag); other names (``batch size``) are written as given."""
    param = name if name.isidentifier() else ()
    label = f"{{{name}}}" if param else name
    if value < 1:
        raise LimitError(f"{label} must be at least 1, got {value}", param=param)
    if maximum is not None and value > maximum:
        raise LimitError(
            f"{label} {value} is more than the maximum {maximum}; choose a smaller one", param=param
        )
    return value


def check_batch(batch: int, input_hw: tuple[int, int], option: str = "batch size") -> int:
    """``batch`` images of ``input_hw`` must fit: at most MAX_BATCH, and the float32 input tensor at
    most a quarter of the memory available."""
    check_positive(batch, option, maximum=MAX_BATCH)
    check_tensor(batch, input_hw, option)
    return batch


def check_tensor(count: int, input_hw: tuple[int, int], option: str) -> None:
    """``count`` float32 N x 3 x H x W inputs held at once must fit in memory."""
    need = count * 3 * input_hw[0] * input_hw[1] * 4
    have = available_bytes()
    if need > MEMORY_SHARE * have:
        param = option if option.isidentifier() else ()
        label = f"{{{option}}}" if param else option
        raise LimitError(
            f"{label} {count} needs {need / 2**30:.1f} GiB for its {input_hw[0]}x{input_hw[1]} inputs "
            f"alone and {have / 2**30:.1f} GiB is free; choose a smaller one",
            param=param,
        )
