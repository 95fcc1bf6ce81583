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


def image_paths(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files, and every image under a folder (sorted, as ``eval`` finds them)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = data.find_images(item)
            if not found:
                raise ArtifactError(
                    f"{item} is a folder with no images in it ({', '.join(sorted(data.IMAGE_SUFFIXES))}); "
                    "give image files or a folder that holds some"
                )
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise ArtifactError(f"image not found: {item}; check the path")
    return paths


def top_predictions(paths: Sequence[Path], logits: np.ndarray, topk: int) -> list[Prediction]:
    """Softmax and the ``topk`` classes of each row, named (ImageNet names for 1000 classes)."""
    probs = softmax(logits.astype(np.float64))
    names = class_names(probs.shape[1])
    out = []
    for path, p in zip(paths, probs, strict=True):
        idx = np.argsort(-p, kind="stable")[:topk]
        out.append(Prediction(str(path), [(int(i), names[i], float(p[i])) for i in idx]))
    return out


def predict(
    images: Sequence[str | os.PathLike[str]],
    artifact: str = "torch",
    *,
    arch: str | None = None,
    weights: str | None = None,
    topk: int = 5,
    provider: str = "cpu",
) -> list[Prediction]:
    paths = image_paths(images)
    lineup = Lineup.of([artifact], arch, weights)
    loaded = data.load_images(paths, lineup.transform)
    if loaded.skipped:
        path, why = loaded.skipped[0]
        raise ArtifactError(f"{path} is not an image Pillow can read ({why}); pass jpg/png/webp files")
    with lineup.runner(lineup.infos[0], provider) as runner:
        logits = runner.infer_batched(loaded.array, 8)
    return top_predictions(paths, logits, topk)
