"""What the TensorRT builder is told and what it says: its config (profiles, workspace, TF32,
targets), the timing cache it reuses, the refusal of Jetson targets on TensorRT-RTX, and its log
kept off the terminal."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.engine.flavour import Flavour
from resnest_deploy.errors import BuildError, ResnestDeployError


def capture_log(logger: Any) -> tuple[Callable[[], list[str]], Callable[[], None]]:
    """Keep the builder's warnings and errors for the sidecar instead of printing them."""
    seen: list[str] = []
    originals = {name: getattr(logger, name) for name in ("warning", "error")}
    severity = logger.module_severity

    def recorder(level: str) -> Callable[..., None]:
        def record(message: str, *args: Any, **kwargs: Any) -> None:
            seen.append(f"{level}: {str(message).strip()}")

        return record

    for name in originals:
        setattr(logger, name, recorder(name))
    logger.module_severity = logger.CRITICAL

    def restore() -> None:
        for name, fn in originals.items():
            setattr(logger, name, fn)
        logger.module_severity = severity

    return (lambda: list(dict.fromkeys(seen))), restore


def resolve_timing_cache(
    flavour: Flavour, timing_cache: str | os.PathLike[str] | None, cache_timing: bool
) -> tuple[str | os.PathLike[str] | None, str | None, Any]:
    """The timing cache to use, what the sidecar says of it, and the registry folder to seal after."""
    timing_note = str(timing_cache) if timing_cache else None
    if timing_cache and flavour.is_rtx:  # its builder ignores timing caches (a no-op since RTX 1.2)
        timing_cache, timing_note = None, f"{timing_cache} not used: TensorRT-RTX has no timing cache"
    registry = None
    if timing_cache is None and cache_timing and not flavour.is_rtx:
        registry = timing_cache_folder(f"{flavour.backend} {flavour.version}")
        if registry is not None:
            timing_cache = registry.path / TIMING_CACHE_FILE
            timing_note = f"{timing_cache} ({'reused' if registry.hit else 'new'}, cache registry)"
    return timing_cache, timing_note, registry


TIMING_CACHE_FILE = "timing.cache"


def timing_cache_folder(runtime: str) -> Any:
    """The registry's timing-cache folder for ``runtime`` on GPU 0 (not per network: TensorRT
    shares layer timings between builds), or None without a usable cache or a visible GPU."""
    from resnest_deploy import _cuda
    from resnest_deploy.cache import CacheFolder, CacheKey

    capability = _cuda.compute_capability(0)
    if capability is None:
        return None
    return CacheFolder.open("tensorrt-timing", CacheKey(runtime, f"gpu:{capability}", ""))


def target_of(flavour: Flavour, compute_capabilities: Sequence[tuple[int, int]] | None) -> list[str] | str:
    """What the engine will run on; a list is checked against the GPU when the engine is loaded."""
    if compute_capabilities:
        return [f"{a}.{b}" for a, b in compute_capabilities]
    if flavour.is_rtx:
        return "TensorRT-RTX default (JIT on device)"
    try:  # full TensorRT builds for the GPU it runs on
        from resnest_deploy._cuda import Cuda

        props = Cuda()("cudaGetDeviceProperties", 0)
        return [f"{props.major}.{props.minor}"]
    except ResnestDeployError:
        return "this machine's GPU"


#: the GPUs of NVIDIA's Jetson modules, which TensorRT-RTX does not build for (it targets RTX and
#: data-centre GPUs); JetPack ships full TensorRT on the device instead
JETSON = {(5, 3): "Jetson Nano", (6, 2): "Jetson TX2", (7, 2): "Jetson Xavier", (8, 7): "Jetson Orin"}


def refuse_jetson(
    compute_capabilities: Sequence[tuple[int, int]], onnx_path: Path, batch: tuple[int, int, int]
) -> None:
    """A Jetson target on TensorRT-RTX: refused with the way that works (build on the device)."""
    for major, minor in compute_capabilities:
        cc = (int(major), int(minor))
        if cc in JETSON:
            profile = ",".join(map(str, batch))
            raise BuildError(
                f"compute capability {major}.{minor} is {JETSON[cc]}, which TensorRT-RTX does not "
                "build for; build on the device itself with the full TensorRT that JetPack ships: copy "
                f"{onnx_path.name} there and run `resnest-deploy build --onnx {onnx_path.name} --backend "
                f"tensorrt --batch-profile {profile}` (docs/engines.md, 'Jetson')"
            )


def create_config(
    pg: Any,
    flavour: Flavour,
    profile: Any,
    workspace_gib: float | None,
    timing_cache: Any,
    opt_level: int | None,
    compute_capabilities: Sequence[tuple[int, int]] | None,
    tf32: bool,
) -> Any:
    """Polygraphy's config loader for the flavour. FP32 layers run in FP32 unless ``tf32``:
    ``CreateConfig`` clears TF32 by default, ``CreateConfigRTX`` leaves TensorRT-RTX's default (on),
    so for RTX the flag is cleared (or set) explicitly afterwards."""
    kwargs: dict[str, Any] = {"profiles": [profile], "builder_optimization_level": opt_level}
    if timing_cache and Path(timing_cache).is_file():
        kwargs["load_timing_cache"] = str(timing_cache)
    if workspace_gib:
        trt = flavour.module
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))}
    if flavour.is_rtx:
        rtx = _deps.require("polygraphy.backend.tensorrt_rtx")
        config = rtx.CreateConfigRTX(compute_capabilities=list(compute_capabilities or []) or None, **kwargs)
        flag = flavour.module.BuilderFlag.TF32

        def set_tf32(_builder: Any, _network: Any, cfg: Any) -> None:
            (cfg.set_flag if tf32 else cfg.clear_flag)(flag)

        return pg.PostprocessConfig(config, set_tf32)
    if compute_capabilities:
        raise BuildError(
            "{compute_capabilities} applies to TensorRT-RTX only; full TensorRT builds for this GPU",
            param="compute_capabilities",
        )
    return pg.CreateConfig(tf32=tf32, **kwargs)
