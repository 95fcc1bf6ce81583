"""What is timed and how: the batch sizes, the calls per cell, the warm-up and the runtime options."""

from __future__ import annotations

from dataclasses import dataclass

from resnest_deploy.limits import LimitError, check_positive

#: timed calls per cell when running on time, at least
MIN_CALLS = 10
#: timed calls per cell when neither a time nor a count is given
DEFAULT_ITERATIONS = 20


@dataclass(frozen=True)
class BenchPlan:
    """How each cell (artifact x batch size) is timed.

    ``seconds``: time each cell for that long, with at least ``iterations`` (default 10) calls, as
    OpenVINO's ``benchmark_app -t``; without it, exactly ``iterations`` (default 20) calls.
    ``warmup``: that many untimed calls first; None warms up until the call time is stable."""

    batches: tuple[int, ...] = (1, 8)
    iterations: int | None = None
    seconds: float | None = None
    warmup: int | None = None
    provider: str = "cpu"
    threads: int | None = None
    cuda_graphs: bool = False
    ov_hint: str = "latency"

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", tuple(self.batches))
        if self.iterations is not None:
            check_positive(self.iterations, "iterations")
        if self.seconds is not None and not (0 < self.seconds <= 3600):
            raise LimitError(
                f"{{seconds}} must be more than 0 and at most 3600 seconds, got {self.seconds}",
                param="seconds",
            )
        if self.warmup is not None and self.warmup < 0:
            raise LimitError(f"{{warmup}} must be 0 or more, got {self.warmup}", param="warmup")

    @property
    def min_calls(self) -> int:
        if self.seconds is None:
            return self.iterations or DEFAULT_ITERATIONS
        return self.iterations or MIN_CALLS
