"""Top-1 / top-5 accuracy of artifacts on a labelled folder: verify an INT8 engine on your data."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from resnest_deploy import data
from resnest_deploy.artifacts import Lineup
from resnest_deploy.models import get_spec
from resnest_deploy.predict import imagenet_classes


@dataclass(frozen=True)
class Accuracy:
    artifact: str
    backend: str
    precision: str
    top1: float
    top5: float
    images: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    artifacts: Sequence[str | os.PathLike[str]],
    images: str | os.PathLike[str],
    *,
    arch: str | None = None,
    weights: str | None = None,
    batch: int = 16,
    provider: str = "cpu",
    advance: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> tuple[list[Accuracy], dict[str, Any]]:
    """Accuracy per artifact; sub-folders are class indices (0, 1, ...) or ImageNet synset ids."""
    lineup = Lineup.of(artifacts, arch, weights)
    classes = {int(i.meta["num_classes"]) for i in lineup.infos if i.meta.get("num_classes")}
    classes.add(get_spec(lineup.arch).arch.num_classes)
    skipped_folders: list[str] = []
    items = data.labelled_folder(
        images, [s for s, _ in imagenet_classes()], min(classes), skipped=skipped_folders
    )
    if on_total:
        on_total(len(items))
    loaded = data.load_images([p for p, _ in items], lineup.transform, advance)
    label_of = dict(items)
    labels = np.array([label_of[p] for p in loaded.paths])
    results = []
    for info in lineup.infos:
        with lineup.runner(info, provider) as runner:
            logits = runner.infer_batched(loaded.array, batch)
            top5 = np.argsort(-logits, axis=1)[:, :5]
            results.append(
                Accuracy(
                    info.name,
                    runner.backend,
                    info.precision,
                    float((top5[:, 0] == labels).mean()),
                    float((top5 == labels[:, None]).any(axis=1).mean()),
                    len(labels),
                )
            )
    skipped = skipped_folders + [f"{p}: {why}" for p, why in loaded.skipped]
    described = {"path": str(images), "images": len(labels), "skipped": skipped, "weights": lineup.weights}
    return results, described | ({"note": lineup.note} if lineup.note else {})
