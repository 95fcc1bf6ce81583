"""The small interface every backend speaks, after Polygraphy's runners.

``check`` and ``bench`` hold a :class:`Runner` and never import a backend: a runner is a context
manager that prepares its backend in ``activate``, maps an NCHW float32 batch to logits in ``infer``,
and reports how long the last inference took: the whole call, host staging and copies included, so
figures compare across backends; GPU backends add the device-only time as a second figure.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

import numpy as np

R = TypeVar("R", bound="Runner")


class Runner(abc.ABC):
    #: short backend name shown in tables, e.g. "onnxruntime-cpu"
    backend: str = "runner"
    #: the precision the backend computes in when it is not the file's (OpenVINO BF16 on an FP32 file)
    computes_in: str | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_active = False
        self._last_ms: float | None = None

    def __enter__(self: R) -> R:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, x: np.ndarray) -> np.ndarray:
        if not self.is_active:
            raise RuntimeError(f"{self.name} is not active; use it as a context manager")
        start = time.perf_counter()
        out = self.infer_impl(np.ascontiguousarray(x, dtype=x.dtype if x.dtype == np.uint8 else np.float32))
        self._last_ms = (time.perf_counter() - start) * 1e3  # the whole call, as for every backend
        return out

    def infer_batched(self, x: np.ndarray, batch: int = 16) -> np.ndarray:
        """Many inputs, ``batch`` at a time (engines have a maximum batch; memory is finite)."""
        return np.concatenate([self.infer(x[i : i + batch]) for i in range(0, len(x), batch)])

    def last_inference_ms(self) -> float:
        if self._last_ms is None:
            raise RuntimeError(f"{self.name} has not run yet")
        return self._last_ms

    def device_time_ms(self) -> float | None:
        """The last call's GPU time alone (CUDA events), for backends that have device timers: a
        second figure beside ``last_inference_ms``, which is always the whole call."""
        return None

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, x: np.ndarray) -> np.ndarray: ...

    def deactivate_impl(self) -> None:  # noqa: B027 - optional hook
        pass


class InputFormatAdapter(Runner):
    """Feeds a file that takes frames (or DeepStream's pre-scaled input) from the normalised NCHW
    inputs every other runner takes, so check, bench and eval compare like with like. Exact for
    inputs that came from uint8 pixels; the conversion is not part of the reported time."""

    def __init__(self, inner: Runner, convert: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__(inner.name)
        self.inner, self.convert = inner, convert
        self.backend = inner.backend
        self.computes_in = inner.computes_in

    def activate_impl(self) -> None:
        self.inner.activate()

    def infer(self, x: np.ndarray) -> np.ndarray:
        if not self.is_active:
            raise RuntimeError(f"{self.name} is not active; use it as a context manager")
        out = self.inner.infer(self.convert(np.asarray(x, dtype=np.float32)))
        self._last_ms = self.inner.last_inference_ms()
        return out

    def infer_impl(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - infer is overridden
        return self.inner.infer_impl(x)

    def device_time_ms(self) -> float | None:
        return self.inner.device_time_ms()

    def deactivate_impl(self) -> None:
        self.inner.deactivate()
