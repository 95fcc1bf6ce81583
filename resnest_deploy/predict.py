"""Class names and top-k predictions for image files, through any artifact."""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnest_deploy import data
from resnest_deploy.artifacts import Lineup
from resnest_deploy.errors import ArtifactError


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """(synset id, name) for the 1,000 ImageNet-1k classes in index order."""
    text = (importlib.resources.files("resnest_deploy") / "data" / "imagenet_classes.txt").read_text()
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return tuple((synset, names.split(",")[0]) for synset, names in rows)


def class_names(num_classes: int) -> list[str]:
    if num_classes == 1000:
        return [name for _, name in imagenet_classes()]
    return [str(i) for i in range(num_classes)]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    image: str
    top: list[tuple[int, str, float]]  # (class index, name, probability)


def predict(
    images: Sequence[str | os.PathLike[str]],
    artifact: str = "torch",
    *,
    arch: str | None = None,
    weights: str | None = None,
    topk: int = 5,
    provider: str = "cpu",
) -> list[Prediction]:
    paths = [Path(p) for p in images]
    for p in paths:
        if not p.is_file():
            raise ArtifactError(f"image not found: {p}; check the path")
    lineup = Lineup.of([artifact], arch, weights)
    loaded = data.load_images(paths, lineup.transform)
    if loaded.skipped:
        path, why = loaded.skipped[0]
        raise ArtifactError(f"{path} is not an image Pillow can read ({why}); pass jpg/png/webp files")
    with lineup.runner(lineup.infos[0], provider) as runner:
        probs = softmax(runner.infer_batched(loaded.array, 8).astype(np.float64))
    names = class_names(probs.shape[1])
    out = []
    for path, p in zip(paths, probs, strict=True):
        idx = np.argsort(-p)[:topk]
        out.append(Prediction(str(path), [(int(i), names[i], float(p[i])) for i in idx]))
    return out
