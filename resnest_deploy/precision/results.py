"""What a conversion made, typed: the file, its parity, the calibration tournament, the search and
its latency cost. The sidecar's ``conversion`` section is their serialisation (``conversion_section``)
and reads back into them (``ConversionReport.from_metadata``), older sidecars (no ``schema``) too."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnest_deploy import stats
from resnest_deploy.compare import Metrics
from resnest_deploy.errors import ArtifactError
from resnest_deploy.precision.cost import LatencyCost
from resnest_deploy.precision.search import ACCEPTANCE_TEXT, SearchResult, drop_from_dict

#: the layout of a sidecar's ``conversion`` section. 1: before the field was written (the same
#: layout); 2: written from the typed results, with this field; 3: with ``evaluation``, ``drop`` and
#: ``acceptance`` (issue 34)
CONVERSION_SCHEMA = 3


@dataclass(frozen=True)
class Evaluation:
    """What a conversion was judged on: ``eval_dir``'s labelled images or the held-out part of the
    calibration data, how many, labelled or not (then: agreement with FP32), whether they can
    resolve the budget, and where the FP32 references came from (``cache`` on a rerun)."""

    kind: str  # "eval_dir", "held-out images", "held-out digits", "held-out npy"
    path: str | None
    count: int
    labelled: bool
    metric: str  # "top-1" or "top-1 agreement with FP32"
    resolves: bool | None = None  # None: no budget to resolve
    images_needed: int | None = None
    references: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "count": self.count,
            "labelled": self.labelled,
            "metric": self.metric,
            "resolves": self.resolves,
            "images_needed": self.images_needed,
            "references": dict(self.references),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        needed, resolves = data.get("images_needed"), data.get("resolves")
        return cls(
            str(data["kind"]),
            None if data.get("path") is None else str(data["path"]),
            int(data["count"]),
            bool(data["labelled"]),
            str(data["metric"]),
            None if resolves is None else bool(resolves),
            None if needed is None else int(needed),
            dict(data.get("references") or {}),
        )

    @property
    def what(self) -> str:
        """The kind in words: ``evaluation images``, ``held-out images``, ``held-out npy inputs``."""
        return kind_words(self.kind)

    def __str__(self) -> str:
        where = f" in {self.path}" if self.path else ""
        label = "labelled" if self.labelled else "unlabelled: agreement with FP32"
        return f"{self.count} {self.what}{where} ({label})"


def kind_words(kind: str) -> str:
    if kind == "eval_dir":
        return "evaluation images"
    return kind if kind.endswith(("images", "digits")) else f"{kind} inputs"


@dataclass(frozen=True)
class MethodScore:
    method: str
    metric: float  # plain INT8's held-out metric when calibrated with ``method``


@dataclass(frozen=True)
class Tournament:
    """``method="auto"``: every calibration method the target offers, scored on held-out inputs."""

    metric: str
    results: tuple[MethodScore, ...]
    chosen: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "results": [{"method": r.method, "metric": r.metric} for r in self.results],
            "chosen": self.chosen,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tournament:
        results = tuple(MethodScore(str(r["method"]), float(r["metric"])) for r in data["results"])
        return cls(str(data["metric"]), results, str(data["chosen"]))


def conversion_section(
    settings: Mapping[str, Any],
    tournament: Tournament | None,
    skipped: Mapping[str, str],
    found: SearchResult | None,
    cost: LatencyCost | None,
    evaluation: Evaluation | None = None,
    drop: stats.Drop | None = None,
) -> dict[str, Any]:
    """The sidecar's ``conversion``: the job's settings, then the typed results serialised."""
    section = dict(settings)
    if tournament is not None:
        section["calibration_methods"] = tournament.as_dict()
    section |= skipped
    if found is not None:
        section["search"] = found.as_dict()
        if cost is not None:
            section["search"]["latency"] = cost.as_dict()
        section["acceptance"] = {"rule": found.acceptance, "text": ACCEPTANCE_TEXT}
    if evaluation is not None:
        section["evaluation"] = evaluation.as_dict()
    if drop is not None:
        section["drop"] = drop.as_dict()
    section["schema"] = CONVERSION_SCHEMA
    return section


@dataclass
class ConversionReport:
    path: Path
    sidecar: Path
    precision: str
    target: str
    parity: Metrics
    seconds: float
    op_counts: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    tournament: Tournament | None = None
    search: SearchResult | None = None
    cost: LatencyCost | None = None  # of the units the search kept in FP32, when timed
    #: what the file was judged on, its drop against FP32 there (paired, 95% interval), and by which
    #: rule a search accepted it (``search.ACCEPTANCE``; None: no search)
    evaluation: Evaluation | None = None
    drop: stats.Drop | None = None
    acceptance: str | None = None

    @property
    def gate(self) -> dict[str, Any]:
        """How the parity was judged (``parity.gate_record``): judged or not, and against which bar."""
        return dict(self.metadata.get("parity", {}).get("gate") or {})

    @property
    def inputs(self) -> str:
        """What parity was measured on, in words."""
        return str(self.metadata.get("parity", {}).get("inputs", ""))

    @property
    def skipped_images(self) -> list[str]:
        """Calibration images that could not be read (the first few)."""
        calibration = self.metadata.get("conversion", {}).get("calibration") or {}
        return list(calibration.get("skipped") or []) if isinstance(calibration, dict) else []

    @classmethod
    def from_metadata(
        cls,
        meta: Mapping[str, Any],
        path: str | os.PathLike[str],
        sidecar: str | os.PathLike[str] | None = None,
    ) -> ConversionReport:
        """A converted file's report read back from its metadata (sidecar or embedded), any schema."""
        path = Path(path)
        section = meta.get("conversion")
        if not isinstance(section, Mapping):
            raise ArtifactError(
                f"{path.name} records no conversion; convert it with `resnest-deploy quantize`"
            )
        try:
            tried = section.get("calibration_methods")
            found = section.get("search")
            latency = found.get("latency") if isinstance(found, Mapping) else None
            parity = meta["parity"]["metrics"]
            evaluation, drop = section.get("evaluation"), section.get("drop")
            acceptance = section.get("acceptance")
            return cls(
                path,
                Path(sidecar) if sidecar else Path(f"{path}.json"),
                str(meta["precision"]),
                str(meta["target"]),
                Metrics(**parity),
                0.0,
                dict((meta.get("graph") or {}).get("op_counts") or {}),
                dict(meta),
                Tournament.from_dict(tried) if isinstance(tried, Mapping) else None,
                SearchResult.from_dict(found) if isinstance(found, Mapping) else None,
                LatencyCost.from_dict(latency) if isinstance(latency, Mapping) else None,
                Evaluation.from_dict(evaluation) if isinstance(evaluation, Mapping) else None,
                drop_from_dict(drop) if isinstance(drop, Mapping) else None,
                str(acceptance["rule"]) if isinstance(acceptance, Mapping) else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(
                f"{path.name}: its conversion metadata is damaged ({e!r}); convert it again"
            ) from e

    @classmethod
    def from_sidecar(cls, path: str | os.PathLike[str]) -> ConversionReport:
        """The report of a converted file, from what it records about itself (checked)."""
        from resnest_deploy import metadata

        return cls.from_metadata(metadata.of_artifact(path), path)
