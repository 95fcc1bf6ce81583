"""Loaders in front of runners (Polygraphy's pattern): what is checked and set up before a runner runs.

A runner is handed what it runs and never works it out: ``open_runner`` reads the artifact's kind,
checks its sidecar and what an engine was built for, sets up ONNX Runtime's providers (the TensorRT
provider's engine and timing caches), opens the compiled-model cache folders and asks the CPU what it
can do (BF16 for OpenVINO, whether ONNX Runtime's int8 kernels saturate 8-bit weights). Each backend
has one small function here; a new backend adds one, and its runner in ``runners/``.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnest_deploy import _deps
from resnest_deploy.artifacts import artifact_kind
from resnest_deploy.errors import ArtifactError
from resnest_deploy.limits import MAX_THREADS, check_positive
from resnest_deploy.runners.base import Runner
from resnest_deploy.runners.options import RunnerOptions

if TYPE_CHECKING:
    from resnest_deploy.cache import CacheFolder

__all__ = [
    "RunnerOptions",
    "check_engine_options",
    "int8_kernels_saturate",
    "open_runner",
    "tensorrt_options",
]

#: the batch range TensorRT builds for when the file's batch is dynamic (as `build` does by default)
TRT_BATCH = (1, 8, 32)


def open_runner(
    artifact: str | os.PathLike[str], options: RunnerOptions | None = None, *, model: Any = None
) -> Runner:
    """A runner for an ONNX file, an engine, or ``torch[:device]`` (then ``model`` is the module),
    run as ``options`` say (default: ONNX Runtime on the CPU, or TensorRT for an engine)."""
    options = options or RunnerOptions()
    kind = artifact_kind(artifact)
    text = os.fspath(artifact)
    if options.threads is not None:
        check_positive(options.threads, "threads", maximum=MAX_THREADS)
    if kind == "torch":
        return _torch(text, options, model)
    if kind == "engine":
        return _tensorrt(text, options)
    if options.backend == "openvino":
        return _openvino(text, options)
    if options.backend not in ("auto", "onnxruntime"):
        raise ArtifactError(
            f"backend {options.backend} does not run .onnx files; use onnxruntime (provider tensorrt "
            "for TensorRT's arithmetic) or openvino, or build an engine"
        )
    return _onnxruntime(text, options)


def _torch(text: str, options: RunnerOptions, model: Any) -> Runner:
    from resnest_deploy.runners.torch import TorchRunner

    if model is None:
        raise ArtifactError("'torch' needs a model: pass {arch} (and {weights})", param=("arch", "weights"))
    if options.backend not in ("auto", "torch") or options.provider != "cpu":
        raise ArtifactError(
            f"{{provider={options.provider_name}}} does not apply to PyTorch; write 'torch:cuda' to run it "
            "on a GPU",
            param="provider",
        )
    where = text.partition(":")[2] or "cpu"
    return TorchRunner(model, where, name=f"torch-{where}")


# -- ONNX Runtime -----------------------------------------------------------------------------------


def _onnxruntime(text: str, options: RunnerOptions) -> Runner:
    from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

    cpu = options.provider == "cpu"
    folder = runtime_cache("onnxruntime", text) if options.cache and cpu else None
    if cpu and not options.fake_quant:
        warn_if_saturating(text)
    return OnnxRuntimeRunner(
        loadable(text), options, name=Path(text).name, cache=folder, providers=ort_providers(text, options)
    )


def ort_providers(path: str, options: RunnerOptions) -> list[Any]:
    """The provider chain for ``options``: GPU providers on its device, TensorRT's with caches and the
    file's own batch range and precision (FP16 only for an FP16 file: no silent precision)."""
    from resnest_deploy.runners.onnxruntime import plain_providers

    chain = plain_providers(options.provider, options.device)
    return [
        (p[0], tensorrt_options(path, options.device)) if p[0] == "TensorrtExecutionProvider" else p
        for p in chain
    ]


def tensorrt_options(path: str, device: int = 0) -> dict[str, str]:
    """ONNX Runtime's TensorRT provider, set up the way `build` builds: an engine cache and a timing
    cache under the cache root, keyed by the file's sha256 (a changed file never reuses an engine;
    the second session starts in seconds), an optimization profile over the file's batch range, and
    the precision flags the file's own graph asks for."""
    from resnest_deploy import metadata
    from resnest_deploy._io import sha256_file
    from resnest_deploy.cache import cache_root
    from resnest_deploy.onnx_files import load_onnx

    model = load_onnx(path)
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    precision = metadata.graph_precision(model)
    batches = (dims[0],) * 3 if dims[0] else TRT_BATCH
    rest = [d or 0 for d in dims[1:]]
    options = {
        "device_id": str(device),
        "trt_engine_cache_enable": "True",
        "trt_timing_cache_enable": "True",
        "trt_fp16_enable": str(precision == "fp16"),
        "trt_int8_enable": str(precision == "int8"),  # explicit Q/DQ: TensorRT needs INT8 allowed
    }
    cache = cache_root() / "ort-tensorrt" / sha256_file(path)[:16]
    cache.mkdir(parents=True, exist_ok=True)
    options["trt_engine_cache_path"] = options["trt_timing_cache_path"] = str(cache)
    if all(rest):  # a fixed image size: one profile over the batch range
        for key, b in zip(("min", "opt", "max"), batches, strict=True):
            options[f"trt_profile_{key}_shapes"] = f"{inp.name}:{'x'.join(map(str, [b, *rest]))}"
    return options


def loadable(path: str) -> str | bytes:
    """ONNX Runtime takes a path only as UTF-8 text; a file whose name is not (bytes a filesystem
    allows) is handed over as its bytes, when its weights are inside it."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    from resnest_deploy.onnx_files import external_tensors, load_onnx

    if any(True for _ in external_tensors(load_onnx(path))):
        raise ArtifactError(
            f"{path.encode('utf-8', 'surrogateescape')!r} is not a UTF-8 name and keeps its weights in "
            "external files; rename it"
        )
    with open(path, "rb") as f:
        return f.read()


def has_8bit_weights(meta: Any) -> bool:
    """Whether a CPU-target INT8 file's metadata (untrusted) says its weights use all 8 bits."""
    conversion = meta.get("conversion") if isinstance(meta, dict) else None
    scheme = conversion.get("scheme") if isinstance(conversion, dict) else None
    return isinstance(scheme, dict) and scheme.get("reduce_range") is False


@functools.cache
def int8_kernels_saturate() -> bool:
    """Whether ONNX Runtime's U8S8 kernels on this CPU saturate products of 8-bit weights: x86
    without VNNI adds pairs of uint8 x int8 products in int16 (``vpmaddubsw``). Asked of the kernels
    themselves (255 x 127 summed 64 times), which also answers right under an emulated CPU, where
    /proc/cpuinfo describes the host."""
    ort = _deps.require("onnxruntime")
    onnx = _deps.require("onnx")
    helper, k = onnx.helper, 64
    weights = onnx.numpy_helper.from_array(np.full((k, 1), 127, np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "saturation-probe",
        [helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [1, 1])],
        [weights],
    )
    # IR 7 is opset 13's own: the newest onnx writes an IR that older ONNX Runtimes refuse
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"a": np.full((1, k), 255, np.uint8)})
    return int(y[0, 0]) != k * 255 * 127


def warn_if_saturating(path: str) -> None:
    """Warn when ``path`` has 8-bit INT8 weights and this CPU's int8 kernels saturate them. The CPU
    is asked first (once per process), so the file is read only where the answer matters; its
    metadata is untrusted and an unreadable one is checked where it is used, not here."""
    from resnest_deploy import metadata
    from resnest_deploy.onnx_files import load_onnx

    if not int8_kernels_saturate():
        return
    try:
        meta = metadata.from_onnx(load_onnx(path))
    except ArtifactError:
        return
    if has_8bit_weights(meta):
        warnings.warn(
            f"{Path(path).name} has 8-bit INT8 weights (made with --cpu-isa vnni), which "
            "ONNX Runtime's int8 kernels on this CPU (x86 without VNNI) saturate, losing accuracy; "
            "re-quantize it with --cpu-isa any",
            RuntimeWarning,
            stacklevel=3,
        )


# -- OpenVINO ---------------------------------------------------------------------------------------


@functools.cache
def openvino_capabilities() -> tuple[str, ...]:
    """What OpenVINO says this CPU can compute in (BF16 needs AVX-512-BF16 or AMX)."""
    ov = _deps.require("openvino")
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _openvino(text: str, options: RunnerOptions) -> Runner:
    from resnest_deploy.runners.openvino import OpenVINORunner

    if options.ov_precision == "bf16" and "BF16" not in openvino_capabilities():
        raise ArtifactError(
            "this CPU has no BF16 support (AVX-512-BF16 or AMX), so OpenVINO would emulate or refuse it; "
            "use {provider=openvino} (f32)",
            param="provider",
        )
    folder = runtime_cache("openvino", text) if options.cache else None
    return OpenVINORunner(text, options, name=Path(text).name, cache=folder)


# -- caches -----------------------------------------------------------------------------------------


def runtime_cache(kind: str, path: str) -> CacheFolder | None:
    """The registry's cache folder for ``path`` run by ``kind`` (openvino, onnxruntime) here."""
    from resnest_deploy import cache

    runtime = (
        cache.runtime_version("openvino")
        if kind == "openvino"
        else cache.runtime_version("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
    )
    return cache.for_artifact(kind, path, runtime)


def rtx_runtime_cache(path: str) -> Callable[[str, str], CacheFolder | None]:
    """What opens TensorRT-RTX's runtime cache for ``path`` once the runner knows its GPU and version
    (they are part of the key, and only the activated runner knows them)."""
    from resnest_deploy import cache

    def opened(runtime: str, gpu: str) -> CacheFolder | None:
        return cache.for_artifact("tensorrt-rtx-runtime", path, runtime, device=gpu)

    return opened


# -- TensorRT ---------------------------------------------------------------------------------------


def check_engine_options(options: RunnerOptions) -> None:
    """An engine runs in TensorRT on its GPU: a provider for .onnx files is refused, here and by a
    cluster's driver before it sends the engine anywhere."""
    if options.backend not in ("auto", "tensorrt") or options.provider not in ("cpu", "tensorrt", "cuda"):
        raise ArtifactError(
            f"{{provider={options.provider_name}}} runs .onnx files; an engine runs in TensorRT on its GPU",
            param="provider",
        )


def _tensorrt(text: str, options: RunnerOptions) -> Runner:
    from resnest_deploy.loaders.tensorrt import EngineLoader
    from resnest_deploy.runners.tensorrt import TensorRTRunner

    check_engine_options(options)
    return TensorRTRunner(
        EngineLoader.of(text),
        options,
        name=Path(text).name,
        runtime_cache=rtx_runtime_cache(text) if options.cache else None,
    )
