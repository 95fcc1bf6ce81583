"""What is checked before a TensorRT engine runs, and how it is deserialized (the runner's loader).

An engine runs only on the TensorRT version, and (unless JIT-compiled) the GPU, it was built for; its
verified sidecar says which. The runner calls :class:`EngineLoader` once it has set up its GPU (the
loader needs the GPU's compute capability), as Polygraphy's ``TrtRunner`` calls ``EngineFromBytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnest_deploy import metadata
from resnest_deploy.engine.flavour import Flavour, detect, engine_flavour
from resnest_deploy.errors import ArtifactError


def rebuild_hint(sidecar: dict[str, Any] | None) -> str:
    src = (sidecar or {}).get("source_onnx", {}).get("path") or "MODEL.onnx"
    return f"rebuild it here: resnest-deploy build --onnx {src}"


def check_compatible(
    sidecar: dict[str, Any] | None, installed: str, device_cc: tuple[int, int] | None
) -> None:
    """An engine only runs on the TensorRT version, and (unless JIT) the GPU, it was built for."""
    if not sidecar:
        return
    built = sidecar.get("tensorrt", {})
    if built.get("version") and built["version"] != installed:
        raise ArtifactError(
            f"engine was built with {built.get('flavour', 'TensorRT')} {built['version']} but "
            f"{installed} is installed; {rebuild_hint(sidecar)}"
        )
    caps = sidecar.get("target", {}).get("compute_capabilities")
    if device_cc and isinstance(caps, list) and caps and f"{device_cc[0]}.{device_cc[1]}" not in caps:
        raise ArtifactError(
            f"engine targets compute capability {', '.join(caps)} but this GPU is "
            f"{device_cc[0]}.{device_cc[1]}; {rebuild_hint(sidecar)}"
        )


@dataclass(frozen=True)
class LoadedEngine:
    """What the runner runs: the TensorRT module of the engine's flavour, its runtime and engine."""

    flavour: Flavour
    module: Any
    runtime: Any
    engine: Any


@dataclass(frozen=True)
class EngineLoader:
    """An engine file, its verified sidecar and the flavour its header names; called with the GPU's
    compute capability, it checks compatibility and deserializes the engine."""

    path: Path
    #: "tensorrt" or "tensorrt-rtx", as the file's header says (or the caller asked)
    flavour: str
    sidecar: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, path: str | Path, flavour: str = "auto") -> EngineLoader:
        path = Path(path)
        sidecar = metadata.read_sidecar(path)  # checked: it must describe these very bytes
        return cls(path, engine_flavour(path) if flavour == "auto" else flavour, sidecar)

    def without_gpu(self, problem: str) -> str:
        """The message when no GPU can run the engine: run its ONNX file here instead."""
        source = ((self.sidecar or {}).get("source_onnx") or {}).get("path")
        onnx = Path(str(source)).name if source else "the ONNX file it was built from"
        return (
            f"{self.path.name} is a TensorRT engine, which runs only on an NVIDIA GPU, and {problem}; "
            f"run {onnx} here instead, or the engine on the GPU machine it was built for"
        )

    def __call__(self, device_cc: tuple[int, int]) -> LoadedEngine:
        flavour = detect(self.flavour)
        check_compatible(self.sidecar, flavour.version, device_cc)
        trt = flavour.module
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise ArtifactError(
                f"{flavour.backend} {flavour.version} cannot load {self.path.name} (built for another "
                f"version, GPU or platform?); {rebuild_hint(self.sidecar)}"
            )
        return LoadedEngine(flavour, trt, runtime, engine)
