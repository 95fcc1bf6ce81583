"""`resnest-deploy serve`: artifacts behind a real Triton Inference Server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.cli._common import (
    InstancesOpt,
    MaxBatchOpt,
    NamesOpt,
    Provider,
    ProviderOpt,
    QueueDelayOpt,
)
from resnest_deploy.cli._console import err, out
from resnest_deploy.cli._errors import handle_errors


@handle_errors
def serve_cmd(
    artifacts: Annotated[list[Path], typer.Argument(help="ONNX files (or engines, on a GPU) to serve.")],
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (KServe v2 protocol).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 to accept other machines (the image does).")
    ] = "127.0.0.1",
    name: NamesOpt = None,
    max_batch_size: MaxBatchOpt = None,
    queue_delay_us: QueueDelayOpt = 500,
    instances: InstancesOpt = 1,
    log: Annotated[Path | None, typer.Option(help="Append tritonserver's log here.")] = None,
    provider: ProviderOpt = Provider.cpu,
    drain_timeout: Annotated[
        float,
        typer.Option(min=0.5, max=3600, help="On SIGTERM, wait this long for requests in flight."),
    ] = 10.0,
    admin_api: Annotated[
        bool,
        typer.Option(
            help="Open Triton's model-control, logging, trace and shared-memory APIs (closed by default)."
        ),
    ] = False,
    status_file: Annotated[
        Path | None,
        typer.Option(help="Write the ports here as JSON once ready (removed on exit); for health checks."),
    ] = None,
) -> None:
    """Serve artifacts with Triton: dynamic batching, labels, metadata, health, statistics.

    Uses the tritonserver that nvidia-pytriton bundles (pip install --no-deps nvidia-pytriton),
    which runs on a CPU-only machine; each artifact is a python-backend model running this
    package's runners. The HTTP and gRPC ports are fronts that parse, bound and rebuild every
    request before Triton reads it (Triton's own ports are private). On Ctrl-C or SIGTERM it
    answers not-ready, finishes the requests in flight (--drain-timeout) and stops within
    seconds; if a model stops answering it exits non-zero, so a supervisor can restart it.

    Examples:
      resnest-deploy serve models/resnest14d_digits/resnest14d_digits.onnx
      resnest-deploy serve m.int8-cpu.onnx --host 0.0.0.0 --instances 2
      curl localhost:8000/v2/models/resnest14d_digits/config
    """
    from resnest_deploy.serving.config import check_servable
    from resnest_deploy.serving.server import Ports, serve_forever, start_to_ready_s

    check_servable(artifacts)
    ports = Ports(http_port, grpc_port, metrics_port, host)

    def ready(entries: list) -> None:
        for e in entries:
            out.print(f"serving {e.name} ({e.artifact}), max batch {e.max_batch_size}")
        out.print(
            f"ready: http://{ports.url}/v2/health/ready, gRPC {host}:{grpc_port}, metrics :{metrics_port}"
        )
        took = start_to_ready_s()
        if took is not None:
            err.print(f"start to ready: {took:.2f} s (process start, models loaded and warmed up)")
        err.print("Ctrl-C stops the server")

    serve_forever(
        artifacts,
        ports,
        on_ready=ready,
        names=name,
        max_batch_size=max_batch_size,
        queue_delay_us=queue_delay_us,
        provider=provider.value,
        instances=instances,
        log=log,
        drain_timeout=drain_timeout,
        admin_api=admin_api,
        status_file=status_file,
        say=err.print,
    )
