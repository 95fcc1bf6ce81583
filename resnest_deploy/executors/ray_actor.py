"""The actor that classifies on a Ray node, and the Arrow rows its outcomes travel back as.

One actor per CPU slot (ONNX) or per GPU (an engine): it checks and keeps the artifact it was sent
(``ray_node``), opens the tool's own runner once (an ONNX session with its threads set to the actor's
CPUs, or the engine through the tool's loader on the GPU Ray gave it), then reads, decodes and
preprocesses each batch of (index, path) with the tool's own transform, as ``eval`` does here. An
actor that cannot open its runner (no NVIDIA driver, another TensorRT) keeps one line naming its node
and raises it with its first batch, which stops the job. The rows carry the image's index, so the
driver can count every image once whatever Ray retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.artifacts import artifact_kind
from resnest_deploy.errors import ArtifactError, ResnestDeployError, first_line
from resnest_deploy.executors.ray_node import Sidecar, node_copy
from resnest_deploy.executors.work import Classifier, ClassifyJob, ImageOutcome


class ClassifyActor:
    """One per actor slot: the artifact checked and opened once, then batches of (index, path).
    ``blob_box`` holds the object-store reference of the artifact's bytes (a list, so Ray passes
    the reference rather than fetching the bytes into every task's arguments)."""

    def __init__(self, job: ClassifyJob, blob_box: list[Any], sidecar: Sidecar | None = None) -> None:
        import ray

        context = ray.get_runtime_context()
        self.classifier: Classifier | None = None
        #: why this actor cannot classify, raised with its first batch (see ``__call__``)
        self.failed: ResnestDeployError | None = None
        try:
            path = node_copy(ray.get(blob_box[0]), job.artifact, sidecar=sidecar)
        except ResnestDeployError as e:  # names the node already: the bytes it received were wrong
            self.failed = e
            return
        engine = artifact_kind(path) == "engine"
        cpus = context.get_assigned_resources().get("CPU", 1.0)
        try:  # an engine runs on the GPU Ray assigned (CUDA_VISIBLE_DEVICES: device 0 in here)
            self.classifier = Classifier(job, str(path), threads=None if engine else max(1, int(cpus)))
        except Exception as e:  # no driver, another TensorRT, a missing runtime: one line, this node
            from resnest_deploy._cuda import driver_problem

            no_gpu = driver_problem() if engine else None  # said plainly, without the local advice
            self.failed = cannot_open(path.name, engine, node_name(context), no_gpu or e)

    def __call__(self, batch: Any) -> Any:
        """A failed start is raised here, not in ``__init__``: Ray hands the driver an actor that
        died starting as ``ActorDiedError``, which keeps only the traceback's text, while an error
        raised in a batch reaches it as itself (one line, its parameters named by the CLI). Ray
        Data retries no batch that raised, so the job stops at the first batch."""
        if self.failed is not None:
            raise self.failed
        assert self.classifier is not None
        items = list(zip(batch.column("index").to_pylist(), batch.column("path").to_pylist(), strict=True))
        return table(self.classifier.classify(items), self.classifier.backend)


def node_name(context: Any) -> str:
    """The node as ``ray status`` and the dashboard show it: its IP and the start of its id."""
    import ray

    return f"{ray.util.get_node_ip_address()} (node {context.get_node_id()[:8]})"


def cannot_open(name: str, engine: bool, node: str, error: Exception | str) -> ArtifactError:
    """Why the actor on ``node`` cannot run the artifact, in one line that keeps the cause's own
    advice (a TensorRT version to rebuild with) and names what the cluster needs; ``error`` is the
    runner's error, or what the node's NVIDIA driver said (no GPU: the runner's advice to run the
    ONNX file "here" would mislead on a worker)."""
    params: tuple[str, ...] = ()
    if isinstance(error, str):
        why = error
    elif isinstance(error, ResnestDeployError):
        why, params = error.template, error.params
    else:
        why = f"{type(error).__name__}: {first_line(error)}"
    if not engine:  # the cause names its fix (an extra to install): on that worker
        return ArtifactError(f"Ray node {node} could not open {name}: {why}", param=params)
    return ArtifactError(
        f"Ray node {node} could not open the engine {name}: {why}; the GPU worker group needs an NVIDIA "
        "driver and the TensorRT the engine was built with (or run it without {ray_address})",
        param=(*params, "ray_address"),
    )


def table(outcomes: Sequence[ImageOutcome], backend: str) -> Any:
    """Outcomes as an Arrow table: a fixed schema, whatever a batch holds."""
    pa = _deps.require("pyarrow")
    rows = [
        {
            "index": o.index,
            "path": o.path,
            "classes": list(o.classes),
            "labels": list(o.labels),
            "probabilities": list(o.probabilities),
            "error": o.error,
            "backend": backend,
        }
        for o in outcomes
    ]
    return pa.Table.from_pylist(rows, schema=schema())


def schema() -> Any:
    pa = _deps.require("pyarrow")
    return pa.schema(
        [
            ("index", pa.int64()),
            ("path", pa.string()),
            ("classes", pa.list_(pa.int64())),
            ("labels", pa.list_(pa.string())),
            ("probabilities", pa.list_(pa.float64())),
            ("error", pa.string()),
            ("backend", pa.string()),
        ]
    )


def outcome(row: dict[str, Any]) -> ImageOutcome:
    """A row back as the outcome it was made from."""
    return ImageOutcome(
        int(row["index"]),
        row["path"],
        tuple(row["classes"] or ()),
        tuple(row["labels"] or ()),
        tuple(row["probabilities"] or ()),
        row["error"],
    )
