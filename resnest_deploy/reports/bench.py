"""What a user reads of bench rows: the latency table and its notes, the first-inference table, the
progress line per cell, ``--json`` rows, CSV and the latency chart.

Cells and notes are plain strings: the CLI's console escapes what it prints (artifact names are
untrusted text), and styles only the marks.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from resnest_deploy._io import atomic_path
from resnest_deploy.bench.result import BenchResult
from resnest_deploy.errors import ArtifactError

if TYPE_CHECKING:
    from resnest_deploy.startup import FirstInference

MARK_STYLE = "bold yellow"
LEGEND = "first: ms to load the artifact and answer its first call (a cold start); calls: timed calls"
STARTS_LEGEND = (
    "cold: empty runtime cache; warm: the cache the cold process filled; each its own process. "
    "cold/warm: process start to first answer; open: opening the file to first answer."
)
_COLUMNS = ("", "artifact", "backend", "prec", "batch", "p50", "p10-p90", "p99", "img/s", "calls", "first")
_LEFT = ("artifact", "backend", "prec", "", "cache")


@dataclass(frozen=True)
class Note:
    """Why a flagged row cannot be trusted: its mark in the table (``!1``), its flags, their cause."""

    mark: str
    text: str
    cause: str | None


def short_backend(backend: str) -> str:
    return backend.replace("onnxruntime-", "ort-").replace("openvino-cpu-", "ov-")


def describe_cell(r: BenchResult) -> str:
    """One progress line per cell (stderr), as soon as it is timed."""
    line = (
        f"{Path(r.artifact).name} {r.backend} batch {r.batch}: {r.iterations} calls in {r.timed_s:.1f} s "
        f"after {r.warmup_calls} warm-up, p50 {r.p50_ms:.3g} ms (p10 {r.p10_ms:.3g}, p90 {r.p90_ms:.3g})"
    )
    return line + (f"; others used {r.others_cpu:.0%} of the CPUs" if r.others_cpu else "")


def progress_line(r: BenchResult) -> str:
    """:func:`describe_cell`, marked ``!`` when the row is flagged."""
    return ("! " if r.flags else "  ") + describe_cell(r)


def notes(results: Sequence[BenchResult]) -> list[Note]:
    """A note per flagged row, numbered as the table marks them."""
    flagged = [r for r in results if r.flags]
    return [
        Note(f"!{i}", f"{Path(r.artifact).name} {r.backend} batch {r.batch}: {'; '.join(r.flags)}", r.cause)
        for i, r in enumerate(flagged, 1)
    ]


def latency_table(results: Sequence[BenchResult]) -> Table:
    """Latency percentiles and throughput, a row per cell; flagged rows marked ``!n`` (see
    :func:`notes`); the engine's GPU p50 as a last column where any row has one."""
    gpu = any(r.device_p50_ms is not None for r in results)
    table = Table(
        title="latency (ms, whole call) and throughput" + ("; GPU: the engine alone" if gpu else ""),
        title_justify="left",
    )
    for col in (*_COLUMNS, *(["GPU p50"] if gpu else [])):
        table.add_column(col, justify="left" if col in _LEFT else "right", overflow="fold")
    marked = 0
    for r in results:
        mark: str | Text = ""
        if r.flags:
            marked += 1
            mark = Text(f"!{marked}", style=MARK_STYLE)
        row: list[str | Text] = [
            mark,
            Path(r.artifact).name,
            short_backend(r.backend),
            r.precision,
            str(r.batch),
            f"{r.p50_ms:.2f}",
            f"{r.p10_ms:.2f}-{r.p90_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.images_per_s:.1f}",
            str(r.iterations),
            f"{r.first_call_ms:.0f}",
        ]
        if gpu:
            row.append("-" if r.device_p50_ms is None else f"{r.device_p50_ms:.2f}")
        table.add_row(*row)
    return table


def starts_table(found: Sequence[FirstInference]) -> Table:
    """First inference from a fresh process, cold and warm, a row per file."""
    table = Table(title="first inference from a fresh process (ms, batch 1)", title_justify="left")
    for col in ("artifact", "backend", "cache", "cold", "warm", "cold open", "warm open", "speedup"):
        table.add_column(col, justify="left" if col in _LEFT else "right")
    for f in found:
        cache = "-" if f.warm.cache is None else f"{f.warm.cache} ({'hit' if f.warm.hit else 'miss'})"
        table.add_row(
            Path(f.artifact).name,
            short_backend(f.backend),
            cache,
            f"{f.cold.process_ms:.0f}",
            f"{f.warm.process_ms:.0f}",
            f"{f.cold.open_ms:.0f}",
            f"{f.warm.open_ms:.0f}",
            f"{f.speedup:.1f}x",
        )
    return table


def json_rows(
    results: Sequence[BenchResult], starts: Mapping[str, FirstInference] | None = None
) -> list[dict[str, Any]]:
    """``--json``: a row per cell, with its file's first-inference figures where they were measured."""
    starts = starts or {}
    return [r.as_dict() | _start_fields(starts.get(r.artifact)) for r in results]


def _start_fields(found: FirstInference | None) -> dict[str, Any]:
    if found is None:
        return {}
    return {
        "first_cold_ms": found.cold.process_ms,
        "first_warm_ms": found.warm.process_ms,
        "first_cold_open_ms": found.cold.open_ms,
        "first_warm_open_ms": found.warm.open_ms,
        "first_cache": found.warm.cache,
        "first_warm_hit": found.warm.hit,
    }


def to_csv(results: Sequence[BenchResult]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(BenchResult.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(r.as_dict() | {"flags": "; ".join(r.flags)} for r in results)
    return buf.getvalue()


def write_csv(results: Sequence[BenchResult], path: str | os.PathLike[str]) -> Path:
    """:func:`to_csv` into ``path``, whole or not at all."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(to_csv(results))
    return path


def check_plot_path(path: str | os.PathLike[str]) -> None:
    """Refuse, before any timing, a plot file whose extension matplotlib cannot write."""
    from resnest_deploy import _deps

    _deps.require("matplotlib")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ArtifactError(
            f"{{plot}} {path}: cannot draw a {suffix or 'suffix-less'} file; end the name with one of "
            f"{', '.join('.' + f for f in sorted(formats))} (e.g. latency.png)",
            param="plot",
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
