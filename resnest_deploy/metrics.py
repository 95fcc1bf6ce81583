"""Top-k accuracy in one place, per image first: ``eval``, parity (``compare``) and the INT8 search
all score through here, and a paired test of two models reads the per-image outcomes it keeps.

NumPy only (no torch, no runner): it scores logits or ranked classes, wherever they were computed.
Ties: the best class alone (``k=1``) is ``argmax``'s, the lower index; the best ``k`` are in NumPy's
``argsort`` order, as the workers rank an image's classes, so exactly tied logits at the k-th place
fall as they fell before this module gathered the three ways the tool computed top-k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

#: the k of "top-5": what ``eval`` reports and parity bars (capped at the number of classes)
TOP5 = 5


def ranked(logits: ArrayLike, k: int) -> np.ndarray:
    """The ``k`` best classes of each row (images x classes), best first (ties: see the module)."""
    x = np.asarray(logits)
    x = x.reshape(len(x), -1)
    if k < 1:
        raise ValueError(f"k is how many best classes count, at least 1; got {k}")
    if k == 1:
        return x.argmax(axis=1)[:, None]
    return np.argsort(-x, axis=1)[:, :k]


def hits(classes: Sequence[Sequence[int]] | np.ndarray, targets: ArrayLike, k: int = 1) -> np.ndarray:
    """Per image: whether its target is among the first ``k`` of its classes, ranked best first (what
    a worker returns for each image, or :func:`ranked`)."""
    y = np.asarray(targets).reshape(-1)
    if len(classes) != len(y):
        raise ValueError(f"{len(classes)} images ranked but {len(y)} targets; give one target per image")
    if isinstance(classes, np.ndarray) and classes.ndim == 2:
        return np.asarray((classes[:, :k] == y[:, None]).any(axis=1), dtype=bool)
    return np.array([t in tuple(c)[:k] for c, t in zip(classes, y.tolist(), strict=True)], dtype=bool)


def outcomes(logits: ArrayLike, labels: ArrayLike, k: int = 1) -> np.ndarray:
    """Per image: whether its label is among the ``k`` best classes of its logits."""
    return hits(ranked(logits, k), labels, k)


def reference_top1(reference: ArrayLike) -> np.ndarray:
    """The reference model's best class per image: the target when there are no labels."""
    return ranked(reference, 1)[:, 0]


def agreement(logits: ArrayLike, reference: ArrayLike, k: int = 1) -> np.ndarray:
    """Per image: whether the reference's top-1 class is among the candidate's ``k`` best (top-1
    agreement at ``k=1``): what parity and the INT8 search judge without labels."""
    return outcomes(logits, reference_top1(reference), k)


def correct(logits: ArrayLike, labels: ArrayLike | None, reference: ArrayLike, k: int = 1) -> np.ndarray:
    """Per image: right against ``labels`` where there are some, else in agreement with the
    ``reference`` logits' top-1 (the INT8 search's metric)."""
    return outcomes(logits, labels, k) if labels is not None else agreement(logits, reference, k)


def accuracy(outcome: ArrayLike) -> float:
    """The fraction of images right (0..1) from per-image outcomes; NaN for no images."""
    o = np.asarray(outcome, dtype=bool)
    return float(o.mean()) if o.size else float("nan")


@dataclass(frozen=True)
class TopK:
    """One model's per-image outcomes on a set: its target is the best class (``top1``), or among
    the best five (``top5``; all classes where there are fewer)."""

    top1: np.ndarray
    top5: np.ndarray

    @classmethod
    def of_ranked(cls, classes: Sequence[Sequence[int]] | np.ndarray, targets: ArrayLike) -> TopK:
        return cls(hits(classes, targets, 1), hits(classes, targets, TOP5))

    @classmethod
    def of_logits(cls, logits: ArrayLike, targets: ArrayLike) -> TopK:
        x = np.asarray(logits)
        return cls.of_ranked(ranked(x, min(TOP5, x.reshape(len(x), -1).shape[1])), targets)

    @classmethod
    def agreement(cls, logits: ArrayLike, reference: ArrayLike) -> TopK:
        """Against the reference's top-1 class instead of labels."""
        return cls.of_logits(logits, reference_top1(reference))

    @property
    def images(self) -> int:
        return len(self.top1)

    @property
    def top1_accuracy(self) -> float:
        return accuracy(self.top1)

    @property
    def top5_accuracy(self) -> float:
        return accuracy(self.top5)


@dataclass(frozen=True)
class Paired:
    """Two models' per-image outcomes on the same images, in the same order: what a paired test of
    their difference reads (McNemar's test on the discordant pairs, a paired bootstrap)."""

    reference: np.ndarray  # bool per image: the reference (e.g. FP32) right
    candidate: np.ndarray  # bool per image: the candidate (e.g. INT8) right

    def __post_init__(self) -> None:
        ref, cand = np.asarray(self.reference, dtype=bool), np.asarray(self.candidate, dtype=bool)
        if ref.ndim != 1 or ref.shape != cand.shape:
            raise ValueError(
                f"paired outcomes need one flag per image for both models; got {ref.shape} and {cand.shape}"
            )
        object.__setattr__(self, "reference", ref)
        object.__setattr__(self, "candidate", cand)

    @property
    def images(self) -> int:
        return len(self.reference)

    @property
    def reference_only(self) -> int:
        """Images the reference gets right and the candidate wrong (one discordant count)."""
        return int((self.reference & ~self.candidate).sum())

    @property
    def candidate_only(self) -> int:
        """Images the candidate gets right and the reference wrong (the other discordant count)."""
        return int((~self.reference & self.candidate).sum())

    @property
    def both(self) -> int:
        return int((self.reference & self.candidate).sum())

    @property
    def drop(self) -> float:
        """Points (0..100) of accuracy the candidate loses against the reference (negative: gains)."""
        return 100.0 * (self.reference_only - self.candidate_only) / self.images if self.images else 0.0


def paired(reference: ArrayLike, candidate: ArrayLike, labels: ArrayLike | None = None, k: int = 1) -> Paired:
    """The per-image outcomes of two models' logits on the same images: against ``labels``, or
    without labels against the reference's top-1 (then the reference is right on every image)."""
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if len(ref) != len(cand):
        raise ValueError(
            f"paired logits need the same images: {len(ref)} reference rows, {len(cand)} candidate"
        )
    return Paired(correct(ref, labels, ref, k), correct(cand, labels, ref, k))
