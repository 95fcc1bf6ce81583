"""`resnest-deploy serve`: artifacts behind a real Triton Inference Server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.cli._common import Provider, ProviderOpt, err, handle_errors, out
from resnest_deploy.cli.triton import MaxBatchOpt, NamesOpt, QueueDelayOpt


@handle_errors
def serve_cmd(
    artifacts: Annotated[list[Path], typer.Argument(help="ONNX files (or engines, on a GPU) to serve.")],
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (KServe v2 protocol).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    host: Annotated[
        str, typer.Option(help="Address to listen on (127.0.0.1 for this machine only).")
    ] = "0.0.0.0",
    name: NamesOpt = None,
    max_batch_size: MaxBatchOpt = None,
    queue_delay_us: QueueDelayOpt = 500,
    log: Annotated[Path | None, typer.Option(help="Write tritonserver's log here.")] = None,
    provider: ProviderOpt = Provider.cpu,
) -> None:
    """Serve artifacts with Triton: dynamic batching, labels, metadata, health, statistics.

    Uses the tritonserver that nvidia-pytriton bundles (pip install --no-deps nvidia-pytriton),
    which runs on a CPU-only machine; each artifact is a python-backend model running this
    package's runners. Stops cleanly on Ctrl-C or SIGTERM.

    Examples:
      resnest-deploy serve models/resnest14d_digits/resnest14d_digits.onnx --host 127.0.0.1
      curl localhost:8000/v2/models/resnest14d_digits/config
    """
    from resnest_deploy.serving.server import Ports, serve_forever

    ports = Ports(http_port, grpc_port, metrics_port, host)

    def ready(entries: list) -> None:
        for e in entries:
            out.print(f"serving {e.name} ({e.artifact}), max batch {e.max_batch_size}")
        out.print(
            f"ready: http://{ports.url}/v2/health/ready, gRPC {host}:{grpc_port}, metrics :{metrics_port}"
        )
        err.print("Ctrl-C stops the server")

    err.print(f"starting tritonserver for {len(artifacts)} model(s)")
    serve_forever(
        artifacts,
        ports,
        on_ready=ready,
        names=name,
        max_batch_size=max_batch_size,
        queue_delay_us=queue_delay_us,
        provider=provider.value,
        log=log,
    )
