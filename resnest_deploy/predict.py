"""Class names and top-k predictions for image files, through any artifact."""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnest_deploy import artifacts as _a
from resnest_deploy import data
from resnest_deploy.errors import ArtifactError
from resnest_deploy.models import get_spec


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
    info = _a.ArtifactInfo.of(artifact)
    arch = _a.resolve_arch(arch, [info])
    size = _a.input_size(arch, [info])
    paths = [Path(p) for p in images]
    for p in paths:
        if not p.is_file():
            raise ArtifactError(f"image not found: {p}; check the path")
    loaded = data.load_images(paths, data.Transform.from_pretrained(get_spec(arch).pretrained, size[0]))
    if loaded.skipped:
        path, why = loaded.skipped[0]
        raise ArtifactError(f"{path} is not an image Pillow can read ({why}); pass jpg/png/webp files")
    model = _a.reference(arch, weights, [info]) if info.kind == "torch" else None
    with _a.runner_for(info, model, provider) as runner:
        probs = softmax(runner.infer_batched(loaded.array, 8).astype(np.float64))
    names = class_names(probs.shape[1])
    out = []
    for path, p in zip(paths, probs, strict=True):
        idx = np.argsort(-p)[:topk]
        out.append(Prediction(str(path), [(int(i), names[i], float(p[i])) for i in idx]))
    return out
