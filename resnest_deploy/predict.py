"""Class names and top-k predictions for image files and folders, through any artifact.

Images are classified by an executor (this machine by default, a Ray cluster if given); a folder's
predictions can stream to a JSON Lines or Parquet file instead of coming back whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnest_deploy import data
from resnest_deploy.artifacts import Lineup, recorded_weights
from resnest_deploy.data.classes import class_names, imagenet_classes
from resnest_deploy.errors import ArtifactError
from resnest_deploy.executors import Executor, LocalExecutor, Progress, WriteReport
from resnest_deploy.executors.work import ArtifactRef, ClassifyJob, softmax
from resnest_deploy.runners.options import RunnerOptions

__all__ = ["Prediction", "class_names", "imagenet_classes", "predict", "predict_to_file", "softmax"]

#: the inference batch predict has always used
PREDICT_BATCH = 8


@dataclass(frozen=True)
class Prediction:
    image: str
    top: list[tuple[int, str, float]]  # (class index, name, probability)


def image_list(inputs: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], set[str]]:
    """Files as given and every image under a folder (sorted, as ``eval`` finds them); the files
    named one by one (one of those that does not decode is refused; inside a folder it is skipped)."""
    paths: list[Path] = []
    named: set[str] = set()
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
            named.add(str(item))
        else:
            raise ArtifactError(f"image not found: {item}; check the path")
    if not paths:
        raise ArtifactError("no images found in the folders given; give jpg/png/webp files")
    return paths, named


def _job(
    artifact: str, arch: str | None, weights: str | None, topk: int, options: RunnerOptions | None
) -> ClassifyJob:
    lineup = Lineup.of([artifact], arch, weights, build_model=False)
    return ClassifyJob(
        ArtifactRef.of(artifact),
        lineup.transform,
        (options or RunnerOptions()).but(batch=PREDICT_BATCH),
        topk=topk,
        arch=lineup.arch,
        weights=weights or recorded_weights(lineup.infos),
    )


def image_paths(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files, and every image under a folder."""
    return image_list(inputs)[0]


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
    options: RunnerOptions | None = None,
    executor: Executor | None = None,
    advance: Progress | None = None,
) -> list[Prediction]:
    """Top-k per image (``options``: how the artifact runs). A file given by name that does not
    decode is refused; inside a folder it is left out (and ``predict_to_file`` reports it)."""
    paths, named = image_list(images)
    job = _job(artifact, arch, weights, topk, options)
    done = (executor or LocalExecutor()).classify(job, [(i, str(p)) for i, p in enumerate(paths)], advance)
    bad = [o for o in done.outcomes if o.error is not None and o.path in named]
    if bad:
        raise ArtifactError(
            f"{bad[0].path} is not an image Pillow can read ({bad[0].error}); pass jpg/png/webp files"
        )
    return [
        Prediction(o.path, list(zip(o.classes[:topk], o.labels[:topk], o.probabilities[:topk], strict=True)))
        for o in done.outcomes
        if o.error is None
    ]


def predict_to_file(
    images: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    artifact: str = "torch",
    *,
    arch: str | None = None,
    weights: str | None = None,
    topk: int = 5,
    options: RunnerOptions | None = None,
    executor: Executor | None = None,
    advance: Progress | None = None,
) -> WriteReport:
    """One row per image (path, classes, labels, probabilities) into ``output`` (.jsonl or .parquet);
    never over one of the inputs."""
    from resnest_deploy.executors.rows import format_of

    out = Path(output)
    format_of(out)
    paths, _ = image_list(images)
    resolved = out.resolve()
    if resolved == Path(artifact).resolve() or any(resolved == p.resolve() for p in paths):
        raise ArtifactError(f"{output} is one of the inputs; write the predictions elsewhere")
    job = _job(artifact, arch, weights, topk, options)
    return (executor or LocalExecutor()).write(job, [(i, str(p)) for i, p in enumerate(paths)], out, advance)
