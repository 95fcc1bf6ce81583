"""A KubeRay RayJob that runs `eval` on a Ray cluster in Kubernetes, checked offline against
KubeRay's own CRD schema (ray-operator v1.7.0, vendored as ``data/kuberay/ray.io_rayjobs-v1.7.0.yaml``).

The head and the workers run the same image; the models come read-only from the same ReadOnlyMany
PVC as the Triton manifests (``<name>-models``), the labelled images from a second read-only claim.
The head coordinates only (no CPUs for actors); each worker gives its CPUs (and GPU) to the actors.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import os
import shlex
from dataclasses import dataclass
from typing import Any

from resnest_deploy.errors import ArtifactError
from resnest_deploy.serving.kubernetes.policy import DNS, check_image, pod_security, require
from resnest_deploy.serving.kubernetes.repository import read_repository

KUBERAY_VERSION = "v1.7.0"
RAY_VERSION = "2.60.0"
CRD_FILE = f"ray.io_rayjobs-{KUBERAY_VERSION}.yaml"
#: where the pods see the models and the images
MODELS, IMAGES = "/models", "/images"


def ray_job(
    repo: str,
    *,
    name: str,
    namespace: str,
    image: str,
    images_claim: str,
    workers: int = 2,
    worker_cpus: int = 2,
    worker_gpus: int = 0,
    memory_mib: int = 4096,
) -> dict[str, Any]:
    """The RayJob: `resnest-deploy eval --images /images <each .onnx model> --ray auto --json`."""
    if not DNS.fullmatch(name) or not DNS.fullmatch(namespace) or not DNS.fullmatch(images_claim):
        raise ArtifactError(
            f"{name!r}/{namespace!r}/{images_claim!r}: Kubernetes names are lowercase letters, digits and '-'"
        )
    check_image(image)
    models = [m for m in read_repository(repo) if m.file.suffix == ".onnx"]
    if not models:
        raise ArtifactError(f"{repo} holds no .onnx model; a RayJob runs ONNX files, not engines")
    files = [f"{MODELS}/{m.name}/1/{m.file.name}" for m in models]
    entrypoint = shlex.join(["resnest-deploy", "eval", "--images", IMAGES, *files, "--ray", "auto", "--json"])
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "ray-eval"}
    worker_resources: dict[str, Any] = {
        "requests": {"cpu": str(worker_cpus), "memory": f"{memory_mib}Mi"},
        "limits": {"cpu": str(worker_cpus), "memory": f"{memory_mib}Mi"},
    }
    if worker_gpus:
        worker_resources["limits"]["nvidia.com/gpu"] = worker_gpus
    head_resources = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    head = _pod(labels, image, "ray-head", head_resources, f"{name}-models", images_claim)
    worker = _pod(labels, image, "ray-worker", worker_resources, f"{name}-models", images_claim)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "entrypoint": entrypoint,
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "backoffLimit": 0,  # a failed eval says why in one line; rerunning hides that
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": head},
                "workerGroupSpecs": [
                    {
                        "groupName": "workers",
                        "replicas": workers,
                        "minReplicas": workers,
                        "maxReplicas": workers,
                        "rayStartParams": {},
                        "template": worker,
                    }
                ],
            },
        },
    }


def _pod(
    labels: dict[str, str], image: str, container: str, resources: dict[str, Any], models: str, images: str
) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels},
        "spec": {
            "automountServiceAccountToken": False,  # Ray's pods do not talk to the Kubernetes API
            "securityContext": pod_security(),
            "containers": [
                {
                    "name": container,
                    "image": image,
                    "resources": resources,
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [
                        {"name": "models", "mountPath": MODELS, "readOnly": True},
                        {"name": "images", "mountPath": IMAGES, "readOnly": True},
                        {"name": "shm", "mountPath": "/dev/shm"},
                    ],
                }
            ],
            "volumes": [
                {"name": "models", "persistentVolumeClaim": {"claimName": models, "readOnly": True}},
                {"name": "images", "persistentVolumeClaim": {"claimName": images, "readOnly": True}},
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},  # Ray's object store
            ],
        },
    }


@functools.cache
def crd_schema() -> dict[str, Any]:
    """The v1 RayJob schema of the vendored CRD, strict: where an object lists its properties and
    does not say it keeps unknown fields, an unknown field is an error (the API server would drop
    it silently: a misspelt field never takes effect)."""
    yaml = require("yaml")
    text = (importlib.resources.files("resnest_deploy") / "data" / "kuberay" / CRD_FILE).read_text()
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def validate(doc: dict[str, Any]) -> str:
    """The RayJob against KubeRay's CRD schema (jsonschema); one line on the first problem."""
    jsonschema = require("jsonschema")
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != "RayJob":
        raise ArtifactError("not a ray.io/v1 RayJob")
    errors = sorted(
        jsonschema.Draft7Validator(crd_schema()).iter_errors(doc), key=lambda e: list(e.absolute_path)
    )
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path) or "(root)"
        raise ArtifactError(
            f"RayJob is not valid against KubeRay {KUBERAY_VERSION}'s CRD at {where}: {errors[0].message}"
        )
    return f"RayJob (KubeRay {KUBERAY_VERSION} CRD schema)"


@dataclass(frozen=True)
class RayJobOptions:
    """What ``k8s --ray-job`` makes: a RayJob over the repository's ONNX models and its PVC."""

    name: str
    namespace: str
    image: str
    images_claim: str
    storage_class: str | None = None
    workers: int = 2
    worker_cpus: int = 2
    worker_gpus: int = 0


def job_manifests(repo: str | os.PathLike[str], options: RayJobOptions) -> tuple[dict[str, Any], list[str]]:
    """The RayJob and the models' PVC, by file name, each validated; and what was checked."""
    from resnest_deploy.serving import kubernetes

    o = options
    job = ray_job(
        str(repo),
        name=o.name,
        namespace=o.namespace,
        image=o.image,
        images_claim=o.images_claim,
        workers=o.workers,
        worker_cpus=o.worker_cpus,
        worker_gpus=o.worker_gpus,
    )
    plain = kubernetes.ManifestOptions(o.name, o.namespace, o.image, storage_class=o.storage_class)
    pvc = kubernetes.manifests(repo, plain)["pvc.yaml"]
    checked = [*kubernetes.validate({"pvc.yaml": pvc}), f"rayjob.yaml: {validate(job)}"]
    return {"pvc.yaml": pvc, "rayjob.yaml": job}, checked
