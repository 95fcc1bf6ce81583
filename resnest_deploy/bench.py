"""How fast: latency percentiles and throughput per artifact and batch size, in one run."""

from __future__ import annotations

import csv
import io
import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy._io import atomic_path
from resnest_deploy.artifacts import Lineup
from resnest_deploy.cpuload import LoadReport, LoadWatch
from resnest_deploy.data import random_inputs
from resnest_deploy.errors import ArtifactError
from resnest_deploy.limits import LimitError, check_batch, check_positive
from resnest_deploy.runners import Runner
from resnest_deploy.runners.options import RunnerOptions

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
#: warm-up ends when the median of the last WINDOW calls is within this of the WINDOW before
SETTLED = 0.10
WINDOW = 3
WARMUP_MAX_S = 10.0
#: a slow cell still gets two windows to compare, up to this long
WARMUP_HARD_S = 60.0
WARMUP_MAX_CALLS = 500
#: timed calls per cell when running on time, at least; and at most (every loop is bounded)
MIN_CALLS = 10
MAX_CALLS = 1_000_000
DEFAULT_ITERATIONS = 20


@dataclass(frozen=True)
class BenchPlan:
    """How each cell (artifact x batch size) is timed.

    ``seconds``: time each cell for that long, with at least ``iterations`` (default 10) calls, as
    OpenVINO's ``benchmark_app -t``; without it, exactly ``iterations`` (default 20) calls.
    ``warmup``: that many untimed calls first; None warms up until the call time is stable."""

    batches: tuple[int, ...] = (1, 8)
    iterations: int | None = None
    seconds: float | None = None
    warmup: int | None = None
    provider: str = "cpu"
    threads: int | None = None
    cuda_graphs: bool = False
    ov_hint: str = "latency"

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", tuple(self.batches))
        if self.iterations is not None:
            check_positive(self.iterations, "--iterations")
        if self.seconds is not None and not (0 < self.seconds <= 3600):
            raise LimitError(f"--time must be more than 0 and at most 3600 seconds, got {self.seconds}")
        if self.warmup is not None and self.warmup < 0:
            raise LimitError(f"--warmup must be 0 or more, got {self.warmup}")

    @property
    def min_calls(self) -> int:
        if self.seconds is None:
            return self.iterations or DEFAULT_ITERATIONS
        return self.iterations or MIN_CALLS


@dataclass(frozen=True)
class BenchResult:
    artifact: str
    backend: str
    precision: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    iterations: int
    #: the engine's GPU time alone (CUDA events), where the backend has device timers; the other
    #: figures are the whole call, host staging and copies included, on every backend
    device_p50_ms: float | None
    #: activation (load, compile, engine deserialisation) plus the first call at this artifact's first
    #: batch size: what a cold start costs, and what a working engine or kernel cache saves
    first_call_ms: float
    p10_ms: float = float("nan")
    #: untimed calls before timing (a fixed count, or until two windows of calls agreed)
    warmup_calls: int = 0
    #: whether the warm-up ended because the call time was stable (False: it hit its bound)
    warmup_settled: bool = True
    #: wall time of the timed calls
    timed_s: float = float("nan")
    #: the share of the machine's CPUs that other processes used while this row was timed
    others_cpu: float | None = None
    #: who, when they were busy: "python3 (pid 4242) 0.98, ..."
    others: str | None = None
    #: why this row cannot be trusted at a glance (empty: nothing implausible seen)
    flags: tuple[str, ...] = ()
    #: the likely cause of the flags
    cause: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d


def time_runner(
    runner: Runner,
    x: np.ndarray,
    warmup: int = 5,
    iterations: int = 20,
    advance: Callable[[int], None] | None = None,
    seconds: float | None = None,
) -> tuple[list[float], list[float]]:
    """Per-call latency in ms (whole call; and device-only where the backend has a device timer)
    after ``warmup`` untimed calls (allocations, autotuning, graph capture): exactly ``iterations``
    calls, or with ``seconds``, calls until that much time has passed (at least ``iterations``)."""
    for _ in range(warmup):
        runner.infer(x)
    times, device = [], []
    deadline = None if seconds is None else time.perf_counter() + seconds
    for i in range(MAX_CALLS):
        if deadline is None and i >= iterations:
            break
        if deadline is not None and i >= iterations and time.perf_counter() >= deadline:
            break
        runner.infer(x)
        times.append(runner.last_inference_ms())
        gpu = runner.device_time_ms()
        if gpu is not None:
            device.append(gpu)
        if advance:
            advance(1)
    return times, device


def warm_up(
    runner: Runner, x: np.ndarray, max_s: float = WARMUP_MAX_S, hard_s: float = WARMUP_HARD_S
) -> tuple[int, bool]:
    """Untimed calls until the call time is stable: the median of the last ``WINDOW`` calls within
    ``SETTLED`` of the ``WINDOW`` before. Bounded by ``max_s`` once two windows were compared (a slow
    cell gets them, up to ``hard_s``) and by ``WARMUP_MAX_CALLS``; returns the calls made and whether
    they settled."""
    times: list[float] = []
    started = time.perf_counter()
    deadline, hard = started + max_s, started + hard_s
    while len(times) < WARMUP_MAX_CALLS:
        runner.infer(x)
        times.append(runner.last_inference_ms())
        if len(times) >= 2 * WINDOW:
            now = float(np.median(times[-WINDOW:]))
            before = float(np.median(times[-2 * WINDOW : -WINDOW]))
            if abs(now - before) <= SETTLED * before:
                return len(times), True
        if time.perf_counter() >= (deadline if len(times) >= 2 * WINDOW else hard):
            break
    return len(times), False


def summarize(
    info_name: str,
    runner: Runner,
    precision: str,
    batch: int,
    times: Sequence[float],
    device: Sequence[float] = (),
    first_call_ms: float = float("nan"),
    **extra: Any,
) -> BenchResult:
    """A row from measured call times; ``extra`` fills the later fields (warm-up, load, flags)."""
    t = np.asarray(times)
    p10, p50, p90, p99 = (float(v) for v in np.percentile(t, [10, 50, 90, 99]))
    return BenchResult(
        info_name,
        runner.backend,
        precision,
        batch,
        round(p50, 3),
        round(p90, 3),
        round(p99, 3),
        round(float(t.mean()), 3),
        round(batch * 1000.0 / p50, 2),
        len(t),
        round(float(np.percentile(device, 50)), 3) if len(device) else None,
        round(first_call_ms, 3),
        round(p10, 3),
        **extra,
    )


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
        members = sorted(members, key=lambda i: rows[i].batch)
        for a, b in itertools.pairwise(members):
            small, large = rows[a], rows[b]
            if large.batch <= small.batch:
                continue
            per_small, per_large = small.p50_ms / small.batch, large.p50_ms / large.batch
            if large.p50_ms < small.p50_ms:
                message = (
                    f"scaling: batch {large.batch} took less time per call than batch {small.batch} "
                    f"({per_large:.3g} vs {per_small:.3g} ms per image): impossible on a CPU"
                )
            elif small.p50_ms >= COMPUTE_BOUND_MS and per_large < PER_IMAGE_GAIN_MIN * per_small:
                message = (
                    f"scaling: batch {large.batch} took {per_large / per_small:.2f}x the time per image of "
                    f"batch {small.batch}, far below what batching saves on a CPU"
                )
            elif per_large > PER_IMAGE_GROWTH_MAX * per_small:
                message = (
                    f"scaling: batch {large.batch} took {per_large / per_small:.1f}x the time per image "
                    f"of batch {small.batch}"
                )
            else:
                continue
            for i in (a, b):
                found.setdefault(i, []).append(message)
    return found


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


def describe_cell(r: BenchResult) -> str:
    """One progress line per cell (stderr), as soon as it is timed."""
    line = (
        f"{Path(r.artifact).name} {r.backend} batch {r.batch}: {r.iterations} calls in {r.timed_s:.1f} s "
        f"after {r.warmup_calls} warm-up, p50 {r.p50_ms:.3g} ms (p10 {r.p10_ms:.3g}, p90 {r.p90_ms:.3g})"
    )
    return line + (f"; others used {r.others_cpu:.0%} of the CPUs" if r.others_cpu else "")


def bench(
    artifacts: Sequence[str | os.PathLike[str]],
    plan: BenchPlan | None = None,
    *,
    arch: str | None = None,
    weights: str | None = None,
    on_cell: Callable[[BenchResult], None] | None = None,
    **options: Any,
) -> list[BenchResult]:
    """Every artifact at every batch size, on seeded random inputs (timing does not depend on them),
    each row judged (:func:`judge`). ``options`` are :class:`BenchPlan` fields, when no plan is given.

    Every timed call holds exactly its batch of distinct inputs; impossible sizes are refused first.
    """
    plan = plan or BenchPlan(**options)
    lineup = Lineup.of(artifacts, arch, weights)
    for b in plan.batches:
        check_batch(b, lineup.size, "--batch-sizes")
    rows: list[BenchResult] = []
    loads: list[LoadReport | None] = []
    for info in lineup.infos:
        started = time.perf_counter()
        with lineup.runner(
            info,
            RunnerOptions.from_provider(
                plan.provider, threads=plan.threads, cuda_graphs=plan.cuda_graphs, ov_hint=plan.ov_hint
            ),
        ) as runner:
            first = None
            for b in plan.batches:
                x = random_inputs(b, lineup.size)
                if first is None:
                    runner.infer(x)
                    first = (time.perf_counter() - started) * 1e3
                with LoadWatch() as watch:
                    if plan.warmup is None:
                        warm, settled = warm_up(runner, x)
                    else:
                        warm, settled = plan.warmup, True
                        time_runner(runner, x, warm, 0)
                    began = time.perf_counter()
                    times, device = time_runner(runner, x, 0, plan.min_calls, seconds=plan.seconds)
                    timed = time.perf_counter() - began
                row = summarize(
                    info.name,
                    runner,
                    info.precision,
                    b,
                    times,
                    device,
                    first,
                    warmup_calls=warm,
                    warmup_settled=settled,
                    timed_s=round(timed, 3),
                )
                (row,) = judge([row], plan, [watch.report])  # its own flags now, for progress
                rows.append(row)
                loads.append(watch.report)
                if on_cell:
                    on_cell(row)
    return judge([replace(r, flags=(), cause=None) for r in rows], plan, loads)


def from_dict(d: dict[str, Any]) -> BenchResult:
    return BenchResult(**(d | {"flags": tuple(d.get("flags") or ())}))


def bench_providers(
    artifacts: Sequence[str | os.PathLike[str]],
    plan: BenchPlan,
    providers: Sequence[str],
    *,
    arch: str | None = None,
    weights: str | None = None,
    on_cell: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Several providers in one table, each timed in a process of its own (two runtimes in one
    process share its threads and memory): the first runs every artifact (a provider that does not
    apply to PyTorch or an engine is refused, as always), the others the .onnx files again. Each
    process sends a line per cell as it is timed, so progress shows as it goes."""
    import json
    import subprocess
    import sys
    import tempfile

    from resnest_deploy.errors import ResnestDeployError

    if len(providers) == 1:
        return bench(
            artifacts, replace(plan, provider=providers[0]), arch=arch, weights=weights, on_cell=on_cell
        )
    rows: list[BenchResult] = []
    for k, provider in enumerate(providers):
        chosen = [os.fspath(a) for a in artifacts if k == 0 or str(a).lower().endswith(".onnx")]
        if not chosen:
            continue
        job = {
            "artifacts": chosen,
            "plan": asdict(replace(plan, provider=provider)),
            "arch": arch,
            "weights": weights,
        }
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "resnest_deploy.bench", json.dumps(job)],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            try:
                error = None
                assert proc.stdout is not None
                for line in proc.stdout:
                    message = json.loads(line)
                    if "cell" in message and on_cell:
                        on_cell(from_dict(message["cell"]))
                    elif "rows" in message:
                        rows += [from_dict(d) for d in message["rows"]]
                    elif "error" in message:
                        error = str(message["error"])
                code = proc.wait()
            finally:
                if proc.poll() is None:  # interrupted: stop our own child, by its pid
                    proc.kill()
                    proc.wait(10)
            if code:
                log.seek(0)
                tail = [ln for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
                why = error or (tail[-1] if tail else f"exit status {code}")
                raise ResnestDeployError(f"--provider {provider}: {why}")
    return rows


def _worker(argv: Sequence[str]) -> int:
    """``python -m resnest_deploy.bench JOB``: one provider's cells, a JSON line each (stdout)."""
    import json
    import sys

    from resnest_deploy.errors import ResnestDeployError

    job = json.loads(argv[0])

    def send(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    try:
        rows = bench(
            job["artifacts"],
            BenchPlan(**job["plan"]),
            arch=job["arch"],
            weights=job["weights"],
            on_cell=lambda r: send({"cell": r.as_dict()}),
        )
    except ResnestDeployError as e:
        send({"error": str(e)})
        return 1
    send({"rows": [r.as_dict() for r in rows]})
    return 0


def to_csv(results: Sequence[BenchResult]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(BenchResult.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(r.as_dict() | {"flags": "; ".join(r.flags)} for r in results)
    return buf.getvalue()


def check_plot_path(path: str | os.PathLike[str]) -> None:
    """Refuse, before any timing, a plot file whose extension matplotlib cannot write."""
    from resnest_deploy import _deps

    _deps.require("matplotlib")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ArtifactError(
            f"--plot {path}: cannot draw a {suffix or 'suffix-less'} file; end the name with one of "
            f"{', '.join('.' + f for f in sorted(formats))} (e.g. latency.png)"
        )


def plot(results: Sequence[BenchResult], path: str | os.PathLike[str]) -> Path:
    """p50 latency against batch size, one line per artifact (needs the ``plot`` extra)."""
    from resnest_deploy import _deps

    _deps.require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r.artifact for r in results):
        rows = [r for r in results if r.artifact == name]
        ax.plot(
            [r.batch for r in rows], [r.p50_ms for r in rows], marker="o", label=f"{name} ({rows[0].backend})"
        )
    ax.set(xlabel="batch size", ylabel="p50 latency (ms)", xscale="log", yscale="log")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import sys

    sys.exit(_worker(sys.argv[1:]))
