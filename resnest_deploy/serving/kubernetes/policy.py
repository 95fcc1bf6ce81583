"""What the manifests allow and how large they make things: names, images, storage classes, probes,
memory and the autoscaler's target, each refused in one line naming the parameter.

Messages name parameters (``name``, ``p99_ms``); the CLI names its options instead
(the CLI writes parameters as its flags: ``cli._errors.flag_for``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnest_deploy import _deps
from resnest_deploy.errors import ArtifactError, MissingDependencyError

if TYPE_CHECKING:
    from resnest_deploy.serving.kubernetes.repository import RepoModel

Name = Callable[[str], str]
SERVE_IMAGE = "resnest-deploy:serve"
#: the serve image's build command, printed with manifests that need it
SERVE_IMAGE_BUILD = f"docker build --target serve -t {SERVE_IMAGE} ."
DNS = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1123 label: namespaces
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
#: the most images/s one pod is taken to serve (a figure beyond it is a typo or an overflow)
MAX_THROUGHPUT = 1_000_000.0

#: Measured by benchmarks/serve_memory.py (results/serve_memory.md): PSS, which counts shared pages
#: once as the pod's cgroup does, of serve, tritonserver and the python stubs after requests at batch 8.
SERVE_BASE_MIB = 99.1  # serve and tritonserver
STUB_MIB = 75.4  # one python-backend instance (a stub, its Python and runtime) besides its model
PER_FILE_MIB = 4.12  # per MiB of model file, per instance (weights, runtime copies, activations)
HEADROOM = 1.25  # larger batches than the measurement's and allocator growth

#: Measured by benchmarks/first_inference.py (results/first_inference.md): serve's start to ready of
#: resnest50 INT8 through OpenVINO with a cold runtime cache on a 2-core CPU, the slowest start measured
#: (the digits model: 7.5 s). Pass ``start_seconds`` with the ``start_to_ready_s`` that ``serve
#: --status-file`` records on your own nodes.
START_MEASURED_S = 31.2
START_MARGIN = 3.0  # a node busier, slower or colder than the measurement's
PROBE_PERIOD_S = 5


def require(module: str) -> Any:
    """``module``, or an error naming the ``k8s`` extra."""
    try:
        return _deps.require(module)
    except MissingDependencyError as e:
        raise MissingDependencyError(f"{e}; the k8s command needs: pip install 'resnest-deploy[k8s]'") from e


@dataclass(frozen=True)
class ManifestOptions:
    """What the manifests are made with, checked when made (before any file is read).

    ``metrics_namespace``: where the Prometheus that scrapes ``metrics`` runs (the NetworkPolicy
    admits that port from there only); ``start_seconds``: serve's measured start to ready, which the
    startup probe allows three times; ``throughput``: images/s one pod serves (the HPA then scales on
    Triton's pending requests, else on CPU)."""

    name: str
    namespace: str = "default"
    image: str | None = None
    p99_ms: float = 100.0
    throughput: float | None = None
    min_replicas: int = 1
    max_replicas: int = 4
    memory_mib: int | None = None
    start_seconds: float | None = None
    storage_class: str | None = None
    kserve: bool = False
    metrics_namespace: str = "monitoring"

    def __post_init__(self) -> None:
        check_names(self.name, self.namespace, self.image, self.storage_class)
        startup_probe(self.start_seconds)
        if not DNS.fullmatch(self.metrics_namespace):
            raise ArtifactError(
                (
                    f"{{metrics_namespace}} {self.metrics_namespace!r} is not a DNS label: the "
                    "namespace Prometheus runs in (`kubectl get pods -A | grep prometheus`), e.g. monitoring"
                ),
                param="metrics_namespace",
            )
        if self.throughput is not None:
            hpa_target(self.throughput, self.p99_ms)
        lo, hi = self.min_replicas, self.max_replicas
        if not 1 <= lo <= hi <= 1000:
            raise ArtifactError(
                f"replicas must satisfy 1 <= min ({lo}) <= max ({hi}) <= 1000",
            )


def check_names(name: str, namespace: str, image: str | None, storage_class: str | None) -> None:
    """What the API server or the kubelet would refuse, refused here in one line each."""
    if not _DNS_1035.fullmatch(name):
        raise ArtifactError(
            (
                f"{{name}} {name!r} is not a DNS label (RFC 1035, as a Service's name must be): "
                "up to 63 lowercase letters, digits and '-', starting with a letter and ending with a letter "
                "or digit"
            ),
            param="name",
        )
    if not DNS.fullmatch(namespace):
        raise ArtifactError(
            (
                f"{{namespace}} {namespace!r} is not a DNS label: up to 63 lowercase letters, "
                "digits and '-', starting and ending with a letter or digit"
            ),
            param="namespace",
        )
    if image is not None:
        check_image(image)
    if storage_class and (len(storage_class) > 253 or not _SUBDOMAIN.fullmatch(storage_class)):
        raise ArtifactError(
            (
                f"{{storage_class}} {storage_class!r} is not a StorageClass name (a DNS subdomain: "
                "lowercase letters, digits, '-' and '.', up to 253); `kubectl get storageclass` lists yours"
            ),
            param="storage_class",
        )


def check_image(image: str) -> None:
    """An image reference as the runtimes parse it; a digest (``repo@sha256:<64 hex>``, the way to
    pin: a tag can be moved, a digest names the bytes) as they verify it."""
    m = _IMAGE.fullmatch(image) if len(image) <= 4096 else None
    if m is None:
        raise ArtifactError(
            (
                f"{{image}} {image!r} is not an image reference: "
                "[registry[:port]/]path[:tag][@digest], e.g. nvcr.io/nvidia/tritonserver:24.08-py3 "
                "(no spaces, line breaks or upper-case path)"
            ),
            param="image",
        )
    algorithm, hex_ = m.group("algorithm"), m.group("hex")
    if algorithm is not None and (
        algorithm not in _DIGEST_HEX or len(hex_) != _DIGEST_HEX[algorithm] or hex_ != hex_.lower()
    ):
        raise ArtifactError(
            (
                f"{{image}} {image!r}: the digest is not one a runtime verifies: give "
                "repo@sha256:<64 lowercase hex> (`docker buildx imagetools inspect IMAGE` prints it)"
            ),
            param="image",
        )


def hpa_target(throughput: float, p99_ms: float) -> int:
    """Pending requests per pod to scale at: half of what keeps a pod's requests within the p99
    budget at its measured throughput (Little's law: in flight = throughput x latency)."""
    if not (0 < throughput <= MAX_THROUGHPUT and math.isfinite(p99_ms) and 0 < p99_ms <= 600_000):
        raise ArtifactError(
            (
                f"{{throughput}} {throughput} / {{p99_ms}} {p99_ms}: give a measured throughput "
                f"in (0, {MAX_THROUGHPUT:g}] images/s and a p99 budget in (0, 600000] ms"
            ),
            param=("throughput", "p99_ms"),
        )
    return max(1, math.floor(0.5 * throughput * p99_ms / 1000.0))


def startup_probe(start_s: float | None = None) -> dict[str, Any]:
    """Triton's startup probe: ``START_MARGIN`` times the measured start to ready (at least a minute),
    in ``PROBE_PERIOD_S`` steps; liveness starts counting only after it, so a slow start is not
    killed, and a hung one is found within that budget."""
    measured = START_MEASURED_S if start_s is None else start_s
    if not (math.isfinite(measured) and 0 < measured <= 3600):
        raise ArtifactError(
            (
                f"{{start_seconds}} {start_s} is not a start-up time: give the seconds "
                "`serve --status-file` records as start_to_ready_s (0 < s <= 3600)"
            ),
            param="start_seconds",
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
    ``1.25 * (512 + sum of instances * 3 * file MiB)``. Pass ``memory_mib`` with a figure measured on
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


def server_image(models: list[RepoModel], options: ManifestOptions) -> tuple[str, bool]:
    """The image the pods run and whether it is this project's serve image (python backend)."""
    python = {m.platform == "python" for m in models}
    if len(python) > 1:
        raise ArtifactError("the repository mixes python-backend and native models; serve them apart")
    if python.pop():
        if options.kserve:
            raise ArtifactError(
                (
                    "KServe's Triton runtime runs NVIDIA's image, which lacks this package for "
                    "python-backend models; write the repository without {python_backend}, or use the "
                    "plain manifests"
                ),
                param="python_backend",
            )
        return options.image or SERVE_IMAGE, True
    if options.image is None:
        raise ArtifactError(
            (
                "ONNX Runtime and TensorRT models run in NVIDIA's Triton image, whose release must "
                "match the plans' TensorRT (TENSORRT_PAIRING.txt): pass {image} "
                "nvcr.io/nvidia/tritonserver:<yy.mm>-py3"
            ),
            param="image",
        )
    return options.image, False


def pod_security() -> dict[str, Any]:
    """Every pod this tool writes (Triton's and Ray's): a non-root user of its own, the runtime's
    default seccomp profile. A new dict each time: a manifest may be edited after it is built."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
