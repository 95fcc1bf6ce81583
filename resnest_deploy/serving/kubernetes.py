"""Kubernetes manifests for a Triton model repository written by ``triton``, validated offline.

What is generated, and why (docs/serving.md says more):

* a **Deployment** of Triton: NGC's ``tritonserver`` image (its TensorRT must match the plans; the
  image is the user's to name, since the pairing is by release) for ``onnxruntime_onnx`` and
  ``tensorrt_plan`` models, or this project's ``serve`` image for python-backend models; GPU requests
  for GPU models; an in-memory ``/dev/shm`` for the python backend (Kubernetes gives pods 64 MiB);
  liveness, readiness and startup probes on Triton's health endpoints; a non-root, read-only,
  capability-free security context; the repository mounted read-only from a **PersistentVolumeClaim**
  (ReadOnlyMany). A PVC and not an init container copying from an image: the repository is data that
  changes apart from the server, every replica reads the same copy, and nothing in a pod can alter it.
* a **Service** with named ``http``, ``grpc`` and ``metrics`` ports, and a **ServiceMonitor** for the
  Prometheus operator on ``metrics``;
* a **NetworkPolicy** that admits only those ports to Triton's pods: ``http`` and ``grpc`` from any
  client, ``metrics`` only from the namespace Prometheus runs in (``metrics_namespace``); Triton also
  listens on nothing else, but a policy keeps it so whatever the image does;
* a **HorizontalPodAutoscaler** on Triton's own ``nv_inference_pending_request_count`` per pod, served
  through the Prometheus adapter (its rule is written beside the manifests). By Little's law a pod
  that serves ``throughput`` images/s keeps ``throughput * latency`` requests in flight; the target is
  half of what the p99 budget allows, so replicas are added before requests queue past the budget;
* or, with ``kserve=True``, a KServe **InferenceService** with the Triton runtime.

Every Kubernetes object is validated against the OpenAPI schemas of a pinned Kubernetes version
(PyPI's ``kubernetes-validate``, offline); the CRDs (ServiceMonitor, InferenceService) field by field.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.errors import ArtifactError, MissingDependencyError

#: the Kubernetes version whose schemas every manifest is validated against
KUBERNETES_VERSION = "1.31.0"
HTTP, GRPC, METRICS = 8000, 8001, 8002
SERVE_IMAGE = "resnest-deploy:serve"
PENDING_METRIC = "triton_pending_requests"
_DNS = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1123 label: namespaces
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1035 label: a Service's name
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: an image reference as the container runtimes parse it (distribution/reference's grammar)
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_IMAGE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@(?P<algorithm>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):(?P<hex>[0-9a-fA-F]{32,}))?",
    re.ASCII,
)
#: the digests the runtimes verify (opencontainers/go-digest): lowercase hex of exactly this length;
#: ``sha256:`` + 63 characters parses in the grammar above but no runtime pulls it
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
#: the serve image's build command, printed with manifests that need it
SERVE_IMAGE_BUILD = f"docker build --target serve -t {SERVE_IMAGE} ."
#: the most images/s one pod is taken to serve (a figure beyond it is a typo or an overflow)
MAX_THROUGHPUT = 1_000_000.0


@dataclass(frozen=True)
class RepoModel:
    """One model of a repository, as its config.pbtxt and files say."""

    name: str
    platform: str  # python, onnxruntime_onnx or tensorrt_plan
    gpu: bool
    max_batch_size: int
    instances: int
    file: Path
    bytes: int


def read_repository(repo: str | os.PathLike[str]) -> list[RepoModel]:
    """The models of a repository written by ``triton`` (each config parsed with Triton's schema)."""
    text_format = _require("google.protobuf.text_format")
    model_config_pb2 = _require("tritonclient.grpc.model_config_pb2")
    repo = Path(repo)
    if not repo.is_dir():
        raise ArtifactError(f"model repository not found: {repo}; write one with `resnest-deploy triton`")
    models = []
    for config in sorted(repo.glob("*/config.pbtxt")):
        try:
            cfg = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
        except Exception as e:
            raise ArtifactError(
                f"{config} is not a Triton config ({str(e)[:120]}); rewrite it with `triton`"
            ) from e
        files = [p for p in (config.parent / "1").glob("model.*") if p.suffix in (".onnx", ".plan")]
        if len(files) != 1:
            raise ArtifactError(f"{config.parent} has no single 1/model.onnx or 1/model.plan; rewrite it")
        platform = cfg.backend if cfg.backend == "python" else cfg.platform
        kinds = {g.kind for g in cfg.instance_group}
        models.append(
            RepoModel(
                cfg.name,
                platform,
                model_config_pb2.ModelInstanceGroup.KIND_GPU in kinds,
                cfg.max_batch_size,
                sum(max(1, g.count) for g in cfg.instance_group) or 1,
                files[0],
                files[0].stat().st_size,
            )
        )
    if not models:
        raise ArtifactError(
            f"{repo} holds no model (no */config.pbtxt); write one with `resnest-deploy triton`"
        )
    return models


def image_note(docs: dict[str, dict[str, Any]]) -> str | None:
    """What must happen before the manifests can run: the serve image is built, not pulled."""
    deployment = docs.get("deployment.yaml")
    if deployment is None:
        return None
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    if container["image"] != SERVE_IMAGE:
        return None
    return (
        f"the pods run the image {SERVE_IMAGE}, which no registry holds: build it first from this "
        f"project's checkout with `{SERVE_IMAGE_BUILD}`, push it where the cluster pulls from, and "
        "pass that name with --image"
    )


def _require(module: str) -> Any:
    try:
        return _deps.require(module)
    except MissingDependencyError as e:
        raise MissingDependencyError(f"{e}; the k8s command needs: pip install 'resnest-deploy[k8s]'") from e


def check_names(name: str, namespace: str, image: str | None, storage_class: str | None) -> None:
    """What the API server or the kubelet would refuse, refused here in one line each."""
    if not _DNS_1035.fullmatch(name):
        raise ArtifactError(
            f"--name {name!r} is not a DNS label (RFC 1035, as a Service's name must be): up to 63 "
            "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"
        )
    if not _DNS.fullmatch(namespace):
        raise ArtifactError(
            f"--namespace {namespace!r} is not a DNS label: up to 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    if image is not None:
        check_image(image)
    if storage_class and (len(storage_class) > 253 or not _SUBDOMAIN.fullmatch(storage_class)):
        raise ArtifactError(
            f"--storage-class {storage_class!r} is not a StorageClass name (a DNS subdomain: lowercase "
            "letters, digits, '-' and '.', up to 253); `kubectl get storageclass` lists yours"
        )


def check_image(image: str) -> None:
    """An image reference as the runtimes parse it; a digest (``repo@sha256:<64 hex>``, the way to
    pin: a tag can be moved, a digest names the bytes) as they verify it."""
    m = _IMAGE.fullmatch(image) if len(image) <= 4096 else None
    if m is None:
        raise ArtifactError(
            f"--image {image!r} is not an image reference: [registry[:port]/]path[:tag][@digest], "
            "e.g. nvcr.io/nvidia/tritonserver:24.08-py3 (no spaces, line breaks or upper-case path)"
        )
    algorithm, hex_ = m.group("algorithm"), m.group("hex")
    if algorithm is not None and (
        algorithm not in _DIGEST_HEX or len(hex_) != _DIGEST_HEX[algorithm] or hex_ != hex_.lower()
    ):
        raise ArtifactError(
            f"--image {image!r}: the digest is not one a runtime verifies: give "
            "repo@sha256:<64 lowercase hex> (`docker buildx imagetools inspect IMAGE` prints it)"
        )


def hpa_target(throughput: float, p99_ms: float) -> int:
    """Pending requests per pod to scale at: half of what keeps a pod's requests within the p99
    budget at its measured throughput (Little's law: in flight = throughput x latency)."""
    if not (0 < throughput <= MAX_THROUGHPUT and math.isfinite(p99_ms) and 0 < p99_ms <= 600_000):
        raise ArtifactError(
            f"--throughput {throughput} / --p99-ms {p99_ms}: give a measured throughput in "
            f"(0, {MAX_THROUGHPUT:g}] images/s and a p99 budget in (0, 600000] ms"
        )
    return max(1, math.floor(0.5 * throughput * p99_ms / 1000.0))


#: Measured by benchmarks/serve_memory.py (results/serve_memory.md): PSS, which counts shared pages
#: once as the pod's cgroup does, of serve, tritonserver and the python stubs after requests at batch 8.
SERVE_BASE_MIB = 99.1  # serve and tritonserver
STUB_MIB = 75.4  # one python-backend instance (a stub, its Python and runtime) besides its model
PER_FILE_MIB = 4.12  # per MiB of model file, per instance (weights, runtime copies, activations)
HEADROOM = 1.25  # larger batches than the measurement's and allocator growth


#: Measured by benchmarks/first_inference.py (results/first_inference.md): serve's start to ready of
#: resnest50 INT8 through OpenVINO with a cold runtime cache on a 2-core CPU, the slowest start measured
#: (the digits model: 7.5 s). Pass ``--start-seconds`` with the ``start_to_ready_s`` that ``serve
#: --status-file`` records on your own nodes.
START_MEASURED_S = 31.2
START_MARGIN = 3.0  # a node busier, slower or colder than the measurement's
PROBE_PERIOD_S = 5


def startup_probe(start_s: float | None = None) -> dict[str, Any]:
    """Triton's startup probe: ``START_MARGIN`` times the measured start to ready (at least a minute),
    in ``PROBE_PERIOD_S`` steps; liveness starts counting only after it, so a slow start is not
    killed, and a hung one is found within that budget."""
    measured = START_MEASURED_S if start_s is None else start_s
    if not (math.isfinite(measured) and 0 < measured <= 3600):
        raise ArtifactError(
            f"--start-seconds {start_s} is not a start-up time: give the seconds `serve --status-file` "
            "records as start_to_ready_s (0 < s <= 3600)"
        )
    budget = max(60.0, START_MARGIN * measured)
    return {
        "httpGet": {"path": "/v2/health/ready", "port": "http"},
        "periodSeconds": PROBE_PERIOD_S,
        "failureThreshold": math.ceil(budget / PROBE_PERIOD_S),
    }


def memory_request_mib(models: list[RepoModel]) -> int:
    """The memory request, from the repository's files, rounded up to 64 MiB:

    python backend (measured): ``1.25 * (SERVE_BASE_MIB + sum of instances * (STUB_MIB +
    PER_FILE_MIB * file MiB))``; NVIDIA's image (not measured here: no such image on this machine):
    ``1.25 * (512 + sum of instances * 3 * file MiB)``. Pass ``--memory-mib`` with a figure measured on
    your own load where you have one."""
    total = 0.0
    python = [m for m in models if m.platform == "python"]
    native = [m for m in models if m.platform != "python"]
    if python:
        total += SERVE_BASE_MIB + sum(
            m.instances * (STUB_MIB + PER_FILE_MIB * m.bytes / 2**20) for m in python
        )
    if native:
        total += 512 + sum(m.instances * 3 * m.bytes / 2**20 for m in native)
    return int(math.ceil(HEADROOM * total / 64.0) * 64)


def manifests(
    repo: str | os.PathLike[str],
    *,
    name: str,
    namespace: str = "default",
    image: str | None = None,
    p99_ms: float = 100.0,
    throughput: float | None = None,
    min_replicas: int = 1,
    max_replicas: int = 4,
    memory_mib: int | None = None,
    start_seconds: float | None = None,
    storage_class: str | None = None,
    kserve: bool = False,
    metrics_namespace: str = "monitoring",
) -> dict[str, dict[str, Any]]:
    """The manifests, by file name (one object each). ``metrics_namespace``: where the Prometheus
    that scrapes ``metrics`` runs (the NetworkPolicy admits that port from there only);
    ``start_seconds``: serve's measured start to ready, which the startup probe allows three times."""
    check_names(name, namespace, image, storage_class)
    startup = startup_probe(start_seconds)  # refused before anything is read
    if not _DNS.fullmatch(metrics_namespace):
        raise ArtifactError(
            f"--metrics-namespace {metrics_namespace!r} is not a DNS label: the namespace Prometheus "
            "runs in (`kubectl get pods -A | grep prometheus`), e.g. monitoring"
        )
    if throughput is not None:
        hpa_target(throughput, p99_ms)  # refused before anything else is read
    if not 1 <= min_replicas <= max_replicas <= 1000:
        raise ArtifactError(
            f"replicas must satisfy 1 <= min ({min_replicas}) <= max ({max_replicas}) <= 1000"
        )
    models = read_repository(repo)
    python = {m.platform == "python" for m in models}
    if len(python) > 1:
        raise ArtifactError("the repository mixes python-backend and native models; serve them apart")
    python_backend = python.pop()
    gpu = any(m.gpu for m in models)
    if python_backend:
        image = image or SERVE_IMAGE
    elif image is None:
        raise ArtifactError(
            "ONNX Runtime and TensorRT models run in NVIDIA's Triton image, whose release must match the "
            "plans' TensorRT (TENSORRT_PAIRING.txt): pass --image nvcr.io/nvidia/tritonserver:<yy.mm>-py3"
        )
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "triton"}
    meta = {"name": name, "namespace": namespace, "labels": labels}
    memory = memory_mib or memory_request_mib(models)
    size_gib = max(1, math.ceil(2 * sum(m.bytes for m in models) / 2**30))
    claim = f"{name}-models"
    pvc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {**meta, "name": claim},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": f"{size_gib}Gi"}}},
    }
    if storage_class is not None:  # "" is Kubernetes' "no class": bind a volume made beforehand
        pvc["spec"]["storageClassName"] = storage_class
    out: dict[str, dict[str, Any]] = {"pvc.yaml": pvc}
    if kserve:
        if python_backend:
            raise ArtifactError(
                "KServe's Triton runtime runs NVIDIA's image, which lacks this package for python-backend "
                "models; write the repository without --python-backend, or use the plain manifests"
            )
        out["inferenceservice.yaml"] = _inference_service(
            meta, claim, image, memory, gpu, min_replicas, max_replicas
        )
        return out
    out["deployment.yaml"] = _deployment(
        meta, labels, models, image, python_backend, gpu, memory, claim, min_replicas, startup
    )
    out["service.yaml"] = {
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
    out["networkpolicy.yaml"] = network_policy(meta, labels, metrics_namespace)
    out["servicemonitor.yaml"] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": labels},
            "namespaceSelector": {"matchNames": [namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }
    scaling: dict[str, Any]
    if throughput is not None:
        scaling = {
            "type": "Pods",
            "pods": {
                "metric": {"name": PENDING_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(hpa_target(throughput, p99_ms))},
            },
        }
    else:  # no measured throughput: CPU, which tracks load on CPU models and says so
        scaling = {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    out["hpa.yaml"] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            **meta,
            "annotations": {
                "resnest-deploy/p99-ms": str(p99_ms),
                "resnest-deploy/throughput-per-pod": str(throughput)
                if throughput
                else "not measured: CPU target",
            },
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [scaling],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }
    out["prometheus-adapter-rules.yaml"] = {
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
    return out


def network_policy(meta: dict[str, Any], labels: dict[str, str], metrics_namespace: str) -> dict[str, Any]:
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


def _deployment(
    meta: dict[str, Any],
    labels: dict[str, str],
    models: list[RepoModel],
    image: str,
    python_backend: bool,
    gpu: bool,
    memory: int,
    claim: str,
    replicas: int,
    startup: dict[str, Any],
) -> dict[str, Any]:
    if python_backend:  # this project's serve image: its entrypoint serves the repository's files
        args = [f"/models/{m.name}/1/{m.file.name}" for m in models]
        for m in models:
            args += ["--name", m.name]
        args += ["--max-batch-size", str(min(m.max_batch_size for m in models))]
        if gpu:
            args += ["--provider", "tensorrt"]
        command = None
    else:
        command = ["tritonserver"]
        args = [
            "--model-repository=/models",
            f"--http-port={HTTP}",
            f"--grpc-port={GRPC}",
            f"--metrics-port={METRICS}",
            "--strict-readiness=true",
            "--exit-timeout-secs=20",
        ]
    resources: dict[str, Any] = {
        "requests": {"cpu": str(sum(m.instances for m in models)), "memory": f"{memory}Mi"},
        "limits": {"memory": f"{2 * memory}Mi"},
    }
    if gpu:
        resources["limits"]["nvidia.com/gpu"] = 1
    container: dict[str, Any] = {
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
    largest = max(m.bytes for m in models)
    shm_mib = 256 + 64 * math.ceil(2 * largest / 2**20 / 64) if python_backend else 64
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,  # Triton never calls the Kubernetes API
                    "terminationGracePeriodSeconds": 30,  # serve drains in-flight requests within 10 s
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_mib}Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                    ],
                },
            },
        },
    }


def _inference_service(
    meta: dict[str, Any], claim: str, image: str, memory: int, gpu: bool, lo: int, hi: int
) -> dict[str, Any]:
    triton: dict[str, Any] = {  # the image as given (a mirror's, a digest): it names the version
        "storageUri": f"pvc://{claim}/",
        "image": image,
        "resources": {
            "requests": {"cpu": "1", "memory": f"{memory}Mi"},
            "limits": {"memory": f"{2 * memory}Mi"},
        },
    }
    if gpu:
        triton["resources"]["limits"]["nvidia.com/gpu"] = 1
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": {"minReplicas": lo, "maxReplicas": hi, "triton": triton}},
    }


# --- validation -------------------------------------------------------------------------------------

_CRD_FIELDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {"selector", "endpoints", "namespaceSelector"},
    ("serving.kserve.io/v1beta1", "InferenceService"): {"predictor"},
}


def validate(docs: dict[str, dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Each manifest against the pinned Kubernetes schemas (kubernetes-validate, strict: unknown
    fields are errors); CRDs field by field. Raises on the first problem; returns what was checked."""
    checked = []
    for file, doc in docs.items():
        if "kind" not in doc:  # the Prometheus adapter's rule: Helm values, not an object
            rule = doc["rules"][0]
            if set(rule) != {"seriesQuery", "resources", "name", "metricsQuery"}:
                raise ArtifactError(
                    f"{file}: an adapter rule needs seriesQuery, resources, name, metricsQuery"
                )
            checked.append(f"{file}: prometheus-adapter rule (fields)")
            continue
        key = (doc["apiVersion"], doc["kind"])
        if key in _CRD_FIELDS:
            unknown = set(doc["spec"]) - _CRD_FIELDS[key]
            if unknown or not _DNS.fullmatch(doc["metadata"]["name"]):
                raise ArtifactError(
                    f"{file}: {doc['kind']} has fields its CRD does not define: {sorted(unknown)}"
                )
            checked.append(f"{file}: {doc['kind']} (CRD fields)")
            continue
        kv = _require("kubernetes_validate")
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            raise ArtifactError(
                f"{file}: {doc['kind']} is not valid Kubernetes {version}: {e.message}"
            ) from e
        checked.append(f"{file}: {doc['kind']} (Kubernetes {version} schema)")
    return checked


def write(docs: dict[str, dict[str, Any]], out: str | os.PathLike[str]) -> list[Path]:
    """YAML files in ``out`` (created; existing files are not overwritten): all of them or none.

    Every file is rendered and written to a temp file first; each is then linked into place (a link
    never replaces a file that appeared meanwhile); if any step fails, the files placed so far are
    removed, so a failed write never leaves half a set of manifests."""
    from resnest_deploy._io import check_destination, new_temp

    yaml = _require("yaml")

    class Plain(yaml.SafeDumper):  # type: ignore[name-defined]
        def ignore_aliases(self, data: Any) -> bool:  # shared label dicts written out, not as &anchors
            return True

    out = Path(out)
    taken = [out / file for file in docs if (out / file).exists() or (out / file).is_symlink()]
    if taken:  # refused before anything is written: never half a set of manifests
        raise ArtifactError(f"{taken[0]} exists; choose another -o or remove it")
    temps: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for file, doc in docs.items():
            dest = check_destination(out / file)
            temps.append((new_temp(dest), dest))
            try:
                text = yaml.dump(doc, Dumper=Plain, sort_keys=False)
            except yaml.YAMLError as e:
                raise ArtifactError(f"{file} cannot be written as YAML ({e}); nothing was written") from e
            temps[-1][0].write_text(text)
        for tmp, dest in temps:
            try:
                os.link(tmp, dest)
            except OSError as e:
                raise ArtifactError(
                    f"cannot write {dest}: {e.strerror}; nothing was written (choose another -o)"
                ) from e
            placed.append(dest)
    except BaseException:
        for dest in placed:
            dest.unlink(missing_ok=True)
        raise
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    return placed
