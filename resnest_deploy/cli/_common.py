"""The option types and choices that commands share (declared once, as ``Annotated`` aliases) and
default output paths. Output lives in ``_console``, error handling in ``_errors``, progress in
``_progress``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.precision import config as _config

ArchOpt = Annotated[
    str, typer.Option("--arch", "-a", help="Model name, e.g. resnest50 (see `resnest-deploy models`).")
]
WeightsOpt = Annotated[
    str,
    typer.Option(
        "--weights",
        "-w",
        help="'pretrained' (published weights, downloaded once and cached), 'random' (seeded, offline), "
        "a .pth/.pt/.safetensors file, or a URL.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", help="Let the quantizers' own progress bars and logs through.")
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Where to write; default under models/<arch>/.")
]

RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        envvar="RAY_ADDRESS",
        show_envvar=True,
        metavar="ADDRESS|auto",
        help="Run on a Ray cluster (pip install 'resnest-deploy\\[ray]'): its address (HOST:6379) or "
        "'auto' for the one `ray start` runs here. Images are read and classified on the workers: one "
        "actor per CPU for an .onnx file, one per GPU for an engine.",
    ),
]
#: ``--ray`` of the INT8 search (quantize --max-drop, pipeline -p int8): only its trials go there
RaySearchOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        envvar="RAY_ADDRESS",
        show_envvar=True,
        metavar="ADDRESS|auto",
        help="INT8 search: run its per-unit sensitivity trials on a Ray cluster (pip install "
        "'resnest-deploy\\[ray]'), its address (HOST:6379) or 'auto'; calibration and the search's later, "
        "sequential steps stay here. Without a search, RAY_ADDRESS is ignored and --ray refused.",
    ),
]

ArtifactsArg = Annotated[
    list[str], typer.Argument(help="ONNX files (any precision), engines (.plan), or 'torch' / 'torch:cuda'.")
]
ArchOptional = Annotated[
    str | None, typer.Option("--arch", "-a", help="Default: the arch the artifacts record.")
]
WeightsOptional = Annotated[
    str | None, typer.Option("--weights", "-w", help="Default: the weights the artifacts record.")
]


class Provider(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"
    openvino = "openvino"
    openvino_bf16 = "openvino-bf16"


class InputFormat(str, Enum):
    float = "float"
    uint8_nhwc = "uint8-nhwc"
    uint8_nchw = "uint8-nchw"
    deepstream = "deepstream"


class OvHint(str, Enum):
    latency = "latency"
    throughput = "throughput"


# the conversion's choices are defined once, in the library; the options take them from there
Precision = _config.Precision
Reduced = _config.Reduced
Target = _config.Target
Method = _config.Method
CpuIsa = _config.CpuIsa


class Backend(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    tensorrt_rtx = "tensorrt-rtx"


ProviderOpt = Annotated[
    Provider,
    typer.Option(
        help="What runs .onnx files: ONNX Runtime on cpu, cuda or tensorrt; or OpenVINO on the CPU in "
        "f32 ('openvino') or bf16 ('openvino-bf16', CPUs with AVX-512-BF16/AMX). Never a silent BF16."
    ),
]
CountOpt = Annotated[int, typer.Option(min=1, help="How many inputs.")]
ChunkOpt = Annotated[
    int, typer.Option("--chunk-size", min=1, help="Inputs per inference call (memory, engine maximum).")
]
BatchSizesOpt = Annotated[
    str, typer.Option("--batch-sizes", "-b", help="Batch sizes to time, comma-separated, e.g. 1,8,32.")
]

ARTIFACT_ROOT = Path("models")


def default_path(arch: str | None, name: str) -> Path:
    return ARTIFACT_ROOT / (arch or "custom") / name


def parse_batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a comma-separated list of batch sizes, e.g. 1,8,32", param_hint="--batch-sizes"
        ) from None
    if not values or min(values) < 1:
        raise typer.BadParameter("batch sizes must be positive, e.g. 1,8,32", param_hint="--batch-sizes")
    return values


# --- a model repository's settings: `triton` writes them, `serve` writes and serves them
NamesOpt = Annotated[
    list[str] | None, typer.Option("--name", help="Model name per artifact (default: the file's stem).")
]
MaxBatchOpt = Annotated[
    int | None,
    typer.Option(min=1, help="max_batch_size (default: the engine profile's maximum, else 32)."),
]
QueueDelayOpt = Annotated[
    int, typer.Option(min=0, max=10_000_000, help="Dynamic batching: max_queue_delay_microseconds.")
]
InstancesOpt = Annotated[
    int,
    typer.Option(
        min=1, max=64, help="Model instances (instance_group count); CPU instances split the cores."
    ),
]
