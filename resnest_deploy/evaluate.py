"""Top-1 / top-5 accuracy of artifacts on a labelled folder: verify an INT8 engine on your data.

The images are classified by an executor (this machine by default, a Ray cluster if given): this
module lists the labelled images, describes the job and scores the outcomes, wherever they ran.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from resnest_deploy import data
from resnest_deploy.artifacts import Lineup, recorded_weights
from resnest_deploy.data.classes import imagenet_classes
from resnest_deploy.errors import ArtifactError
from resnest_deploy.executors import Executor, LocalExecutor
from resnest_deploy.executors.work import ArtifactRef, ClassifyJob
from resnest_deploy.metrics import TopK
from resnest_deploy.models import get_spec
from resnest_deploy.runners.options import RunnerOptions


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
    options: RunnerOptions | None = None,
    advance: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> tuple[list[Accuracy], dict[str, Any]]:
    """Accuracy per artifact; sub-folders are class indices (0, 1, ...) or ImageNet synset ids.

    ``options`` say how every artifact runs (backend, provider, threads, the batch of a chunk); with
    ``fake_quant`` INT8 files run their Q/DQ pairs as float ops (ONNX Runtime on the CPU), the way
    TensorRT computes a TensorRT-target INT8 file, rather than with the CPU's int8 kernels."""
    lineup = Lineup.of(artifacts, arch, weights, build_model=False)
    classes = {int(i.meta["num_classes"]) for i in lineup.infos if i.meta.get("num_classes")}
    classes.add(get_spec(lineup.arch).arch.num_classes)
    skipped_folders: list[str] = []
    # synset ids name classes only for ImageNet-1k models: for a 10-class model 'n01440764' is no label
    synsets = [s for s, _ in imagenet_classes()] if min(classes) == len(imagenet_classes()) else None
    labelled = data.labelled_folder(images, synsets, min(classes), skipped=skipped_folders)
    if on_total:
        on_total(len(labelled))
    items = [(i, str(p)) for i, (p, _) in enumerate(labelled)]
    runner_weights = weights or recorded_weights(lineup.infos)
    executor = executor or LocalExecutor()
    results = []
    skipped: list[str] = []
    for n, info in enumerate(lineup.infos):
        job = ClassifyJob(
            ArtifactRef.of(info.name),
            lineup.transform,
            options or RunnerOptions(),
            arch=lineup.arch,
            weights=runner_weights,
        )
        done = executor.classify(job, items, advance if n == 0 else None)
        kept = [o for o in done.outcomes if o.error is None]
        if n == 0:
            skipped = [f"{o.path}: {o.error}" for o in done.outcomes if o.error is not None]
        if not kept:
            first = done.outcomes[0] if done.outcomes else None
            why = f" (first: {first.path}: {first.error})" if first is not None else ""
            raise ArtifactError(
                f"none of the {len(items)} images under {images} decoded{why}; "
                f"give a folder of {'/'.join(data.IMAGE_FORMATS)} images"
            )
        hit = TopK.of_ranked([o.classes for o in kept], [labelled[o.index][1] for o in kept])
        results.append(
            Accuracy(info.name, done.backend, info.precision, hit.top1_accuracy, hit.top5_accuracy, len(kept))
        )
    described = {
        "path": str(images),
        "images": results[0].images if results else 0,
        "skipped": skipped_folders + skipped,
        "weights": lineup.weights,
    }
    return results, described | ({"note": lineup.note} if lineup.note else {})
