"""The evaluation set: labelled (or not) images a conversion is judged on, kept apart from calibration.

Labels follow ``eval``'s rules (``data.labelled_folder``: class folders named by class index or
ImageNet synset id; a label the model cannot produce is refused). A set is decoded once and cached by
its files and transform (the calibration image cache); what is read back is checked."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import data
from resnest_deploy.cache import Cache
from resnest_deploy.errors import ArtifactError

#: preprocessed calibration and evaluation images, keyed by the files, transform, count and seed
IMAGES_CACHE = Cache("calib", ".npz")


def check_inputs(name: str, x: np.ndarray) -> None:
    if x.dtype != np.float32 or x.ndim != 4 or x.shape[1] != 3:
        raise ArtifactError(f"{name} inputs must be N x 3 x H x W float32, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise ArtifactError(f"{name} inputs contain NaN or Inf; fix or drop those samples")


def check_labels(name: str, labels: np.ndarray | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n or y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
        raise ArtifactError(
            f"{name} labels must be one non-negative class index per input ({n}), got {y.shape}"
        )
    return y.astype(np.int64)


@dataclass
class EvaluationSet:
    """Labelled (or not) inputs the conversion is judged on, kept apart from calibration: the
    budget, the search and the reported drop are measured on all of them. ``source`` is what the
    sidecar records (path, count, labelled)."""

    x: np.ndarray  # N, 3, H, W float32
    labels: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.x) == 0:
            raise ArtifactError(
                "the evaluation set has no inputs; give {eval_dir} with labelled images", param="eval_dir"
            )
        check_inputs("evaluation", self.x)
        self.labels = check_labels("evaluation", self.labels, len(self.x))

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def digest(self) -> str:
        """The inputs and labels themselves: what the FP32 references are cached under."""
        h = hashlib.sha256(np.ascontiguousarray(self.x).tobytes())
        h.update(b"labels:" + (b"-" if self.labels is None else self.labels.astype("<i8").tobytes()))
        return h.hexdigest()

    def record(self) -> dict[str, Any]:
        """For the sidecar: where the set came from, how many, labelled or not."""
        return {**self.source, "count": len(self.x), "labelled": self.labelled}


@dataclass(frozen=True)
class ImageFiles:
    """Image files that were read: resolved paths and the sha256 of each one's bytes, in the same
    order. Content keeps an evaluation set apart from calibration: a copy or a hard link of a
    calibration image under another path is still that image."""

    paths: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()

    def shared_with(self, other: ImageFiles) -> list[tuple[str, str]]:
        """(this file, the other's) for every file of ``other`` with the same bytes or path as one
        of these, in ``other``'s order."""
        mine = dict(zip(self.digests, self.paths, strict=True))
        by_path = set(self.paths)
        pairs = []
        for path, digest in zip(other.paths, other.digests, strict=True):
            if digest in mine:
                pairs.append((mine[digest], path))
            elif path in by_path:
                pairs.append((path, path))
        return pairs


def synsets_for(num_classes: int | None) -> list[str] | None:
    """ImageNet synset ids name classes only for a 1000-class model (as ``eval`` reads them)."""
    from resnest_deploy.data.classes import imagenet_classes

    names = imagenet_classes()
    return [s for s, _ in names] if num_classes == len(names) else None


def folder_labels(root: str | os.PathLike[str], num_classes: int | None) -> dict[Path, int] | None:
    """Image path -> class when ``root`` is laid out as ``eval`` reads labels (every image in a
    sub-folder named by class index or synset id), else ``None`` (a plain folder of images). A
    class folder the model cannot produce is refused, as by ``eval``."""
    root = Path(root)
    entries = list(root.iterdir())
    if any(e.is_file() and e.suffix.lower() in data.IMAGE_SUFFIXES for e in entries):
        return None
    folders = [e for e in entries if e.is_dir()]
    names = synsets_for(num_classes)
    known = set(names or ())
    if not folders or not all((f.name.isascii() and f.name.isdigit()) or f.name in known for f in folders):
        return None
    return dict(data.labelled_folder(root, names, num_classes))


def from_eval_dir(
    root: str | os.PathLike[str],
    transform: data.Transform,
    num_classes: int | None = None,
    use_cache: bool = True,
    advance: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> tuple[EvaluationSet, ImageFiles]:
    """Every image of a labelled folder (``eval``'s layout), decoded once (cached by the files and
    the transform), and the files read (to check they are apart from calibration). Files that do not
    decode are skipped, said in one warning (how many, one example); none decoding is refused."""
    items = data.labelled_folder(root, synsets_for(num_classes), num_classes)
    paths = [p for p, _ in items]
    labels = dict(items)
    key = hashlib.sha256(f"eval:{data.fingerprint(paths, transform)}:{num_classes}".encode()).hexdigest()[:20]
    source: dict[str, Any] = {"kind": "eval_dir", "path": str(Path(root).resolve()), "found": len(paths)}
    hit = _cached_evaluation(key) if use_cache else None
    if hit is not None:
        evaluation, files = hit
        _warn_skipped(evaluation.source["skipped"], len(paths))
        return EvaluationSet(evaluation.x, evaluation.labels, {**source, **evaluation.source}), files
    if on_total:
        on_total(len(paths))
    loaded = data.load_images(paths, transform, advance)
    if not len(loaded.array):
        where, why = loaded.skipped[0]
        raise ArtifactError(
            f"none of the {len(paths)} images under {root} decode (e.g. {where}: {why}); "
            "give {eval_dir} a folder of jpg/png/webp images in class folders",
            param="eval_dir",
        )
    y = np.array([labels[q] for q in loaded.paths], np.int64)
    files = ImageFiles(tuple(str(q.resolve()) for q in loaded.paths), tuple(loaded.digests))
    skipped = [f"{p}: {why}" for p, why in loaded.skipped]
    _warn_skipped(skipped, len(paths))
    if use_cache:
        IMAGES_CACHE.put_arrays(
            key,
            {"kind": "eval_dir", "root": source["path"]},
            x=loaded.array,
            labels=y,
            files=np.array(files.paths, dtype=str),
            digests=np.array(files.digests, dtype=str),
            skipped=np.array(skipped, dtype=str),
        )
    return EvaluationSet(loaded.array, y, {**source, "skipped": skipped}), files


def _warn_skipped(skipped: list[str], found: int) -> None:
    """One line for the evaluation images that do not decode: the drop is measured without them."""
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} of the {found} evaluation images that do not decode "
            f"(e.g. {skipped[0]}); the conversion is judged on the other {found - len(skipped)}",
            UserWarning,
            stacklevel=3,
        )


def _cached_evaluation(key: str) -> tuple[EvaluationSet, ImageFiles] | None:
    """A verified cache entry, or ``None`` (one written before file digests were kept, too)."""
    found = IMAGES_CACHE.get_arrays(key)
    if found is None:
        return None
    entry, z = found
    try:
        x, y, skipped = z["x"], z["labels"], [str(s) for s in z["skipped"]]
        files = ImageFiles(tuple(str(f) for f in z["files"]), tuple(str(d) for d in z["digests"]))
        if len(files.paths) != len(files.digests) or len(files.paths) != len(x):
            return None
        return EvaluationSet(x, y, {"skipped": skipped, "cache": str(entry.path)}), files
    except (ValueError, KeyError, ArtifactError):
        return None
