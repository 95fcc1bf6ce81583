"""Backends behind one interface (after Polygraphy's runners); ``loaders.open_runner`` picks one.

A runner is handed what it runs and a :class:`RunnerOptions`; everything checked or set up before
it runs (what a file says of itself, compatibility, providers, cache folders, CPU probes) is the
work of ``resnest_deploy.loaders``. The TensorRT runner (and TensorRT itself) is imported only when an
engine is opened.
"""

from __future__ import annotations

from resnest_deploy.artifacts import ENGINE_SUFFIXES, TORCH_NAMES, artifact_kind
from resnest_deploy.runners.base import Runner
from resnest_deploy.runners.options import OPENVINO_PROVIDERS, RunnerOptions

__all__ = [
    "ENGINE_SUFFIXES",
    "OPENVINO_PROVIDERS",
    "TORCH_NAMES",
    "Runner",
    "RunnerOptions",
    "artifact_kind",
]
