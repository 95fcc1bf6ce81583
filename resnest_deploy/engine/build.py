"""ONNX -> TensorRT engine through Polygraphy: one strongly typed path for TensorRT 10, 11 and RTX.

Precision lives in the ONNX file (FP16 graph, INT8 Q/DQ), so the builder is never told a precision:
TensorRT 10.x and TensorRT-RTX get the strongly-typed network flag, TensorRT 11 is strongly typed.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnest_deploy import _deps, metadata
from resnest_deploy._io import artifact_pair, prepare_outputs, require_file, sha256_file
from resnest_deploy.engine.flavour import Flavour, detect, polygraphy_trt
from resnest_deploy.engine.settings import (
    capture_log,
    create_config,
    refuse_jetson,
    resolve_timing_cache,
    target_of,
)
from resnest_deploy.errors import ArtifactError, BuildError, first_line
from resnest_deploy.formats import InputForm
from resnest_deploy.interface import ONNX_TYPES
from resnest_deploy.limits import MAX_BATCH
from resnest_deploy.onnx_files import load_onnx

Progress = Callable[[str], None]
#: no GPU has more memory than this; larger numbers are typos (1e12) rather than wishes
MAX_WORKSPACE_GIB = 1024


@dataclass
class BuildReport:
    path: Path
    sidecar: Path
    backend: str
    version: str
    precision: str
    profile: dict[str, list[int]]
    seconds: float
    size_bytes: int
    log: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {**self.metadata, "path": str(self.path), "sidecar": str(self.sidecar)}


def parse_batch_range(text: str) -> tuple[int, int, int]:
    """``"1,8,32"`` -> (1, 8, 32); ``"8"`` -> (8, 8, 8)."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2] <= MAX_BATCH:
        raise BuildError(
            f"batch profile {text!r} is not MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX <= {MAX_BATCH} "
            "(e.g. 1,8,32)"
        )
    return parts[0], parts[1], parts[2]


def _onnx_io(path: Path) -> tuple[str, list[int | str], dict[str, Any]]:
    """The input's name and dims, and the checked metadata with the engine's ``input`` and ``output``
    records taken from the graph (names, dtype, layout) plus the input form the export recorded, so
    every reader of the engine's sidecar feeds it what it takes."""
    model = load_onnx(path)  # also refuses external data outside the model's folder
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise ArtifactError(
            f"{path} has {len(model.graph.input)} inputs and {len(model.graph.output)} outputs; a ResNeSt "
            "export has one image input and one logits output"
        )
    inp, out = model.graph.input[0], model.graph.output[0]
    dims: list[int | str] = [d.dim_param or d.dim_value or "?" for d in inp.type.tensor_type.shape.dim]
    out_dims: list[int | str] = [d.dim_param or d.dim_value or "?" for d in out.type.tensor_type.shape.dim]
    meta = metadata.of_onnx(model, path) or {"precision": metadata.graph_precision(model)}
    form = InputForm.of(meta)
    dtype = ONNX_TYPES.get(inp.type.tensor_type.elem_type)
    if dtype is None:
        raise ArtifactError(f"{path} takes ONNX type {inp.type.tensor_type.elem_type}; re-export it")
    recorded = meta.get("input") or {}
    meta["input"] = {
        "name": inp.name,
        "shape": dims,
        "dtype": dtype,
        "layout": form.layout,
        "format": recorded.get("format"),  # absent: float, as for every file before input forms
    }
    meta["output"] = {"name": out.name, "shape": out_dims, "dtype": "float32"}
    if isinstance(out_dims[-1], int):
        meta["num_classes"] = out_dims[-1]
    return inp.name, dims, meta


@dataclass(frozen=True)
class _Source:
    """The ONNX file an engine is built from: its input, profile shapes and metadata."""

    path: Path
    input_name: str
    shapes: dict[str, list[int]]
    meta: dict[str, Any]


def _source(
    onnx_path: Path, batch: tuple[int, int, int], workspace_gib: float | None, opt_level: int | None
) -> _Source:
    """The build's input checked before any work: one 3-channel image input, a batch range the file
    allows, and settings in range."""
    if workspace_gib is not None and not (0 < workspace_gib <= MAX_WORKSPACE_GIB):
        raise BuildError(
            f"workspace {workspace_gib} GiB is not a size in (0, {MAX_WORKSPACE_GIB}] GiB; "
            "e.g. {workspace_gib} 4",
            param="workspace_gib",
        )
    input_name, dims, meta = _onnx_io(onnx_path)
    nhwc = InputForm.of(meta).layout == "NHWC"
    if len(dims) != 4 or dims[3 if nhwc else 1] != 3:
        want = "N,H,W,3" if nhwc else "N,3,H,W"
        raise ArtifactError(f"{onnx_path} input {input_name!r} has shape {dims}; expected {want}")
    if isinstance(dims[0], int) and (batch[0] != dims[0] or batch[2] != dims[0]):
        raise BuildError(
            f"{onnx_path} has a static batch of {dims[0]} but batch range "
            f"{','.join(map(str, batch))} was asked; "
            f"re-export with --batch-dim dynamic or build with {{batch={dims[0]}}}",
            param="batch",
        )
    if opt_level is not None and not 0 <= opt_level <= 5:
        raise BuildError(f"optimization level {opt_level} is out of range; use 0..5")
    hw = [d for d in (dims[1:3] if nhwc else dims[2:]) if isinstance(d, int)]
    if len(hw) != 2:  # dynamic H/W: build for the arch's eval size
        size = meta.get("preprocessing", {}) or {}
        hw = [int(v) for v in size.get("input_size", (224, 224))]
    per_image = [*hw, 3] if nhwc else [3, *hw]
    shapes = {k: [b, *per_image] for k, b in zip(("min", "opt", "max"), batch, strict=True)}
    return _Source(onnx_path, input_name, shapes, meta)


def _plan(
    flavour: Flavour, src: _Source, make_config: Callable[[Any, Any], Any], timing_cache: Any
) -> tuple[bytes, list[str]]:
    """The serialized engine and the builder's deduplicated warnings and errors."""
    pg = polygraphy_trt(flavour)
    logger = _deps.require("polygraphy.logger").G_LOGGER
    exc_type = _deps.require("polygraphy.exception").PolygraphyException
    log, restore = capture_log(logger)
    try:
        network = pg.NetworkFromOnnxPath(str(src.path), strongly_typed=flavour.needs_strongly_typed_flag)
        profile = pg.Profile().add(src.input_name, **{k: tuple(v) for k, v in src.shapes.items()})
        engine = pg.EngineBytesFromNetwork(
            network, make_config(pg, profile), save_timing_cache=str(timing_cache) if timing_cache else None
        )
        plan = bytes(engine())
    except exc_type as e:
        errors = [m for m in log() if m.startswith("error:") and "cuda" not in m.lower()]
        detail = errors[0].removeprefix("error: ") if errors else first_line(e)
        raise BuildError(f"{flavour.backend} cannot build {src.path.name}: {detail[:240]}") from e
    finally:
        restore()
    return plan, log()


@dataclass(frozen=True)
class _Settings:
    tf32: bool
    opt_level: int | None
    workspace_gib: float | None
    compute_capabilities: Sequence[tuple[int, int]] | None


def _sidecar(src: _Source, flavour: Flavour, settings: _Settings) -> dict[str, Any]:
    """What the engine's sidecar says of its source and build (the build's own record is added after)."""
    meta = src.meta
    return {
        "format": "tensorrt-engine",
        "arch": meta.get("arch"),
        "weights": meta.get("weights"),
        "precision": meta["precision"],
        "num_classes": meta.get("num_classes"),  # the graph's
        "preprocessing": meta.get("preprocessing"),
        "reference": meta.get("reference"),
        "source_onnx": {"path": str(src.path), "sha256": sha256_file(src.path)},
        "tensorrt": {
            "flavour": flavour.backend,
            "version": flavour.version,
            "strongly_typed": True,
            "tf32": settings.tf32,  # FP32 layers may use TF32 math only when asked
            "opt_level": settings.opt_level,
            "workspace_gib": settings.workspace_gib,
        },
        "target": {"compute_capabilities": target_of(flavour, settings.compute_capabilities)},
        "input": {**meta["input"], "profile": src.shapes},  # the file's form: what to feed it
        "output": meta["output"],
    }


def build_engine(
    onnx_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    backend: str = "auto",
    batch: tuple[int, int, int] = (1, 8, 32),
    workspace_gib: float | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    opt_level: int | None = None,
    compute_capabilities: Sequence[tuple[int, int]] | None = None,
    tf32: bool = False,
    progress: Progress | None = None,
    cache_timing: bool = True,
) -> BuildReport:
    """Build an engine for ``onnx_path``'s dynamic batch; write it and its sidecar atomically.

    Without ``timing_cache``, TensorRT 10/11 keep their layer timings in the cache registry's
    ``tensorrt-timing`` folder for this GPU and version (``cache_timing``), so a rebuild skips the
    kernel measurements; TensorRT-RTX has no timing cache."""
    say = progress or (lambda _msg: None)
    onnx_path = require_file(onnx_path, "ONNX file")
    output = Path(output) if output else onnx_path.with_suffix(".plan")
    prepare_outputs([output], [onnx_path])
    src = _source(onnx_path, batch, workspace_gib, opt_level)
    flavour = detect(backend)
    if flavour.is_rtx:
        refuse_jetson(compute_capabilities or (), onnx_path, batch)
    timing_cache, timing_note, registry = resolve_timing_cache(flavour, timing_cache, cache_timing)
    say(f"building with {flavour.backend} {flavour.version}, batch {batch[0]}..{batch[2]} (opt {batch[1]})")

    def make_config(pg: Any, profile: Any) -> Any:
        return create_config(
            pg, flavour, profile, workspace_gib, timing_cache, opt_level, compute_capabilities, tf32
        )

    started = time.perf_counter()
    plan, builder_log = _plan(flavour, src, make_config, timing_cache)
    seconds = time.perf_counter() - started
    if registry is not None:
        registry.seal()
    sidecar_data = _sidecar(src, flavour, _Settings(tf32, opt_level, workspace_gib, compute_capabilities))
    sidecar_data |= {"build_seconds": round(seconds, 3), "timing_cache": timing_note}
    sidecar_data |= {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "builder_log": builder_log,
    }
    sidecar_data |= {"created": metadata.now(), "tools": metadata.tool_versions()}
    with artifact_pair(output) as pair:
        pair.tmp.write_bytes(plan)
        sidecar_data |= metadata.file_entry(pair.tmp, output.name)
        sidecar = pair.write_sidecar(sidecar_data)
    return BuildReport(
        output,
        sidecar,
        flavour.backend,
        flavour.version,
        src.meta["precision"],
        src.shapes,
        seconds,
        output.stat().st_size,
        builder_log,
        sidecar_data,
    )
