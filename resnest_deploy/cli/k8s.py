"""`resnest-deploy k8s`: Kubernetes manifests for a Triton model repository, validated offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.cli._common import JsonOpt, handle_errors, out, print_json


@handle_errors
def k8s_cmd(
    repo: Annotated[Path, typer.Argument(help="A model repository written by `resnest-deploy triton`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the manifests (created).")],
    name: Annotated[
        str, typer.Option(help="Name of the Deployment, Service, HPA, ... (DNS label).")
    ] = "resnest",
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "default",
    image: Annotated[
        str | None,
        typer.Option(
            help="Server image: default resnest-deploy:serve for python-backend repositories; for ONNX "
            "Runtime / TensorRT models NVIDIA's nvcr.io/nvidia/tritonserver:<yy.mm>-py3 matching the plans."
        ),
    ] = None,
    p99_ms: Annotated[
        float, typer.Option(min=1, max=600_000, help="Latency budget (p99) the HPA keeps.")
    ] = 100.0,
    throughput: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Images/s one pod serves, as benchmarks/serve_throughput.py measures it; the HPA then "
            "scales on Triton's pending requests per pod (else on CPU).",
        ),
    ] = None,
    min_replicas: Annotated[int, typer.Option(min=1, max=1000)] = 1,
    max_replicas: Annotated[int, typer.Option(min=1, max=1000)] = 4,
    memory_mib: Annotated[
        int | None, typer.Option(min=64, max=1_048_576, help="Memory request per pod (default: estimated).")
    ] = None,
    storage_class: Annotated[str | None, typer.Option(help="StorageClass of the repository's PVC.")] = None,
    kserve: Annotated[bool, typer.Option(help="A KServe InferenceService (Triton runtime) instead.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write Kubernetes manifests that serve a Triton model repository, validated offline.

    A Deployment (probes, non-root, read-only root, GPU requests for GPU models, /dev/shm for the
    python backend, the repository read-only from a ReadOnlyMany PVC), a Service, a ServiceMonitor, a
    HorizontalPodAutoscaler on Triton's pending requests per pod with the Prometheus adapter rule it
    needs; or a KServe InferenceService. Every manifest is checked against the Kubernetes 1.31
    schemas before anything is written.

    Examples:
      resnest-deploy k8s triton_repo -o k8s/ --throughput 1200 --p99-ms 50 --max-replicas 8
      resnest-deploy k8s triton_repo -o k8s/ --image nvcr.io/nvidia/tritonserver:24.08-py3 --kserve
    """
    from resnest_deploy.serving import kubernetes

    docs = kubernetes.manifests(
        repo,
        name=name,
        namespace=namespace,
        image=image,
        p99_ms=p99_ms,
        throughput=throughput,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        memory_mib=memory_mib,
        storage_class=storage_class,
        kserve=kserve,
    )
    checked = kubernetes.validate(docs)
    written = kubernetes.write(docs, output)
    if json_out:
        print_json({"written": [str(p) for p in written], "validated": checked})
        return
    for line in checked:
        out.print(f"valid: {line}")
    out.print(f"wrote {len(written)} files to {output}; the repository goes into PVC {name}-models first")
    note = kubernetes.image_note(docs)
    if note:
        out.print(note)
