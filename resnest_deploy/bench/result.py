"""One timed cell (artifact x batch size): the typed row every caller reads.

``as_dict`` / ``from_dict`` are its serialisation, for the worker process's JSON lines and for
``--json``; nothing else reads a row as a dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class BenchResult:
    artifact: str
    backend: str
    precision: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    iterations: int
    #: the engine's GPU time alone (CUDA events), where the backend has device timers; the other
    #: figures are the whole call, host staging and copies included, on every backend
    device_p50_ms: float | None
    #: activation (load, compile, engine deserialisation) plus the first call at this artifact's first
    #: batch size: what a cold start costs, and what a working engine or kernel cache saves
    first_call_ms: float
    p10_ms: float = float("nan")
    #: untimed calls before timing (a fixed count, or until two windows of calls agreed)
    warmup_calls: int = 0
    #: whether the warm-up ended because the call time was stable (False: it hit its bound)
    warmup_settled: bool = True
    #: wall time of the timed calls
    timed_s: float = float("nan")
    #: the share of the machine's CPUs that other processes used while this row was timed
    others_cpu: float | None = None
    #: who, when they were busy: "python3 (pid 4242) 0.98, ..."
    others: str | None = None
    #: why this row cannot be trusted at a glance (empty: nothing implausible seen)
    flags: tuple[str, ...] = ()
    #: the likely cause of the flags
    cause: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        """A row from :meth:`as_dict` (the worker's JSON lines)."""
        return cls(**(d | {"flags": tuple(d.get("flags") or ())}))
