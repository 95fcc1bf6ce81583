"""Backends behind one interface; ``open_runner`` picks one from what the user named.

The TensorRT runner (and TensorRT itself) is imported only when an engine is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from resnest_deploy.errors import ArtifactError
from resnest_deploy.limits import MAX_THREADS, check_positive
from resnest_deploy.runners.base import Runner

__all__ = ["ENGINE_SUFFIXES", "Runner", "artifact_kind", "open_runner"]

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
TORCH_NAMES = ("torch", "pytorch", "torch:cpu", "torch:cuda")
#: providers that run .onnx files in OpenVINO instead of ONNX Runtime, and what they compute in
OPENVINO_PROVIDERS = {"openvino": "f32", "openvino-bf16": "bf16"}


def artifact_kind(artifact: str | os.PathLike[str]) -> str:
    """'torch', 'onnx' or 'engine'; anything else is refused with the accepted forms."""
    text = os.fspath(artifact)
    if text in TORCH_NAMES:
        return "torch"
    suffix = Path(text).suffix.lower()
    if suffix == ".onnx":
        kind = "onnx"
    elif suffix in ENGINE_SUFFIXES:
        kind = "engine"
    else:
        raise ArtifactError(
            f"cannot tell what {text!r} is; give a .onnx file, a .plan/.engine file, "
            "or 'torch' / 'torch:cuda'"
        )
    if not Path(text).is_file():
        raise ArtifactError(f"{kind} file not found: {text}; check the path")
    return kind


def runtime_cache(kind: str, path: str) -> Any:
    """The registry's cache folder for ``path`` run by ``kind`` (openvino, onnxruntime) here."""
    from resnest_deploy import cache

    runtime = (
        cache.runtime_version("openvino")
        if kind == "openvino"
        else cache.runtime_version("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
    )
    return cache.for_artifact(kind, path, runtime)


def open_runner(
    artifact: str | os.PathLike[str],
    *,
    model: Any = None,
    provider: str = "cpu",
    threads: int | None = None,
    cuda_graphs: bool = False,
    ov_hint: str = "latency",
    device: int = 0,
    cache: bool = True,
) -> Runner:
    """A runner for an ONNX file, an engine, or ``torch[:device]`` (then ``model`` is the module).

    ``cache``: hand OpenVINO and ONNX Runtime (CPU) their compiled-model cache folder from the
    cache registry, so a second process starts sooner (``RESNEST_DEPLOY_CACHE=off`` also stops it)."""
    kind = artifact_kind(artifact)
    text = os.fspath(artifact)
    if threads is not None:
        check_positive(threads, "threads", maximum=MAX_THREADS)
    if kind == "torch":
        from resnest_deploy.runners.torch import TorchRunner

        if model is None:
            raise ArtifactError("'torch' needs a model: pass --arch (and --weights)")
        if provider != "cpu":
            raise ArtifactError(
                f"--provider {provider} does not apply to PyTorch; write 'torch:cuda' to run it on a GPU"
            )
        where = text.partition(":")[2] or "cpu"
        return TorchRunner(model, where, name=f"torch-{where}")
    if kind == "onnx" and provider in OPENVINO_PROVIDERS:
        from resnest_deploy.runners.openvino import OpenVINORunner

        precision = OPENVINO_PROVIDERS[provider]
        folder = runtime_cache("openvino", text) if cache else None
        return OpenVINORunner(text, precision, ov_hint, threads, name=Path(text).name, cache=folder)
    if kind == "onnx":
        from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

        folder = runtime_cache("onnxruntime", text) if cache and provider == "cpu" else None
        return OnnxRuntimeRunner(text, provider, threads, name=Path(text).name, device=device, cache=folder)
    from resnest_deploy.runners.tensorrt import TensorRTRunner

    if provider not in ("cpu", "tensorrt", "cuda"):
        raise ArtifactError(f"--provider {provider} runs .onnx files; an engine runs in TensorRT on its GPU")
    return TensorRTRunner(
        text,
        cuda_graphs=cuda_graphs,
        name=Path(text).name,
        device=device,
        runtime_cache=_rtx_runtime_cache(text) if cache else None,
    )


def _rtx_runtime_cache(path: str) -> Any:
    """What opens TensorRT-RTX's runtime cache for ``path`` once the runner knows its GPU and version
    (they are part of the key, and only the activated runner knows them)."""
    from resnest_deploy import cache

    def opened(runtime: str, gpu: str) -> Any:
        return cache.for_artifact("tensorrt-rtx-runtime", path, runtime, device=gpu)

    return opened
