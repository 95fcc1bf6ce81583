"""Which rows cannot be trusted at a glance, and the likely cause: calls that disagree, batch
scaling impossible on a CPU, other processes busy while a row was timed."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import replace

from resnest_deploy.bench.plan import BenchPlan
from resnest_deploy.bench.result import BenchResult
from resnest_deploy.cpuload import LoadReport

#: a row is flagged when p90 is this many times p10 (the calls of one cell should agree)
SPREAD_MAX = 1.5
#: or p99 this many times p50 (stalls: another process, swapping, a throttled CPU)
TAIL_MAX = 3.0
#: or, on a CPU, a larger batch takes less time per call than a smaller one (more work in less time)
#: or this many times more time per image (cache effects cost some, not this much)
PER_IMAGE_GROWTH_MAX = 2.0
#: or, where a call is long enough to be compute-bound (not per-call overhead), less than this
#: fraction of the time per image: batching on a CPU saves overhead, not most of the arithmetic
PER_IMAGE_GAIN_MIN = 0.25
COMPUTE_BOUND_MS = 20.0
#: another process using this share of the CPUs makes every row on them suspect
OTHERS_SHARE_MAX = 0.15


def row_flags(r: BenchResult) -> list[str]:
    """What is implausible within one row: calls that disagree, or a tail of stalls."""
    flags = []
    if r.p10_ms > 0 and r.p90_ms > SPREAD_MAX * r.p10_ms:
        flags.append(f"spread: p90 is {r.p90_ms / r.p10_ms:.1f}x p10")
    if r.iterations >= 10 and r.p99_ms > TAIL_MAX * r.p50_ms:
        flags.append(f"tail: p99 is {r.p99_ms / r.p50_ms:.1f}x p50")
    if not r.warmup_settled:
        flags.append(f"warm-up did not settle in {r.warmup_calls} calls")
    return flags


def on_cpu(backend: str) -> bool:
    return not any(word in backend for word in ("cuda", "tensorrt", "gpu"))


def scaling_flags(rows: Sequence[BenchResult]) -> dict[int, list[str]]:
    """Implausible batch scaling on a CPU, by row index: a larger batch that takes less time per
    call than a smaller one, or much more time per image."""
    found: dict[int, list[str]] = {}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.artifact, r.backend), []).append(i)
    for (_, backend), members in groups.items():
        if not on_cpu(backend):
            continue
        for a, b in itertools.pairwise(sorted(members, key=lambda i: rows[i].batch)):
            message = _scaling(rows[a], rows[b])
            if message is not None:
                for i in (a, b):
                    found.setdefault(i, []).append(message)
    return found


def _scaling(small: BenchResult, large: BenchResult) -> str | None:
    """What is implausible between two batch sizes of one artifact on a CPU, if anything."""
    if large.batch <= small.batch:
        return None
    per_small, per_large = small.p50_ms / small.batch, large.p50_ms / large.batch
    if large.p50_ms < small.p50_ms:
        return (
            f"scaling: batch {large.batch} took less time per call than batch {small.batch} "
            f"({per_large:.3g} vs {per_small:.3g} ms per image): impossible on a CPU"
        )
    if small.p50_ms >= COMPUTE_BOUND_MS and per_large < PER_IMAGE_GAIN_MIN * per_small:
        return (
            f"scaling: batch {large.batch} took {per_large / per_small:.2f}x the time per image of "
            f"batch {small.batch}, far below what batching saves on a CPU"
        )
    if per_large > PER_IMAGE_GROWTH_MAX * per_small:
        return (
            f"scaling: batch {large.batch} took {per_large / per_small:.1f}x the time per image "
            f"of batch {small.batch}"
        )
    return None


def likely_cause(r: BenchResult, plan: BenchPlan, report: LoadReport | None) -> str | None:
    """Why a row's figures cannot be trusted, from what the machine did meanwhile."""
    cores = os.cpu_count() or 1
    if report is not None and report.others_share >= OTHERS_SHARE_MAX:
        threads = plan.threads or cores
        if not on_cpu(r.backend):
            contention = "; they delay the host side of each call: stop them"
        elif threads >= cores:
            contention = (
                f"; with {threads} threads on {cores} cores, this process and they contend for the cores "
                "(oversubscription): stop them, or bench with fewer --threads"
            )
        else:
            contention = "; they take the CPU time this process waits for: stop them"
        return f"other processes: {report.who()}{contention}"
    if plan.threads and plan.threads > cores and on_cpu(r.backend):
        return f"thread oversubscription: --threads {plan.threads} on {cores} cores"
    if r.flags:
        return (
            "no other process was busy: warm-up, frequency scaling or memory pressure; rerun with a longer -t"
        )
    return None


def judge(
    rows: Sequence[BenchResult], plan: BenchPlan, loads: Sequence[LoadReport | None]
) -> list[BenchResult]:
    """Every row with its flags and their likely cause. A row timed while other processes used
    ``OTHERS_SHARE_MAX`` of the CPUs is flagged too: its figures are the machine's, not the model's."""
    scaling = scaling_flags(rows)
    judged = []
    for i, (r, report) in enumerate(zip(rows, loads, strict=True)):
        flags = row_flags(r) + scaling.get(i, [])
        if report is not None and report.others_share >= OTHERS_SHARE_MAX:
            flags.append(f"busy machine: others used {report.others_share:.0%} of the CPUs")
        r = replace(
            r,
            flags=tuple(flags),
            others_cpu=None if report is None else round(report.others_share, 3),
            others=None if report is None or not report.busiest else report.who(),
        )
        judged.append(replace(r, cause=likely_cause(r, plan, report) if flags else None))
    return judged
