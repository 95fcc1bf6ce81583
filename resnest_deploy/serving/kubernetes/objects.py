"""The manifests themselves, one Kubernetes object each: PVC, Deployment, Service, ServiceMonitor,
NetworkPolicy, HorizontalPodAutoscaler and its Prometheus adapter rule, or a KServe InferenceService.
What is allowed and how large things are: :mod:`.policy`."""

from __future__ import annotations

import math
import os
from typing import Any

from resnest_deploy.serving.kubernetes.policy import (
    SERVE_IMAGE,
    SERVE_IMAGE_BUILD,
    ManifestOptions,
    hpa_target,
    memory_request_mib,
    pod_security,
    server_image,
    startup_probe,
)
from resnest_deploy.serving.kubernetes.repository import RepoModel, read_repository

HTTP, GRPC, METRICS = 8000, 8001, 8002
PENDING_METRIC = "triton_pending_requests"
Doc = dict[str, Any]


def manifests(
    repo: str | os.PathLike[str], options: ManifestOptions | None = None, **fields: Any
) -> dict[str, Doc]:
    """The manifests, by file name (one object each), for ``options`` (or a ManifestOptions of
    ``fields``; checked before the repository is read)."""
    opts = options if options is not None else ManifestOptions(**fields)
    models = read_repository(repo)
    image, python_backend = server_image(models, opts)
    labels = {"app.kubernetes.io/name": opts.name, "app.kubernetes.io/component": "triton"}
    meta = {"name": opts.name, "namespace": opts.namespace, "labels": labels}
    memory = opts.memory_mib or memory_request_mib(models)
    gpu = any(m.gpu for m in models)
    claim = f"{opts.name}-models"
    out: dict[str, Doc] = {"pvc.yaml": _pvc(meta, claim, models, opts.storage_class)}
    if opts.kserve:
        out["inferenceservice.yaml"] = _inference_service(meta, claim, image, memory, gpu, opts)
        return out
    pod = _pod(models, image, python_backend, gpu, memory, claim, startup_probe(opts.start_seconds))
    out["deployment.yaml"] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": opts.min_replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    out["service.yaml"] = _service(meta, labels)
    out["networkpolicy.yaml"] = network_policy(meta, labels, opts.metrics_namespace)
    out["servicemonitor.yaml"] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": labels},
            "namespaceSelector": {"matchNames": [opts.namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }
    out["hpa.yaml"] = _autoscaler(meta, opts)
    out["prometheus-adapter-rules.yaml"] = adapter_rules()
    return out


def image_note(docs: dict[str, Doc], option: str = "image") -> str | None:
    """What must happen before the manifests can run: the serve image is built, not pulled.
    ``option``: what the caller calls the image parameter (the CLI: ``--image``)."""
    deployment = docs.get("deployment.yaml")
    if deployment is None:
        return None
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    if container["image"] != SERVE_IMAGE:
        return None
    return (
        f"the pods run the image {SERVE_IMAGE}, which no registry holds: build it first from this "
        f"project's checkout with `{SERVE_IMAGE_BUILD}`, push it where the cluster pulls from, and "
        f"pass that name with {option}"
    )


def _pvc(meta: Doc, claim: str, models: list[RepoModel], storage_class: str | None) -> Doc:
    size_gib = max(1, math.ceil(2 * sum(m.bytes for m in models) / 2**30))
    pvc: Doc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {**meta, "name": claim},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": f"{size_gib}Gi"}}},
    }
    if storage_class is not None:  # "" is Kubernetes' "no class": bind a volume made beforehand
        pvc["spec"]["storageClassName"] = storage_class
    return pvc


def _service(meta: Doc, labels: dict[str, str]) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": labels,
            "ports": [
                {"name": "http", "port": HTTP, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
                {"name": "metrics", "port": METRICS, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def _autoscaler(meta: Doc, opts: ManifestOptions) -> Doc:
    scaling: Doc
    if opts.throughput is not None:
        scaling = {
            "type": "Pods",
            "pods": {
                "metric": {"name": PENDING_METRIC},
                "target": {
                    "type": "AverageValue",
                    "averageValue": str(hpa_target(opts.throughput, opts.p99_ms)),
                },
            },
        }
    else:  # no measured throughput: CPU, which tracks load on CPU models and says so
        scaling = {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    measured = str(opts.throughput) if opts.throughput else "not measured: CPU target"
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            **meta,
            "annotations": {
                "resnest-deploy/p99-ms": str(opts.p99_ms),
                "resnest-deploy/throughput-per-pod": measured,
            },
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": opts.name},
            "minReplicas": opts.min_replicas,
            "maxReplicas": opts.max_replicas,
            "metrics": [scaling],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def adapter_rules() -> Doc:
    """The Prometheus adapter's rule that serves Triton's pending requests per pod to the HPA."""
    return {
        "rules": [
            {
                "seriesQuery": 'nv_inference_pending_request_count{namespace!="",pod!=""}',
                "resources": {
                    "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
                },
                "name": {"matches": "^nv_inference_pending_request_count$", "as": PENDING_METRIC},
                "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
            }
        ]
    }


def network_policy(meta: Doc, labels: dict[str, str], metrics_namespace: str) -> Doc:
    """Ingress to Triton's pods on the Service's ports only: ``http`` and ``grpc`` from anywhere (the
    clients), ``metrics`` from ``metrics_namespace`` only (the label every namespace carries since
    Kubernetes 1.22). Egress is left alone: Triton makes no connection, and a policy denying egress
    would also deny DNS to anything added to the pod later."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"protocol": "TCP", "port": HTTP}, {"protocol": "TCP", "port": GRPC}]},
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": metrics_namespace}
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": METRICS}],
                },
            ],
        },
    }


def _server_args(
    models: list[RepoModel], python_backend: bool, gpu: bool
) -> tuple[list[str] | None, list[str]]:
    """The container's command (None: the image's entrypoint) and arguments."""
    if python_backend:  # this project's serve image: its entrypoint serves the repository's files
        args = [f"/models/{m.name}/1/{m.file.name}" for m in models]
        for m in models:
            args += ["--name", m.name]
        args += ["--max-batch-size", str(min(m.max_batch_size for m in models))]
        if gpu:
            args += ["--provider", "tensorrt"]
        return None, args
    return ["tritonserver"], [
        "--model-repository=/models",
        f"--http-port={HTTP}",
        f"--grpc-port={GRPC}",
        f"--metrics-port={METRICS}",
        "--strict-readiness=true",
        "--exit-timeout-secs=20",
    ]


def _container(
    models: list[RepoModel], image: str, python_backend: bool, gpu: bool, memory: int, startup: Doc
) -> Doc:
    command, args = _server_args(models, python_backend, gpu)
    resources: Doc = {
        "requests": {"cpu": str(sum(m.instances for m in models)), "memory": f"{memory}Mi"},
        "limits": {"memory": f"{2 * memory}Mi"},
    }
    if gpu:
        resources["limits"]["nvidia.com/gpu"] = 1
    container: Doc = {
        "name": "triton",
        "image": image,
        "args": args,
        "ports": [
            {"name": "http", "containerPort": HTTP},
            {"name": "grpc", "containerPort": GRPC},
            {"name": "metrics", "containerPort": METRICS},
        ],
        "resources": resources,
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5},
        "startupProbe": startup,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "models", "mountPath": "/models", "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if command:
        container["command"] = command
    return container


def _pod(
    models: list[RepoModel],
    image: str,
    python_backend: bool,
    gpu: bool,
    memory: int,
    claim: str,
    startup: Doc,
) -> Doc:
    """The Deployment's pod: non-root, read-only, the repository from the PVC, /dev/shm in memory."""
    largest = max(m.bytes for m in models)
    shm_mib = 256 + 64 * math.ceil(2 * largest / 2**20 / 64) if python_backend else 64
    return {
        "automountServiceAccountToken": False,  # Triton never calls the Kubernetes API
        "terminationGracePeriodSeconds": 30,  # serve drains in-flight requests within 10 s
        "securityContext": pod_security(),
        "containers": [_container(models, image, python_backend, gpu, memory, startup)],
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_mib}Mi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }


def _inference_service(
    meta: Doc, claim: str, image: str, memory: int, gpu: bool, opts: ManifestOptions
) -> Doc:
    triton: Doc = {  # the image as given (a mirror's, a digest): it names the version
        "storageUri": f"pvc://{claim}/",
        "image": image,
        "resources": {
            "requests": {"cpu": "1", "memory": f"{memory}Mi"},
            "limits": {"memory": f"{2 * memory}Mi"},
        },
    }
    if gpu:
        triton["resources"]["limits"]["nvidia.com/gpu"] = 1
    predictor = {"minReplicas": opts.min_replicas, "maxReplicas": opts.max_replicas, "triton": triton}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": predictor},
    }
