"""Which TensorRT is installed: full TensorRT (10.x, 11.x) or TensorRT for RTX.

Polygraphy chooses its TensorRT module once, at import, from ``POLYGRAPHY_USE_TENSORRT_RTX``; so we
pick the flavour first and import Polygraphy's TensorRT backend after.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from resnest_deploy import _deps
from resnest_deploy.errors import ArtifactError, MissingDependencyError

BACKENDS = ("tensorrt", "tensorrt-rtx")
#: first bytes of a serialized plan: full TensorRT writes ``ftrt``; TensorRT-RTX 1.x writes ``vtrt``
#: (seen on every plan it built here; not documented, so only used to refuse files that are neither)
ENGINE_MAGIC = {b"ftrt": "tensorrt", b"vtrt": "tensorrt-rtx"}
_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


def engine_flavour(path: str | os.PathLike[str]) -> str:
    """Which TensorRT built an engine, read from its first bytes: a sidecar can be edited, the
    header is what the runtime will check. Anything else is not a TensorRT engine."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ArtifactError(f"cannot read engine {path}: {e.strerror}; check the path") from e
    if magic not in ENGINE_MAGIC:
        raise ArtifactError(
            f"{Path(path).name} is not a serialized TensorRT engine (header {magic!r}, not ftrt/vtrt); "
            "build one with `resnest-deploy build`"
        )
    return ENGINE_MAGIC[magic]


@dataclass(frozen=True)
class Flavour:
    backend: str  # "tensorrt" or "tensorrt-rtx"
    version: str

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(_MODULES[self.backend])

    @property
    def is_rtx(self) -> bool:
        return self.backend == "tensorrt-rtx"

    @property
    def needs_strongly_typed_flag(self) -> bool:
        """TensorRT 10.x and TensorRT-RTX take precision from the ONNX only when asked to."""
        return self.is_rtx or int(self.version.split(".")[0]) < 11


def _installed(backend: str) -> bool:
    if not _deps.has(_MODULES[backend]):
        return False
    try:  # a PyPI stub of full TensorRT imports but has no Builder
        return hasattr(importlib.import_module(_MODULES[backend]), "Builder")
    except Exception:
        return False


def detect(backend: str = "auto") -> Flavour:
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    candidates = BACKENDS if backend == "auto" else (backend,)
    for name in candidates:
        if _installed(name):
            return Flavour(name, importlib.import_module(_MODULES[name]).__version__)
    raise MissingDependencyError(
        f"no {' or '.join(candidates)} Python module is installed; run: "
        "pip install 'resnest-deploy[tensorrt]' (GPU machines) or 'resnest-deploy[rtx]' (TensorRT for RTX, "
        "builds on the CPU too)"
    )


def polygraphy_trt(flavour: Flavour) -> ModuleType:
    """Polygraphy's TensorRT backend, bound to ``flavour``'s module."""
    os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1" if flavour.is_rtx else "0"
    config = _deps.require("polygraphy.config")
    if "polygraphy.backend.trt" not in sys.modules:
        config.USE_TENSORRT_RTX = flavour.is_rtx  # type: ignore[attr-defined]  # in case polygraphy.config was imported earlier
    if flavour.is_rtx != config.USE_TENSORRT_RTX:
        raise MissingDependencyError(
            f"Polygraphy was already loaded for {'TensorRT-RTX' if config.USE_TENSORRT_RTX else 'TensorRT'} "
            f"in this process; run the {flavour.backend} step in a new process"
        )
    return importlib.import_module("polygraphy.backend.trt")
