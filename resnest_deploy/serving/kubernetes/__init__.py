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

The package: :mod:`.policy` (what is allowed: names, images, storage classes, sizes, probes),
:mod:`.repository` (the models the manifests serve), :mod:`.objects` (building the manifests),
:mod:`.validation` (the schemas), :mod:`.files` (writing them, all or none). The KubeRay job of
``k8s --ray-job`` is :mod:`resnest_deploy.serving.rayjob`.
"""

from __future__ import annotations

from resnest_deploy.serving.kubernetes.files import write
from resnest_deploy.serving.kubernetes.objects import (
    GRPC,
    HTTP,
    METRICS,
    PENDING_METRIC,
    image_note,
    manifests,
    network_policy,
)
from resnest_deploy.serving.kubernetes.policy import (
    HEADROOM,
    MAX_THROUGHPUT,
    PER_FILE_MIB,
    SERVE_BASE_MIB,
    SERVE_IMAGE,
    SERVE_IMAGE_BUILD,
    START_MEASURED_S,
    STUB_MIB,
    ManifestOptions,
    check_image,
    check_names,
    hpa_target,
    memory_request_mib,
    startup_probe,
)
from resnest_deploy.serving.kubernetes.repository import RepoModel, read_repository
from resnest_deploy.serving.kubernetes.validation import KUBERNETES_VERSION, validate

__all__ = [
    "GRPC",
    "HEADROOM",
    "HTTP",
    "KUBERNETES_VERSION",
    "MAX_THROUGHPUT",
    "METRICS",
    "PENDING_METRIC",
    "PER_FILE_MIB",
    "SERVE_BASE_MIB",
    "SERVE_IMAGE",
    "SERVE_IMAGE_BUILD",
    "START_MEASURED_S",
    "STUB_MIB",
    "ManifestOptions",
    "RepoModel",
    "check_image",
    "check_names",
    "hpa_target",
    "image_note",
    "manifests",
    "memory_request_mib",
    "network_policy",
    "read_repository",
    "startup_probe",
    "validate",
    "write",
]
