"""The actor that classifies on a Ray node, and the Arrow rows its outcomes travel back as.

One actor per CPU slot: it checks and keeps the artifact it was sent (``ray_node``), opens the tool's
own runner once with its threads set to the actor's CPUs, then reads, decodes and preprocesses each
batch of (index, path) with the tool's own transform, as ``eval`` does here. The rows carry the
image's index, so the driver can count every image once whatever Ray retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.executors.ray_node import node_copy
from resnest_deploy.executors.work import Classifier, ClassifyJob, ImageOutcome


class ClassifyActor:
    """One per actor slot: the artifact checked and opened once, then batches of (index, path)."""

    def __init__(self, job: ClassifyJob, blob_box: list[Any]) -> None:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        path = node_copy(ray.get(blob_box[0]), job.artifact)
        self.classifier = Classifier(job, str(path), threads=max(1, int(cpus)))

    def __call__(self, batch: Any) -> Any:
        items = list(zip(batch.column("index").to_pylist(), batch.column("path").to_pylist(), strict=True))
        return table(self.classifier.classify(items), self.classifier.backend)


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
