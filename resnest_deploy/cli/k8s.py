"""`resnest-deploy k8s`: Kubernetes manifests for a Triton model repository, validated offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from resnest_deploy.cli._common import JsonOpt
from resnest_deploy.cli._console import out, print_json
from resnest_deploy.cli._errors import handle_errors

RepoArg = Annotated[Path, typer.Argument(help="A model repository written by `resnest-deploy triton`.")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Folder for the manifests (created).")]
NameOpt = Annotated[str, typer.Option(help="Name of the Deployment, Service, HPA, ... (DNS label).")]
NamespaceOpt = Annotated[str, typer.Option(help="Kubernetes namespace.")]
ImageOpt = Annotated[
    str | None,
    typer.Option(
        help="Server image: default resnest-deploy:serve for python-backend repositories; for ONNX "
        "Runtime / TensorRT models NVIDIA's nvcr.io/nvidia/tritonserver:<yy.mm>-py3 matching the plans."
    ),
]
P99Opt = Annotated[float, typer.Option(min=1, max=600_000, help="Latency budget (p99) the HPA keeps.")]
ThroughputOpt = Annotated[
    float | None,
    typer.Option(
        min=0.001,
        help="Images/s one pod serves, as benchmarks/serve_throughput.py measures it; the HPA then "
        "scales on Triton's pending requests per pod (else on CPU).",
    ),
]
ReplicasOpt = Annotated[int, typer.Option(min=1, max=1000)]
MemoryOpt = Annotated[
    int | None, typer.Option(min=64, max=1_048_576, help="Memory request per pod (default: estimated).")
]
StartOpt = Annotated[
    float | None,
    typer.Option(
        help="serve's start to ready on your nodes (`serve --status-file F` records it as "
        "start_to_ready_s); the startup probe allows 3x it, at least a minute. Default: 31.2, "
        "measured for resnest50 INT8 with a cold cache on a 2-core CPU.",
    ),
]
StorageClassOpt = Annotated[str | None, typer.Option(help="StorageClass of the repository's PVC.")]
KserveOpt = Annotated[bool, typer.Option(help="A KServe InferenceService (Triton runtime) instead.")]
MetricsNamespaceOpt = Annotated[
    str | None,
    typer.Option(
        help="Namespace of the Prometheus that scrapes Triton's metrics port; the NetworkPolicy "
        "admits that port from there only (http and grpc from any client). Default: monitoring."
    ),
]
RayJobOpt = Annotated[
    bool,
    typer.Option(
        "--ray-job",
        help="A KubeRay RayJob that runs `eval` of the repository's ONNX models on a Ray cluster "
        "instead (checked against KubeRay v1.7.0's CRD); --image must hold resnest-deploy\\[ray-cluster] "
        "(ray\\[default]: the head's job server): docker build --target runtime --build-arg "
        "EXTRAS=ray-cluster.",
    ),
]
ImagesClaimOpt = Annotated[
    str | None, typer.Option(help="With --ray-job: the PVC holding the labelled images (mounted read-only).")
]
RayWorkersOpt = Annotated[int, typer.Option(min=1, max=1000, help="With --ray-job: worker pods.")]
WorkerCpusOpt = Annotated[int, typer.Option(min=1, max=512, help="With --ray-job: CPUs per worker.")]
WorkerGpusOpt = Annotated[int, typer.Option(min=0, max=16, help="With --ray-job: GPUs per worker.")]


@handle_errors
def k8s_cmd(
    repo: RepoArg,
    output: OutputOpt,
    name: NameOpt = "resnest",
    namespace: NamespaceOpt = "default",
    image: ImageOpt = None,
    p99_ms: P99Opt = 100.0,
    throughput: ThroughputOpt = None,
    min_replicas: ReplicasOpt = 1,
    max_replicas: ReplicasOpt = 4,
    memory_mib: MemoryOpt = None,
    start_seconds: StartOpt = None,
    storage_class: StorageClassOpt = None,
    kserve: KserveOpt = False,
    metrics_namespace: MetricsNamespaceOpt = None,
    ray_job: RayJobOpt = False,
    images_claim: ImagesClaimOpt = None,
    ray_workers: RayWorkersOpt = 2,
    worker_cpus: WorkerCpusOpt = 2,
    worker_gpus: WorkerGpusOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """Write Kubernetes manifests that serve a Triton model repository, validated offline.

    A Deployment (probes, non-root, read-only root, GPU requests for GPU models, /dev/shm for the
    python backend, the repository read-only from a ReadOnlyMany PVC), a Service, a ServiceMonitor, a
    HorizontalPodAutoscaler on Triton's pending requests per pod with the Prometheus adapter rule it
    needs, a NetworkPolicy admitting only the Service's ports; or a KServe InferenceService. Pin the
    image by digest (--image repo@sha256:<64 hex>): a tag can be moved, a digest cannot.
    Every manifest is checked against the Kubernetes 1.31 schemas before anything is written.

    Examples:
      resnest-deploy k8s triton_repo -o k8s/ --throughput 1200 --p99-ms 50 --max-replicas 8
      resnest-deploy k8s triton_repo -o k8s/ --image nvcr.io/nvidia/tritonserver:24.08-py3 --kserve
      resnest-deploy k8s triton_repo -o k8s/ --image reg.example/resnest@sha256:DIGEST --metrics-namespace obs
      resnest-deploy k8s triton_repo -o k8s-eval/ --ray-job --image my/resnest-ray:1 --images-claim val
    """
    from resnest_deploy.serving import kubernetes, rayjob

    if metrics_namespace is not None and (ray_job or kserve):
        raise typer.BadParameter(
            "the NetworkPolicy comes with the plain Triton manifests only: drop it with --kserve/--ray-job",
            param_hint="--metrics-namespace",
        )
    if ray_job:
        if image is None or images_claim is None:
            raise typer.BadParameter("--ray-job needs --image and --images-claim", param_hint="--ray-job")
        job = rayjob.RayJobOptions(
            name, namespace, image, images_claim, storage_class, ray_workers, worker_cpus, worker_gpus
        )
        docs, checked = rayjob.job_manifests(repo, job)
        _write(docs, checked, output, json_out, f"the images go into PVC {images_claim} first")
        return
    options = kubernetes.ManifestOptions(
        name,
        namespace,
        image,
        p99_ms,
        throughput,
        min_replicas,
        max_replicas,
        memory_mib,
        start_seconds,
        storage_class,
        kserve,
        metrics_namespace or "monitoring",
    )
    docs = kubernetes.manifests(repo, options)
    checked = kubernetes.validate(docs)
    if _write(docs, checked, output, json_out, f"the repository goes into PVC {name}-models first"):
        note = kubernetes.image_note(docs, "--image")
        if note:
            out.print(note)


def _write(docs: dict[str, Any], checked: list[str], output: Path, json_out: bool, then: str) -> bool:
    """Write the validated manifests (all or none) and say so; False when the answer was JSON."""
    from resnest_deploy.serving import kubernetes

    written = kubernetes.write(docs, output)
    if json_out:
        print_json({"written": [str(p) for p in written], "validated": checked})
        return False
    for line in checked:
        out.print(f"valid: {line}")
    out.print(f"wrote {len(written)} files to {output}; {then}")
    return True
