"""How close a candidate's logits are to a reference's, and whether that is close enough."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from resnest_deploy import metrics
from resnest_deploy.errors import ParityError


@dataclass(frozen=True)
class Metrics:
    max_abs: float
    mean_abs: float
    #: max_abs over the reference's logit scale, max(1, max |ref|): the number tolerances bound
    rel_max_abs: float
    cosine: float  # mean over samples
    top1: float  # fraction of samples whose top-1 class agrees
    top5: float  # fraction whose reference top-1 is in the candidate's top-5
    samples: int
    nonfinite: int = 0  # NaN/Inf values in the candidate: always a failure, whatever the bars

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Tolerance:
    rel_max_abs: float
    cosine: float
    top1: float
    top5: float = 0.0

    def with_bars(self, cosine: float | None = None, top1: float | None = None) -> Tolerance:
        """This bar with a user's cosine and top-1 agreement bars (``--min-cosine``, ``--min-top1``).
        A top-1 bar below the top-5 bar lowers that one too: top-5 agreement is never below top-1,
        so the user's bar is the one that decides."""
        return Tolerance(
            self.rel_max_abs,
            self.cosine if cosine is None else cosine,
            self.top1 if top1 is None else top1,
            self.top5 if top1 is None else min(self.top5, top1),
        )

    def violations(self, m: Metrics) -> list[str]:
        out = [f"{m.nonfinite} NaN/Inf output value(s)"] if m.nonfinite else []
        if not m.rel_max_abs <= self.rel_max_abs:
            out.append(f"max abs error {m.max_abs:.3g} (relative {m.rel_max_abs:.3g} > {self.rel_max_abs:g})")
        if not m.cosine >= self.cosine:
            out.append(f"cosine {m.cosine:.6f} < {self.cosine:g}")
        if not m.top1 >= self.top1:
            out.append(f"top-1 agreement {m.top1:.1%} < {self.top1:.1%}")
        if not m.top5 >= self.top5:
            out.append(f"top-5 agreement {m.top5:.1%} < {self.top5:.1%}")
        return out


#: Defaults by precision; fp32 is the issue's 1e-4 of the logit scale.
TOLERANCES = {
    "fp32": Tolerance(rel_max_abs=1e-4, cosine=0.99999, top1=0.99),
    "fp16": Tolerance(rel_max_abs=5e-2, cosine=0.999, top1=0.9),
    # BF16 keeps FP32's range with an 8-bit mantissa: looser than FP16 on max abs, as tight on ranking
    "bf16": Tolerance(rel_max_abs=1e-1, cosine=0.999, top1=0.9),
    "int8": Tolerance(rel_max_abs=float("inf"), cosine=0.98, top1=0.7, top5=0.85),
}
#: a bar only NaN or Inf fails: for files judged by something else (an INT8 search's budget), or only timed
UNCHECKED = Tolerance(rel_max_abs=float("inf"), cosine=-1.0, top1=0.0)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Metrics:
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if ref.shape != cand.shape:
        raise ParityError(f"output shapes differ: reference {ref.shape}, candidate {cand.shape}")
    finite = np.isfinite(cand)
    nonfinite = int((~finite).sum())
    cand = np.where(finite, cand, 0.0)  # the metrics below describe the finite part; nonfinite fails it
    diff = np.abs(ref - cand)
    max_abs = float("inf") if nonfinite else float(diff.max()) if diff.size else 0.0
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, (ref * cand).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    cosine = np.where(finite.all(axis=1), cosine, -1.0)
    agree = metrics.TopK.agreement(cand, ref)
    return Metrics(
        max_abs=max_abs,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        rel_max_abs=max_abs / max(1.0, float(np.abs(ref).max(initial=0.0))),
        cosine=float(np.nan_to_num(cosine, nan=-1.0).mean()),
        top1=agree.top1_accuracy,
        top5=agree.top5_accuracy,
        samples=len(ref),
        nonfinite=nonfinite,
    )


def assert_close(metrics: Metrics, tolerance: Tolerance, what: str) -> None:
    problems = tolerance.violations(metrics)
    if problems:
        raise ParityError(f"{what} does not match its reference: {'; '.join(problems)}")
