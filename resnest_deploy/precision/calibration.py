"""Calibration data: real images preprocessed as the arch was evaluated, ``.npy`` arrays, or the
bundled digits; with a held-out part for parity and a cache so a rerun skips decoding.

Labels follow ``eval``'s rules (``data.labelled_folder``: class folders named by class index or
ImageNet synset id; a label the model cannot produce is refused): a calibration folder laid out that
way gives its held-out part labels, and an evaluation set (``EvaluationSet``, ``eval_dir``) must be
laid out that way. The evaluation set travels with the calibration data (``CalibrationData.evaluation``)
so that the conversion judges on it without another parameter."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import data
from resnest_deploy.errors import ArtifactError, first_line
from resnest_deploy.precision.config import DEFAULT_COUNT as DEFAULT_COUNT
from resnest_deploy.precision.evaluation import (
    IMAGES_CACHE as IMAGES_CACHE,
)
from resnest_deploy.precision.evaluation import (
    EvaluationSet as EvaluationSet,
)
from resnest_deploy.precision.evaluation import (
    ImageFiles as ImageFiles,
)
from resnest_deploy.precision.evaluation import (
    check_inputs,
    check_labels,
)
from resnest_deploy.precision.evaluation import (
    folder_labels as folder_labels,
)
from resnest_deploy.precision.evaluation import (
    from_eval_dir as from_eval_dir,
)
from resnest_deploy.precision.evaluation import (
    synsets_for as synsets_for,
)

HOLDOUT = 64  # images kept out of calibration to measure the converted model on


@dataclass
class CalibrationData:
    calib: np.ndarray  # N, 3, H, W float32, what the quantizer sees
    holdout: np.ndarray  # inputs the quantizer never saw, for parity
    source: dict[str, Any] = field(default_factory=dict)  # recorded in the sidecar
    #: the held-out inputs' classes, when known (INT8 search then measures top-1 against them)
    holdout_labels: np.ndarray | None = None
    #: a separate labelled set to judge on (``eval_dir``): replaces the held-out part for judging
    evaluation: EvaluationSet | None = None
    #: the image files calibrated on (resolved), when they are files: an evaluation set must avoid them
    files: tuple[str, ...] = ()
    #: the sha256 of each of ``files``' bytes: a copy or hard link of one is the same image
    digests: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.calib) == 0:
            raise ArtifactError(
                "no calibration inputs; give {calib_dir} with images or {calib_npy}",
                param=("calib_dir", "calib_npy"),
            )
        for name, x in (("calibration", self.calib), ("held-out", self.holdout)):
            check_inputs(name, x)
        self.holdout_labels = check_labels("held-out", self.holdout_labels, len(self.holdout))

    def digest(self) -> str:
        """Identifies the calibration inputs themselves, however they were obtained."""
        return hashlib.sha256(np.ascontiguousarray(self.calib).tobytes()).hexdigest()

    def judged_on(self) -> EvaluationSet:
        """What the conversion is judged on: the evaluation set, else the held-out part (its labels
        when the calibration folder had them)."""
        if self.evaluation is not None:
            return self.evaluation
        kind = self.source.get("kind", "calibration")
        where: dict[str, Any] = {k: self.source[k] for k in ("path", "split") if k in self.source}
        return EvaluationSet(self.holdout, self.holdout_labels, {"kind": f"held-out {kind}", **where})

    def with_evaluation(
        self, evaluation: EvaluationSet, eval_files: ImageFiles | None = None
    ) -> CalibrationData:
        """This data judged on ``evaluation``; refused when it shares an image with calibration: the
        same file, or the same bytes under another path (a copy, a hard link)."""
        shared = ImageFiles(self.files, self.digests).shared_with(eval_files or ImageFiles())
        if shared:
            calibrated, judged = shared[0]
            example = calibrated if calibrated == judged else f"{judged} has the bytes of {calibrated}"
            raise ArtifactError(
                f"the evaluation set shares {len(shared)} image(s) with the calibration images "
                f"(e.g. {example}); give {{eval_dir}} a folder kept apart from {{calib_dir}}",
                param=("eval_dir", "calib_dir"),
            )
        return replace(self, evaluation=evaluation)


def check_count(count: int) -> int:
    if count < 1:
        raise ArtifactError(
            f"{{calib_count}} must be at least 1, got {count}; 256 or more is typical", param="calib_count"
        )
    return count


def _split(x: np.ndarray, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``holdout`` inputs (at most a fifth, at least one) are held out: parity is never
    measured on inputs calibration saw."""
    if len(x) < 2:
        raise ArtifactError(
            f"{len(x)} calibration input cannot both calibrate and be held out for the parity check; "
            "give at least 2 (256 or more is typical)"
        )
    k = max(1, min(holdout, len(x) // 5))
    return x[: len(x) - k], x[len(x) - k :]


def from_images(
    root: str | os.PathLike[str],
    transform: data.Transform,
    count: int = DEFAULT_COUNT,
    seed: int = 0,
    use_cache: bool = True,
    advance: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    num_classes: int | None = None,
    hold_out: bool = True,
) -> CalibrationData:
    """``count`` images (plus a held-out set) sampled deterministically from ``root``. Class folders
    (``folder_labels``) label the held-out part; ``num_classes`` refuses labels the model lacks.
    ``hold_out`` False (an evaluation set judges instead): all ``count`` images calibrate."""
    check_count(count)
    paths = data.find_images(root)
    if not paths:
        raise ArtifactError(
            f"no images (jpg/png/webp) under {root}; point {{calib_dir}} at a folder of images",
            param="calib_dir",
        )
    labels = folder_labels(root, num_classes)
    chosen = data.sample(paths, count + HOLDOUT if hold_out else count, seed)
    labelled = "labelled" if labels is not None else "unlabelled"
    split = "" if hold_out else ":all"
    key = hashlib.sha256(
        f"{data.fingerprint(chosen, transform)}:{count}:{seed}:{labelled}{split}".encode()
    ).hexdigest()[:20]
    source: dict[str, Any] = {
        "kind": "images",
        "path": str(Path(root).resolve()),
        "seed": seed,
        "found": len(paths),
        "labelled": labels is not None,
    }
    hit = _cached_images(key) if use_cache else None
    if hit is not None:
        return replace(hit, source={**source, **hit.source})
    if on_total:
        on_total(len(chosen))
    loaded = data.load_images(chosen, transform, advance)
    if not len(loaded.array):
        raise ArtifactError(
            f"none of the {len(chosen)} image files under {root} could be decoded "
            f"(e.g. {loaded.skipped[0][0].name}: {loaded.skipped[0][1]}); check the files"
        )
    x = loaded.array
    if not hold_out:
        k = 0
    elif len(x) > count:
        k = len(x) - count
    else:
        k = max(1, min(HOLDOUT, len(x) // 5))
        if len(x) < 2:
            _split(x, HOLDOUT)  # refuses, saying why
    calib, holdout = x[: len(x) - k], x[len(x) - k :]
    files = tuple(str(q.resolve()) for q in loaded.paths[: len(x) - k])
    digests = tuple(loaded.digests[: len(x) - k])
    y = None if labels is None else np.array([labels[q] for q in loaded.paths[len(x) - k :]], np.int64)
    skipped = [f"{p}: {why}" for p, why in loaded.skipped]
    if use_cache:
        IMAGES_CACHE.put_arrays(
            key,
            {"kind": "images", "root": str(Path(root).resolve())},
            calib=calib,
            holdout=holdout,
            skipped=np.array(skipped, dtype=str),
            holdout_labels=np.zeros(0, np.int64) if y is None else y,
            labelled=np.array(y is not None),
            files=np.array(files, dtype=str),
            digests=np.array(digests, dtype=str),
        )
    counts = _counts(calib, holdout, skipped)
    return CalibrationData(calib, holdout, {**source, **counts}, y, None, files, digests)


def _cached_images(key: str) -> CalibrationData | None:
    """A verified cache entry, or ``None``: a damaged or foreign entry is a miss (one written before
    labels were kept, too)."""
    found = IMAGES_CACHE.get_arrays(key)
    if found is None:
        return None
    entry, z = found
    try:
        calib, holdout, skipped = z["calib"], z["holdout"], [str(s) for s in z["skipped"]]
        y = z["holdout_labels"] if bool(z["labelled"]) else None
        files = tuple(str(f) for f in z["files"])
        digests = tuple(str(d) for d in z["digests"])
        if len(digests) != len(files):
            return None
        counts = _counts(calib, holdout, skipped)
        return CalibrationData(calib, holdout, {**counts, "cache": str(entry.path)}, y, None, files, digests)
    except (ValueError, KeyError, ArtifactError):
        return None


def _counts(calib: np.ndarray, holdout: np.ndarray, skipped: list[str] | None = None) -> dict[str, Any]:
    counts: dict[str, Any] = {"used": len(calib), "held_out": len(holdout)}
    return counts if skipped is None else counts | {"skipped": skipped}


def from_npy(
    path: str | os.PathLike[str], input_size: tuple[int, int], hold_out: bool = True
) -> CalibrationData:
    """An N x 3 x H x W float array, already preprocessed (normalised as the arch expects);
    ``hold_out`` False (an evaluation set judges instead): all of it calibrates."""
    fix = "save one N x 3 x H x W float32 array with numpy.save"
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ArtifactError(f"cannot read {path} as a .npy array ({first_line(e, 80)}); {fix}") from e
    if not isinstance(x, np.ndarray):  # np.load opens .npz archives too
        x.close()
        raise ArtifactError(f"{path} is an .npz archive, not a single .npy array; {fix}")
    if x.dtype.kind != "f":
        raise ArtifactError(
            f"{path} holds {x.dtype} data; calibration needs preprocessed float inputs ({fix}), "
            "or give the images with {calib_dir}",
            param="calib_dir",
        )
    want = (3, *input_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ArtifactError(f"{path} has shape {x.shape}; the model wants N x {' x '.join(map(str, want))}")
    bad = int((~np.isfinite(x).reshape(len(x), -1).all(axis=1)).sum())
    if bad:
        raise ArtifactError(f"{path} has {bad} sample(s) with NaN or Inf; drop or fix them")
    x = np.ascontiguousarray(x, np.float32)
    calib, holdout = _split(x, HOLDOUT) if hold_out else (x, x[len(x) :])
    return CalibrationData(
        calib,
        holdout,
        {"kind": "npy", "path": str(Path(path).resolve()), **_counts(calib, holdout)},
    )


def from_digits(transform: data.Transform, count: int = DEFAULT_COUNT, seed: int = 0) -> CalibrationData:
    """The bundled digits: calibrate on the train split, measure on the test split."""
    check_count(count)
    train, _ = data.digits("train")
    test, labels = data.digits("test")
    idx = np.sort(np.random.default_rng(seed).permutation(len(train))[:count])
    calib, holdout = data.digits_batch(train[idx], transform), data.digits_batch(test, transform)
    return CalibrationData(
        calib,
        holdout,
        {"kind": "digits", "split": "train", **_counts(calib, holdout), "seed": seed},
        np.asarray(labels),
    )


def resolve(
    arch: str,
    input_size: tuple[int, int],
    calib_dir: str | os.PathLike[str] | None = None,
    calib_npy: str | os.PathLike[str] | None = None,
    count: int = DEFAULT_COUNT,
    seed: int = 0,
    use_cache: bool = True,
    advance: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    eval_dir: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
) -> CalibrationData | None:
    """The calibration set a command line asks for (the digits model brings its own), with the
    evaluation set of ``eval_dir`` when given. ``num_classes``: the model's (default: the arch's)."""
    from resnest_deploy.models import get_spec

    if calib_dir is not None and calib_npy is not None:
        raise ArtifactError("give {calib_dir} or {calib_npy}, not both", param=("calib_dir", "calib_npy"))
    spec = get_spec(arch)
    num_classes = num_classes or spec.arch.num_classes
    transform = data.Transform.from_pretrained(spec.pretrained, *input_size)
    found: CalibrationData | None
    hold_out = eval_dir is None  # an evaluation set judges: every calibration image calibrates
    if calib_npy is not None:
        found = from_npy(calib_npy, input_size, hold_out)
    elif calib_dir is not None:
        found = from_images(
            calib_dir, transform, count, seed, use_cache, advance, on_total, num_classes, hold_out
        )
    elif spec.pretrained.bundled:
        found = from_digits(transform, count, seed)
    else:
        found = None
    if eval_dir is None:
        return found
    if found is None:
        raise ArtifactError(
            "{eval_dir} judges an INT8 conversion: give {calib_dir} or {calib_npy} to calibrate on too",
            param=("eval_dir", "calib_dir", "calib_npy"),
        )
    evaluation, files = from_eval_dir(eval_dir, transform, num_classes, use_cache, advance, on_total)
    return found.with_evaluation(evaluation, files)
