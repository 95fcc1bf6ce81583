"""PyTorch -> ONNX, cleaned for TensorRT and proven equal to its source in ONNX Runtime.

The TorchScript exporter is used on purpose: with the model's constant-channel reshapes it emits no
shape arithmetic, and it is several times faster than the dynamo exporter on deep variants. The
onnxscript optimizer then folds batch norms, constants and ``Identity`` nodes away.
"""

from __future__ import annotations

import copy
import io
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from resnest_deploy import _deps, data, formats, metadata, reference
from resnest_deploy._io import artifact_pair, prepare_outputs
from resnest_deploy.compare import TOLERANCES, Metrics, Tolerance, assert_close, compare
from resnest_deploy.errors import ExportError, first_line
from resnest_deploy.formats import DEFAULT_OPSET, INPUT_NAME, OPSET_RANGE, OUTPUT_NAME, InputForm
from resnest_deploy.models import WeightsInfo, get_spec
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
from resnest_deploy.runners.torch import TorchRunner

PARITY_SEED = 0
MAX_SIDE = 4096  # pixels: larger inputs would not fit a tracing pass in memory

Progress = Callable[[str], None]


@dataclass
class ExportReport:
    path: Path
    sidecar: Path
    arch: str | None
    opset: int
    input_shape: list[int | str]
    nodes: int
    op_counts: dict[str, int]
    parity: dict[str, Metrics]  # keyed by "batch=N"
    seconds: float
    size_bytes: int
    sha256: str
    metadata: dict[str, Any] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["sidecar"] = str(self.path), str(self.sidecar)
        d["parity"] = {k: m.as_dict() for k, m in self.parity.items()}
        return d


def parity_inputs(
    batch: int, input_size: tuple[int, int], seed: int = PARITY_SEED, frames: InputForm | None = None
) -> np.ndarray:
    """Seeded, normalised-image-like inputs, the same on every machine. For a file that takes frames,
    they are normalised random uint8 pixels, so the file's own input form holds them exactly."""
    if frames is None:
        return np.random.default_rng(seed + batch).standard_normal((batch, 3, *input_size), dtype=np.float32)
    assert frames.mean is not None and frames.std is not None
    return data.random_frames(batch, input_size, frames.mean, frames.std, seed + batch)


class _FramesIn(torch.nn.Module):
    """The network behind its input form: Cast/Transpose/normalise in the graph, or (deepstream)
    x/255 - mean in with 1/std folded into the first convolution."""

    def __init__(self, model: torch.nn.Module, fmt: InputForm) -> None:
        super().__init__()
        self.layout = fmt.name
        if fmt.name == "deepstream":
            model = copy.deepcopy(model)
            conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            with torch.no_grad():  # W' = W / std[c_in]: conv(x * s) == conv'(x), padding zeros stay zero
                conv.weight.div_(torch.tensor(fmt.std).reshape(1, 3, 1, 1))
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(fmt.mean).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(fmt.std).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout in ("uint8-nhwc", "uint8-nchw"):
            x = x.float()
            if self.layout == "uint8-nhwc":
                x = x.permute(0, 3, 1, 2)
            x = (x / 255.0 - self.mean) / self.std
        return self.model(x)


def _validate(opset: int, batch: int | str, input_size: Sequence[int]) -> None:
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ExportError(
            f"opset {opset} is not supported; "
            f"use {OPSET_RANGE[0]}..{OPSET_RANGE[1]} (default {DEFAULT_OPSET})"
        )
    if batch != "dynamic" and not (isinstance(batch, int) and batch >= 1):
        raise ExportError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    if len(input_size) != 2 or min(input_size) < 32 or max(input_size) > MAX_SIDE:
        raise ExportError(f"input size must be two numbers H W from 32 to {MAX_SIDE}, got {list(input_size)}")


def _check_finite(model: torch.nn.Module) -> None:
    """NaN/Inf weights are the checkpoint's fault; say so instead of failing parity later."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ExportError(
                f"the model's {name} holds NaN or Inf values; the checkpoint is corrupt, load a good one"
            )


def _trace(
    model: torch.nn.Module, example: torch.Tensor, opset: int, dynamic_axes: dict[str, dict[int, str]]
) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices are not the user's business
        torch.onnx.export(
            model,
            (example,),
            buf,  # type: ignore[arg-type]  # file-like objects work; the stubs say paths
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes or None,
            do_constant_folding=True,
        )
    return buf.getvalue()


def _named_as_traced(optimized: Any, traced: Any) -> Any:
    """Node names carry the module path (``/layer1/layer1.0/conv2/fc1/Conv``), which INT8's default
    FP32 nodes and its search go by. The optimizer rebuilds a node whose weight came through an
    ``Identity`` (the tracer shares equal constants that way: random weights' zero biases) as
    ``node_Conv_N``; give each node back the name of the traced node that made the same output."""
    names = {o: n.name for n in traced.graph.node for o in n.output if n.name}
    for node in optimized.graph.node:
        if node.name.startswith("node_") and node.output and node.output[0] in names:
            node.name = names[node.output[0]]
    return optimized


def _checked_input(
    arch: str | None, opset: int, batch: int | str, input_size: Sequence[int] | None, input_format: str
) -> tuple[tuple[int, int], InputForm | None]:
    """The input's H W (the arch's pretrained size by default) and, for a frames input, its form."""
    spec = get_spec(arch) if arch else None
    size = cast(
        tuple[int, int],
        tuple(input_size) if input_size else (spec.pretrained.input_size,) * 2 if spec else (224, 224),
    )  # _validate checks it really has two entries
    _validate(opset, batch, size)
    formats.check_format(input_format)
    if input_format != "float" and spec is None:
        raise ExportError(
            f"{{input_format}} {input_format} needs a registered arch (its mean and std)",
            param="input_format",
        )
    frames = None
    if input_format != "float" and spec is not None:
        frames = InputForm(input_format, spec.pretrained.mean, spec.pretrained.std)
    return size, frames


def _dynamic_axes(batch: int | str, dynamic_hw: bool, input_format: str) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    if batch == "dynamic":
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    if dynamic_hw:
        hw_axes = (1, 2) if input_format == "uint8-nhwc" else (2, 3)
        axes.setdefault(INPUT_NAME, {}).update(dict(zip(hw_axes, ("height", "width"), strict=True)))
    return axes


def _parity(
    model: torch.nn.Module,
    serialized: bytes,
    batches: Sequence[int],
    size: tuple[int, int],
    frames: InputForm | None,
    tolerance: Tolerance,
    say: Progress,
) -> dict[str, Metrics]:
    """ONNX Runtime against PyTorch at each batch; raises when a batch is outside ``tolerance``."""
    host = frames.from_normalised if frames is not None else (lambda x: x)
    parity: dict[str, Metrics] = {}
    with OnnxRuntimeRunner(serialized, name="exported ONNX") as ort_runner, TorchRunner(model) as ref:
        for b in batches:
            say(f"parity check in ONNX Runtime at batch {b}")
            x = parity_inputs(b, size, frames=frames)  # PyTorch gets the host transform's output
            m = compare(ref.infer(x), ort_runner.infer(host(x)))
            parity[f"batch={b}"] = m
            assert_close(m, tolerance, f"ONNX export at batch {b}")
    return parity


def _recorded_reference(
    model: torch.nn.Module, arch: str | None, size: tuple[int, int], frames: InputForm | None
) -> dict[str, Any] | None:
    """PyTorch's outputs on the arch's probe inputs, kept in the sidecar for a later ``check``."""
    if not arch or get_spec(arch) is None:
        return None
    probe, probed = reference.probe_inputs(arch, size, frames=frames is not None)
    if probe is None or probed is None:
        return None
    with TorchRunner(model) as ref:
        return reference.record(ref.infer(probe), probed)


@dataclass(frozen=True)
class _Exported:
    """What the sidecar says about one export (everything but the file's own hash and graph)."""

    arch: str | None
    opset: int
    batch: int | str
    size: tuple[int, int]
    dynamic_hw: bool
    input_format: str
    num_classes: int
    weights: WeightsInfo | None


def _metadata(e: _Exported, parity: dict[str, Metrics], recorded: dict[str, Any] | None) -> dict[str, Any]:
    spec = get_spec(e.arch) if e.arch else None
    input_shape = formats.shape(
        e.input_format,
        "batch" if e.batch == "dynamic" else int(e.batch),
        "height" if e.dynamic_hw else e.size[0],
        "width" if e.dynamic_hw else e.size[1],
    )
    return {
        "format": "onnx",
        "arch": e.arch,
        "precision": "fp32",
        "weights": asdict(e.weights) if e.weights else None,
        "opset": e.opset,
        "input": {
            "name": INPUT_NAME,
            "shape": input_shape,
            "dtype": formats.dtype(e.input_format),
            "layout": "NHWC" if e.input_format == "uint8-nhwc" else "NCHW",
            "format": formats.form_record(e.input_format, *(spec.pretrained.mean, spec.pretrained.std))
            if spec
            else None,
        },
        "output": {"name": OUTPUT_NAME, "shape": [input_shape[0], e.num_classes], "dtype": "float32"},
        "num_classes": e.num_classes,
        "preprocessing": metadata.preprocessing(spec, e.size) if spec else None,
        "reference": recorded,
        "parity": {
            "reference": "pytorch fp32 cpu",
            "runtime": "onnxruntime cpu",
            **{k: v.as_dict() for k, v in parity.items()},
        },
        "created": metadata.now(),
        "tools": metadata.tool_versions(),
    }


def _write(proto: Any, path: Path, meta: dict[str, Any]) -> Path:
    """The file and its sidecar, installed together once the full ONNX checker passes."""
    onnx = _deps.require("onnx")
    with artifact_pair(path) as pair:
        onnx.save(proto, pair.tmp)
        try:
            onnx.checker.check_model(str(pair.tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"exported graph fails onnx.checker: {first_line(e)}") from e
        meta |= metadata.file_and_graph(pair.tmp, path.name, proto)
        return pair.write_sidecar(meta)


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | str = "dynamic",
    input_size: Sequence[int] | None = None,
    dynamic_hw: bool = False,
    input_format: str = "float",
    simplify: bool = True,
    parity_batches: Sequence[int] = (1, 4),
    tolerance: Tolerance = TOLERANCES["fp32"],
    weights: WeightsInfo | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Export ``model`` to ``path``; raise (and write nothing) unless ONNX Runtime reproduces it."""
    onnx = _deps.require("onnx")
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    arch = getattr(model, "arch", None)
    size, frames = _checked_input(arch, opset, batch, input_size, input_format)
    path = Path(path)
    prepare_outputs([path], [weights.location if weights and weights.kind == "file" else None])
    _check_finite(model)
    model = model.eval()

    trace_batch = 1 if batch == "dynamic" else int(batch)
    graph_model = _FramesIn(model, frames).eval() if frames is not None else model
    host = frames.from_normalised if frames is not None else (lambda x: x)
    example = torch.from_numpy(host(parity_inputs(trace_batch, size, frames=frames)))
    say(f"tracing {arch or type(model).__name__} at {trace_batch}x3x{size[0]}x{size[1]}, opset {opset}")
    try:
        proto = onnx.load_from_string(
            _trace(graph_model, example, opset, _dynamic_axes(batch, dynamic_hw, input_format))
        )
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed: {first_line(e)}") from e
    if simplify:
        say("folding batch norms and constants")
        proto = _named_as_traced(_deps.require("onnxscript.optimizer").optimize(proto), proto)
    proto.producer_name, proto.producer_version = (
        "resnest-deploy",
        metadata.tool_versions().get("resnest-deploy", ""),
    )

    batches = list(parity_batches) if batch == "dynamic" else [int(batch)]
    parity = _parity(model, proto.SerializeToString(), batches, size, frames, tolerance, say)
    say("recording PyTorch reference outputs on the probe inputs")
    recorded = _recorded_reference(model, arch, size, frames)
    num_classes = int(cast(torch.nn.Linear, model.get_submodule("fc")).out_features)
    exported = _Exported(arch, opset, batch, size, dynamic_hw, input_format, num_classes, weights)
    meta = _metadata(exported, parity, recorded)
    metadata.embed(proto, meta)
    say("running the full ONNX checker and writing")
    sidecar = _write(proto, path, meta)
    return ExportReport(
        path=path,
        sidecar=sidecar,
        arch=arch,
        opset=opset,
        input_shape=meta["input"]["shape"],
        nodes=meta["graph"]["nodes"],
        op_counts=meta["graph"]["op_counts"],
        parity=parity,
        seconds=time.perf_counter() - started,
        size_bytes=meta["file"]["bytes"],
        sha256=meta["file"]["sha256"],
        metadata=meta,
    )
