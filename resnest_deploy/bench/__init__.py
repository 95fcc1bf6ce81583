"""How fast: latency percentiles and throughput per artifact and batch size, in one run.

One module per concern: ``plan`` (what is timed and how: :class:`BenchPlan`), ``result`` (one row:
:class:`BenchResult`, and its serialisation for the worker process and ``--json``), ``loop`` (the
timing loop: warm-up, timed calls, a row from them, :func:`bench`), ``judge`` (which rows cannot be
trusted, and the likely cause), ``providers`` (several providers, each timed in a process of its
own). What a user reads of the rows (tables, CSV, charts) is rendered in :mod:`resnest_deploy.reports.bench`.
"""

from resnest_deploy.bench.judge import judge, likely_cause, row_flags, scaling_flags
from resnest_deploy.bench.loop import bench, summarize, time_runner, warm_up
from resnest_deploy.bench.plan import BenchPlan
from resnest_deploy.bench.providers import bench_providers
from resnest_deploy.bench.result import BenchResult

__all__ = [
    "BenchPlan",
    "BenchResult",
    "bench",
    "bench_providers",
    "judge",
    "likely_cause",
    "row_flags",
    "scaling_flags",
    "summarize",
    "time_runner",
    "warm_up",
]
