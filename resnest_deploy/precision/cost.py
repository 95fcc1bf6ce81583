"""What keeping units in FP32 costs: the plain and the searched INT8 file timed at batch 1, taking
turns in one process (``resnest_deploy.timing``, the interface ``bench`` also uses)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import _deps, metadata
from resnest_deploy.errors import ResnestDeployError


@dataclass(frozen=True)
class Timing:
    plain_ms: float
    searched_ms: float
    ratio: float  # searched / plain


@dataclass(frozen=True)
class LatencyCost:
    """p50 ms per backend at ``batch``; a backend that could not run a file holds why (a string)."""

    batch: int
    cpu_flags: list[str]
    backends: dict[str, Timing | str]

    def as_dict(self) -> dict[str, Any]:
        """The sidecar's ``conversion.search.latency``."""
        out: dict[str, Any] = {"batch": self.batch, "cpu_flags": list(self.cpu_flags)}
        for backend, t in self.backends.items():
            out[backend] = {"error": t} if isinstance(t, str) else dict(vars(t))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyCost:
        backends: dict[str, Timing | str] = {}
        for backend, t in data.items():
            if backend in ("batch", "cpu_flags") or not isinstance(t, Mapping):
                continue
            if "error" in t:
                backends[backend] = str(t["error"])
            else:
                backends[backend] = Timing(float(t["plain_ms"]), float(t["searched_ms"]), float(t["ratio"]))
        return cls(int(data.get("batch", 1)), [str(f) for f in data.get("cpu_flags") or []], backends)


def latency_cost(
    plain: Any, chosen: Any, x: np.ndarray, target: str, say: Callable[[str], None]
) -> LatencyCost | None:
    """What keeping units in FP32 costs at batch 1, the two files taking turns in one process: for
    the CPU target in ONNX Runtime and (when installed) OpenVINO; for TensorRT through ONNX Runtime's
    TensorRT provider when a GPU is at hand (else the FP32 layer count is the cost known: None)."""
    from resnest_deploy import timing
    from resnest_deploy._cuda import gpu_count
    from resnest_deploy.loaders import open_runner
    from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
    from resnest_deploy.runners.openvino import OpenVINORunner
    from resnest_deploy.runners.options import RunnerOptions

    backends: dict[str, Callable[[Path], Any]] = {}
    if target == "cpu":
        backends["onnxruntime-cpu"] = lambda p: OnnxRuntimeRunner(p)
        if _deps.has("openvino"):
            backends["openvino-cpu-f32"] = lambda p: OpenVINORunner(p)
    elif gpu_count() > 0:  # ONNX Runtime lists its GPU providers whether or not a GPU is there
        backends["onnxruntime-tensorrt"] = lambda p: open_runner(p, RunnerOptions(provider="tensorrt"))
    if not backends:
        return None
    say(f"timing the plain and the searched INT8 file ({', '.join(backends)})")
    onnx = _deps.require("onnx")
    measured: dict[str, Timing | str] = {}
    with tempfile.TemporaryDirectory(prefix="resnest-deploy-") as tmp:
        paths = {"plain": Path(tmp) / "plain.onnx", "searched": Path(tmp) / "searched.onnx"}
        onnx.save(plain, paths["plain"])
        onnx.save(chosen, paths["searched"])
        for backend, make in backends.items():
            try:
                with make(paths["plain"]) as a, make(paths["searched"]) as b:
                    ms = timing.interleaved({"plain": a, "searched": b}, x)
            except ResnestDeployError as e:  # a backend that cannot run the file: say so, not fail
                measured[backend] = str(e)
                continue
            measured[backend] = Timing(
                round(ms["plain"], 4), round(ms["searched"], 4), round(ms["searched"] / ms["plain"], 3)
            )
    return LatencyCost(1, metadata.cpu_flags(), measured)
