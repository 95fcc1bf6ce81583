"""Where classification runs: on this machine, or on a Ray cluster, behind one small interface.

``evaluate`` and ``predict`` describe their work as a :class:`~resnest_deploy.executors.work.ClassifyJob`
and a list of (index, path) images, and hand it to an :class:`Executor`; they never learn where it ran.
An executor answers exactly one outcome per image, in the images' order (``exactly_once`` checks
that for any executor: retried work is deduplicated by image, never counted by arrival).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from resnest_deploy.errors import ClusterError
from resnest_deploy.executors.work import Classifier, ClassifyJob, ImageOutcome, decode

__all__ = [
    "Classified",
    "ClusterError",
    "Executor",
    "LocalExecutor",
    "Progress",
    "exactly_once",
    "executor_for",
]

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

#: the CLI's progress: called with the number of images just finished
Progress = Callable[[int], None]


class Executor(Protocol):
    """Runs classification jobs. ``classify`` returns one outcome per item, in the items' order;
    ``write`` streams rows to ``output`` (format from its suffix) and returns how many it wrote."""

    name: str

    def classify(
        self, job: ClassifyJob, items: Sequence[tuple[int, str]], advance: Progress | None = None
    ) -> Classified: ...

    def write(
        self,
        job: ClassifyJob,
        items: Sequence[tuple[int, str]],
        output: Path,
        advance: Progress | None = None,
    ) -> WriteReport: ...

    def map(self, fn: Callable[[S, T], R], shared: S, items: Sequence[T]) -> list[R]:
        """``[fn(shared, item) for item in items]``, in order: independent work (one INT8 search
        trial per item) wherever the executor runs it; ``shared`` travels once."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Classified:
    """One outcome per image in the items' order, and the backend that computed them."""

    outcomes: list[ImageOutcome]
    backend: str


@dataclass(frozen=True)
class WriteReport:
    rows: int
    skipped: list[str]
    output: str


def exactly_once(items: Sequence[tuple[int, str]], got: Iterable[ImageOutcome]) -> list[ImageOutcome]:
    """The outcomes in the items' order, one per item: a repeat of the same image (a retried batch)
    is dropped, a missing one is an error, never a silently short result."""
    by_index: dict[int, ImageOutcome] = {}
    for o in got:
        by_index.setdefault(o.index, o)
    missing = [i for i, _ in items if i not in by_index]
    if missing or len(by_index) != len(items):
        raise ClusterError(
            f"{len(missing)} of {len(items)} images came back without a result (first: "
            f"{dict(items).get(missing[0], '?') if missing else '?'}); no result was kept: run the job again"
        )
    return [by_index[i] for i, _ in items]


class LocalExecutor:
    """This machine, one runner at a time. Images decoded for one artifact are kept for the next, so
    evaluating three files decodes the folder once, as ``eval`` always did."""

    name = "local"

    def __init__(self) -> None:
        self._decoded: tuple[object, tuple] | None = None

    def _decode(self, job: ClassifyJob, items: Sequence[tuple[int, str]], advance: Progress | None) -> tuple:
        key = (job.transform, tuple(items))
        if self._decoded is None or self._decoded[0] != key:
            self._decoded = None  # free the last set before decoding the next
            decoded = decode_with_progress(items, job, advance)
            self._decoded = (key, decoded)
        return self._decoded[1]

    def classify(
        self, job: ClassifyJob, items: Sequence[tuple[int, str]], advance: Progress | None = None
    ) -> Classified:
        array, kept, paths, bad = self._decode(job, items, advance)
        with Classifier(job) as classifier:
            got = classifier.classify_array(array, kept, paths)
        return Classified(exactly_once(items, [*got, *bad]), classifier.backend)

    def write(
        self,
        job: ClassifyJob,
        items: Sequence[tuple[int, str]],
        output: Path,
        advance: Progress | None = None,
    ) -> WriteReport:
        from resnest_deploy.executors import rows

        got = self.classify(job, items, advance).outcomes
        written = rows.write_file(output, got, job.topk)
        return WriteReport(written, [f"{o.path}: {o.error}" for o in got if o.error], str(output))

    def map(self, fn: Callable[[S, T], R], shared: S, items: Sequence[T]) -> list[R]:
        return [fn(shared, item) for item in items]

    def close(self) -> None:
        self._decoded = None


def decode_with_progress(
    items: Sequence[tuple[int, str]], job: ClassifyJob, advance: Progress | None
) -> tuple:
    """``decode`` in chunks, so a long folder shows its progress."""
    import numpy as np

    arrays, kept, paths, bad = [], [], [], []
    step = 256
    for start in range(0, len(items), step):
        a, k, p, b = decode(items[start : start + step], job.transform)
        arrays.append(a)
        kept += k
        paths += p
        bad += b
        if advance:
            advance(len(items[start : start + step]))
    h, w = job.transform.hw
    array = np.concatenate(arrays) if arrays else np.zeros((0, 3, h, w), np.float32)
    return array, kept, paths, bad


def executor_for(ray_address: str | None, progress_to: Callable[[str], None] | None = None) -> Executor:
    """The local executor, or a Ray cluster's when an address (or ``auto``) is given."""
    if not ray_address:
        return LocalExecutor()
    from resnest_deploy.executors.ray_cluster import RayExecutor

    return RayExecutor(ray_address, report=progress_to)
