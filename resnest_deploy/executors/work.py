"""Work that can travel: classifying a shard of images as plain functions of picklable inputs.

A :class:`ClassifyJob` names the artifact by path and sha256, the transform by its numbers and the
runner by its options; no torch object, no open session. :class:`Classifier` opens the runner once
and classifies any number of shards; the local executor and a Ray actor both hold one, so a job
gives the same per-image answer wherever it runs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from resnest_deploy import data
from resnest_deploy.data.classes import class_names
from resnest_deploy.errors import ArtifactError
from resnest_deploy.models.config import WeightsInfo
from resnest_deploy.runners import TORCH_NAMES, Runner
from resnest_deploy.runners.options import RunnerOptions

#: the top-k every outcome keeps at least: what top-5 accuracy needs
MIN_TOPK = 5


@dataclass(frozen=True)
class ArtifactRef:
    """An artifact by content: its path where the driver reads it and the sha256 every worker checks.
    ``sha256`` is empty for ``torch`` (a model built from ``weights``, not a file)."""

    path: str
    sha256: str

    @classmethod
    def of(cls, artifact: str | os.PathLike[str]) -> ArtifactRef:
        from resnest_deploy._io import sha256_file

        text = os.fspath(artifact)
        return cls(text, "" if text in TORCH_NAMES else sha256_file(text))

    @property
    def is_file(self) -> bool:
        return self.path not in TORCH_NAMES


@dataclass(frozen=True)
class ClassifyJob:
    """Everything a worker needs to classify images with one artifact, all of it picklable."""

    artifact: ArtifactRef
    transform: data.Transform
    options: RunnerOptions = field(default_factory=RunnerOptions)
    topk: int = MIN_TOPK
    #: the arch and weights to build the PyTorch model from, when the artifact is ``torch``
    arch: str | None = None
    weights: str | WeightsInfo | None = None


@dataclass(frozen=True)
class ImageOutcome:
    """One image's result: its position in the job's list, best classes first with their
    probabilities, or why it was skipped (``error``; then ``classes`` is empty)."""

    index: int
    path: str
    classes: tuple[int, ...]
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    error: str | None = None

    def row(self, topk: int) -> dict[str, Any]:
        """The row ``predict -o`` writes: path, top-k classes, their names and probabilities."""
        return {
            "path": self.path,
            "classes": list(self.classes[:topk]),
            "labels": list(self.labels[:topk]),
            "probabilities": list(self.probabilities[:topk]),
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def outcomes(
    logits: np.ndarray, indices: Sequence[int], paths: Sequence[str], topk: int
) -> list[ImageOutcome]:
    """Top-k classes from the logits (ties in argsort's order) and their float64 probabilities."""
    k = min(max(topk, MIN_TOPK), logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    probs = softmax(logits.astype(np.float64))
    names = _names(logits.shape[1])
    return [
        ImageOutcome(
            i, p, tuple(int(c) for c in t), tuple(names[c] for c in t), tuple(float(pr[c]) for c in t)
        )
        for i, p, t, pr in zip(indices, paths, top, probs, strict=True)
    ]


def decode(
    items: Sequence[tuple[int, str]], transform: data.Transform
) -> tuple[np.ndarray, list[int], list[str], list[ImageOutcome]]:
    """Read and preprocess images with the tool's transform: the array, the kept indices and paths,
    and an outcome with ``error`` for every file that does not decode."""
    loaded = data.load_images([Path(p) for _, p in items], transform)
    index_of: dict[str, list[int]] = {}
    for i, p in items:
        index_of.setdefault(str(Path(p)), []).append(i)
    kept_paths = [str(p) for p in loaded.paths]
    taken: dict[str, int] = {}

    def next_index(path: str) -> int:  # the same file listed twice keeps both positions
        n = taken.get(path, 0)
        taken[path] = n + 1
        return index_of[path][n]

    kept = [next_index(p) for p in kept_paths]
    bad = [ImageOutcome(next_index(str(p)), str(p), (), (), (), why) for p, why in loaded.skipped]
    return loaded.array, kept, kept_paths, bad


@functools.cache
def _names(num_classes: int) -> tuple[str, ...]:
    return tuple(class_names(num_classes))


class Classifier:
    """An artifact's runner, opened once, classifying shards of (index, path) images."""

    def __init__(self, job: ClassifyJob, local_path: str | None = None, threads: int | None = None) -> None:
        """``local_path`` is where this worker holds the artifact (checked against its sha256 by
        whoever put it there); ``threads`` overrides the job's (an actor's CPUs)."""
        from resnest_deploy.artifacts import describe, runner_for

        self.job = job
        path = local_path or job.artifact.path
        model = None
        if not job.artifact.is_file:
            from resnest_deploy.models import load_model

            if job.arch is None:
                raise ArtifactError("'torch' needs a model: pass arch (and weights)")
            model = load_model(job.arch, job.weights)[0]
        info = describe(path)
        opts = job.options.but(threads=threads) if threads else job.options
        self.runner: Runner = runner_for(info, model, opts)
        self.runner.activate()
        self.backend = self.runner.backend
        self.precision = info.precision

    def classify(self, items: Sequence[tuple[int, str]]) -> list[ImageOutcome]:
        """One outcome per item, in the items' order."""
        array, kept, paths, bad = decode(items, self.job.transform)
        return self.classify_array(array, kept, paths) + bad

    def classify_array(
        self, array: np.ndarray, indices: Sequence[int], paths: Sequence[str]
    ) -> list[ImageOutcome]:
        if not len(array):
            return []
        logits = self.runner.infer_batched(array, self.job.options.batch)
        return outcomes(logits, indices, paths, self.job.topk)

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def classify_shard(job: ClassifyJob, items: Sequence[tuple[int, str]]) -> list[ImageOutcome]:
    """The evaluation of one shard as a plain function: what any executor can send anywhere."""
    with Classifier(job) as classifier:
        return classifier.classify(items)
