"""What a search found, typed: the ranking of units, the units kept in FP32, the drop and the rule it
was accepted by. The sidecar's ``conversion.search`` is its serialisation (``as_dict`` /
``from_dict``); renderers read these fields, never the dict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from resnest_deploy import stats

#: what the search accepts, recorded in the sidecar: the budget and the parity gate, both on one set
ACCEPTANCE = "budget_and_parity"
ACCEPTANCE_TEXT = (
    "drop (point estimate) within max_drop and the parity gate met, both on the evaluation set; "
    "the 95% interval is shown, not required within the budget"
)


@dataclass
class Sensitivity:
    unit: str
    metric_fp32_alone: float  # the held-out metric with only this unit in FP32
    gain: float  # points over plain INT8
    cosine: float | None = None  # mean logit cosine to FP32 with only this unit in FP32


@dataclass
class SearchResult:
    fp32_metric: float
    int8_metric: float
    metric: float  # with ``kept_fp32``
    kept_fp32: list[str]
    max_drop: float
    metric_name: str
    ranking: list[Sensitivity] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    #: compute layers in FP32 (the default-kept gate and classifier included), plain and chosen, of all
    layers_fp32: dict[str, int] = field(default_factory=dict)
    #: the compute nodes of ``kept_fp32`` that stay FP32 (the others went back to INT8)
    kept_fp32_layers: list[str] = field(default_factory=list)
    #: the chosen file's drop against FP32 on the evaluation set, paired per image, with its interval
    drop: stats.Drop | None = None
    #: what the search accepted a candidate by (``ACCEPTANCE``; older sidecars: the budget alone)
    acceptance: str = ACCEPTANCE

    def as_dict(self) -> dict[str, Any]:
        return {
            "acceptance": {
                "rule": self.acceptance,
                "text": ACCEPTANCE_TEXT if self.acceptance == ACCEPTANCE else "",
            },
            "drop": self.drop.as_dict() if self.drop is not None else None,
            "metric": self.metric_name,
            "fp32": self.fp32_metric,
            "plain_int8": self.int8_metric,
            "chosen": self.metric,
            "max_drop_points": self.max_drop,
            "kept_fp32": self.kept_fp32,
            "kept_fp32_layers": self.kept_fp32_layers,
            "sensitivity": [s.__dict__ for s in self.ranking],
            "trials": self.trials,
            "layers_fp32": self.layers_fp32,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchResult:
        """A search read back from a sidecar's ``conversion.search`` (what ``as_dict`` wrote)."""
        ranking = [
            Sensitivity(
                str(s["unit"]),
                float(s["metric_fp32_alone"]),
                float(s["gain"]),
                None if s.get("cosine") is None else float(s["cosine"]),
            )
            for s in data.get("sensitivity") or []
        ]
        drop, acceptance = data.get("drop"), data.get("acceptance")
        return cls(
            float(data["fp32"]),
            float(data["plain_int8"]),
            float(data["chosen"]),
            [str(u) for u in data.get("kept_fp32") or []],
            float(data["max_drop_points"]),
            str(data["metric"]),
            ranking,
            [dict(t) for t in data.get("trials") or []],
            {str(k): int(v) for k, v in (data.get("layers_fp32") or {}).items()},
            [str(n) for n in data.get("kept_fp32_layers") or []],
            drop_from_dict(drop) if isinstance(drop, Mapping) else None,
            str(acceptance["rule"]) if isinstance(acceptance, Mapping) else "budget",
        )


def drop_from_dict(data: Mapping[str, Any]) -> stats.Drop:
    """A ``stats.Drop`` read back from what ``as_dict`` wrote (a sidecar: checked by its types)."""
    return stats.Drop(
        float(data["points"]),
        float(data["low"]),
        float(data["high"]),
        int(data["n"]),
        int(data["lost"]),
        int(data["gained"]),
        float(data["p_value"]),
        str(data["method"]),
        float(data["confidence"]),
    )
