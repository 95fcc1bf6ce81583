"""`resnest-deploy triton`: a Triton model repository for artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.cli._common import InstancesOpt, JsonOpt, MaxBatchOpt, NamesOpt, QueueDelayOpt
from resnest_deploy.cli._console import out, print_json
from resnest_deploy.cli._errors import handle_errors

RepoOpt = Annotated[Path, typer.Option("--repo", help="Model repository folder (created; models are added).")]


@handle_errors
def triton_cmd(
    artifacts: Annotated[list[Path], typer.Argument(help="ONNX files and/or engines, one model each.")],
    repo: RepoOpt,
    name: NamesOpt = None,
    max_batch_size: MaxBatchOpt = None,
    queue_delay_us: QueueDelayOpt = 500,
    gpu: Annotated[
        bool, typer.Option(help="instance_group KIND_GPU for ONNX models (engines always).")
    ] = False,
    tensorrt_accelerator: Annotated[
        bool, typer.Option(help="ONNX models: ONNX Runtime's TensorRT execution accelerator.")
    ] = False,
    python_backend: Annotated[
        bool, typer.Option(help="Serve through this package's runners in Triton's python backend.")
    ] = False,
    instances: InstancesOpt = 1,
    json_out: JsonOpt = False,
) -> None:
    """Write a Triton model repository: config.pbtxt, the file, labels, warm-up, dynamic batching.

    Engines become tensorrt_plan models (TensorRT-RTX engines are refused: Triton's backend is full
    TensorRT), ONNX files onnxruntime_onnx models, or python-backend models with --python-backend.
    max_batch_size above an engine's profile is refused.

    Examples:
      resnest-deploy triton models/resnest50/resnest50.plan --repo triton_repo
      resnest-deploy triton m.onnx m.int8-cpu.onnx --repo repo --max-batch-size 16 --queue-delay-us 1000
    """
    from resnest_deploy.serving.repository import write_repository

    entries = write_repository(
        list(artifacts),
        repo,
        names=name,
        python_backend=python_backend,
        max_batch_size=max_batch_size,
        queue_delay_us=queue_delay_us,
        gpu=gpu,
        tensorrt_accelerator=tensorrt_accelerator,
        instances=instances,
    )
    if json_out:
        print_json(
            [
                {"name": e.name, "platform": e.platform, "max_batch_size": e.max_batch_size, "notes": e.notes}
                for e in entries
            ]
        )
        return
    for e in entries:
        out.print(f"{repo / e.name}: {e.platform}, max_batch_size {e.max_batch_size}, from {e.artifact}")
        for note in e.notes:
            out.print(f"  {note}", style="yellow")
