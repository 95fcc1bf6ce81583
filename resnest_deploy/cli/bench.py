"""`resnest-deploy bench`: latency and throughput, side by side across backends."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from resnest_deploy._io import prepare_outputs
from resnest_deploy.cli._common import (
    ArchOptional,
    BatchSizesOpt,
    JsonOpt,
    OvHint,
    Provider,
    WeightsOptional,
    parse_batches,
)
from resnest_deploy.cli._console import deprecated, err, out, print_json, styled
from resnest_deploy.cli._errors import handle_errors
from resnest_deploy.limits import MAX_THREADS
from resnest_deploy.runners import TORCH_NAMES

#: what a cell is timed for when neither -t nor -n is given
DEFAULT_SECONDS = 2.0


ProvidersOpt = Annotated[
    str,
    typer.Option(
        "--provider",
        help="What runs .onnx files, comma-separated to time several in one table, each in a process of "
        "its own: ONNX Runtime on cpu, cuda or tensorrt; or OpenVINO on the CPU in f32 ('openvino') or "
        "bf16 ('openvino-bf16'). PyTorch and engines run once, with the first.",
    ),
]


def parse_providers(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    known = [p.value for p in Provider]
    unknown = [p for p in names if p not in known]
    if not names or unknown:
        raise typer.BadParameter(
            f"{', '.join(map(repr, unknown)) or repr(text)} is not one of {', '.join(known)} "
            "(several: comma-separated, e.g. cpu,openvino)",
            param_hint="--provider",
        )
    if len(set(names)) != len(names):
        raise typer.BadParameter("a provider is named twice", param_hint="--provider")
    return names


@handle_errors
def bench_cmd(
    artifacts: Annotated[
        list[str] | None, typer.Argument(help="ONNX files, engines, or 'torch' / 'torch:cuda'.")
    ] = None,
    engine: Annotated[
        list[Path] | None, typer.Option(hidden=True, help="Deprecated: give engines as arguments.")
    ] = None,
    onnx: Annotated[
        list[Path] | None, typer.Option(hidden=True, help="Deprecated: give ONNX files as arguments.")
    ] = None,
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    batch_sizes: BatchSizesOpt = "1,8",
    seconds: Annotated[
        float | None,
        typer.Option(
            "--time",
            "-t",
            min=0.01,
            max=3600,
            help="Time each cell (artifact x batch) for this many seconds, at least 10 calls (or -n), as "
            "benchmark_app -t. Default: 2 s unless -n is given.",
        ),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(
            "--iterations", "-n", min=1, help="Timed calls per cell: exactly this many (with -t: at least)."
        ),
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option(min=0, help="Untimed calls first (default: until the call time is stable)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, max=MAX_THREADS, help="Intra-op threads (default: all cores).")
    ] = None,
    cuda_graphs: Annotated[bool, typer.Option(help="Replay a CUDA graph per batch size (engines).")] = False,
    ov_hint: Annotated[
        OvHint, typer.Option(help="OpenVINO performance hint (--provider openvino*).")
    ] = OvHint.latency,
    provider: ProvidersOpt = "cpu",
    csv: Annotated[Path | None, typer.Option(help="Also write the results as CSV.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw p50 latency against batch size (PNG).")] = None,
    first_inference: Annotated[
        bool,
        typer.Option(
            help="Also time each file's first answer from a fresh process, cold (empty runtime cache) "
            "and warm (the cache the cold run filled): two more processes per file."
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Latency percentiles and throughput per artifact and batch size, side by side, each row
    checked for figures that cannot be trusted.

    Every backend is timed the same way: the whole call, host staging and copies included; engines
    add their GPU time (CUDA events) as a second column, and every artifact its first call (load
    plus one inference: a cold start). Each cell warms up until its call time is stable, then runs
    on time (-t) or a count (-n). Rows whose calls disagree (p90 far above p10, p99 far above p50),
    whose batch scaling is impossible on a CPU, or that ran while other processes used the CPUs are
    flagged (!) with the likely cause. Timing never depends on input values, so seeded random inputs
    are used. 'torch' times PyTorch eager (--arch names the model when no file does). A line per
    cell goes to stderr as it is timed.

    Examples:
      resnest-deploy bench m.onnx m.int8-cpu.onnx -t 10
      resnest-deploy bench m.int8-cpu.onnx --provider cpu,openvino --batch-sizes 1,8
      resnest-deploy bench m.plan --batch-sizes 1,8,32 --cuda-graphs
      resnest-deploy bench torch m.onnx m.int8-cpu.onnx --plot latency.png
      resnest-deploy bench torch --arch resnest50 --batch-sizes 1,8 -n 50
      resnest-deploy bench torch:cuda m.onnx --provider cuda --batch-sizes 1,8,32
      resnest-deploy bench m.int8-cpu.onnx --provider openvino --first-inference
    """
    from resnest_deploy.bench import BenchPlan, bench_providers, describe_cell, to_csv
    from resnest_deploy.bench import plot as draw

    if onnx or engine:
        deprecated("bench --onnx F / --engine F", "bench F (files as arguments, like check and eval)")
    chosen = [*(artifacts or []), *map(str, onnx or []), *map(str, engine or [])]
    if arch and not chosen:
        deprecated("bench --arch A (PyTorch implied)", "bench torch --arch A")
        chosen = ["torch"]
    if not chosen:
        raise typer.BadParameter(
            "name something to time: files, or 'torch' with --arch", param_hint="ARTIFACTS"
        )
    batches = parse_batches(batch_sizes)
    providers = parse_providers(provider)
    prepare_outputs([csv, plot], [c for c in chosen if c not in TORCH_NAMES], with_sidecar=False)
    if plot:
        from resnest_deploy.bench import check_plot_path

        check_plot_path(plot)  # fail before timing, not after
    plan = BenchPlan(
        tuple(batches),
        iterations=iterations,
        seconds=seconds if seconds is not None or iterations is not None else DEFAULT_SECONDS,
        warmup=warmup,
        threads=threads,
        cuda_graphs=cuda_graphs,
        ov_hint=ov_hint.value,
    )
    results = bench_providers(
        chosen,
        plan,
        providers,
        arch=arch,
        weights=weights,
        on_cell=lambda r: err.print(
            ("! " if r.flags else "  ") + describe_cell(r), style="dim", highlight=False
        ),
    )
    starts = _first_inferences(chosen, providers[0], not json_out) if first_inference else {}
    if csv:
        from resnest_deploy._io import atomic_path

        with atomic_path(csv) as tmp:
            tmp.write_text(to_csv(results))
    if plot:
        draw(results, plot)
    if json_out:
        print_json([r.as_dict() | _start_fields(starts.get(r.artifact)) for r in results])
        return
    gpu = any(r.device_p50_ms is not None for r in results)
    table = Table(
        title="latency (ms, whole call) and throughput" + ("; GPU: the engine alone" if gpu else ""),
        title_justify="left",
    )
    columns = ["", "artifact", "backend", "prec", "batch", "p50", "p10-p90", "p99", "img/s", "calls", "first"]
    columns += ["GPU p50"] if gpu else []
    for col in columns:
        table.add_column(
            col, justify="left" if col in ("artifact", "backend", "prec", "") else "right", overflow="fold"
        )
    notes = []
    for r in results:
        mark = ""
        if r.flags:
            notes.append(r)
            mark = f"!{len(notes)}"
        row: list[str | Text] = [
            styled((mark, "bold yellow")) if mark else "",
            Path(r.artifact).name,
            r.backend.replace("onnxruntime-", "ort-").replace("openvino-cpu-", "ov-"),
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
    out.print(table)
    out.print(
        "first: ms to load the artifact and answer its first call (a cold start); calls: timed calls",
        style="dim",
    )
    for i, r in enumerate(notes, 1):
        out.print(
            styled(
                (f"!{i} ", "bold yellow"),
                f"{Path(r.artifact).name} {r.backend} batch {r.batch}: {'; '.join(r.flags)}",
            )
        )
        if r.cause:
            out.print(f"   likely cause: {r.cause}", style="yellow")
    if starts:
        _print_starts(list(starts.values()))


def _first_inferences(chosen: list[str], provider: str, progress: bool) -> dict[str, Any]:
    from resnest_deploy.startup import measure

    files = [c for c in chosen if c not in TORCH_NAMES]
    found = {}
    for i, name in enumerate(files, 1):
        if progress:
            err.print(f"first inference {i}/{len(files)}: {Path(name).name}, cold then warm")
        found[name] = measure(name, provider)
    return found


def _start_fields(found: Any) -> dict[str, Any]:
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


def _print_starts(found: list[Any]) -> None:
    table = Table(title="first inference from a fresh process (ms, batch 1)", title_justify="left")
    for col in ("artifact", "backend", "cache", "cold", "warm", "cold open", "warm open", "speedup"):
        table.add_column(col, justify="left" if col in ("artifact", "backend", "cache") else "right")
    for f in found:
        cache = "-" if f.warm.cache is None else f"{f.warm.cache} ({'hit' if f.warm.hit else 'miss'})"
        table.add_row(
            Path(f.artifact).name,
            f.backend.replace("onnxruntime-", "ort-").replace("openvino-cpu-", "ov-"),
            cache,
            f"{f.cold.process_ms:.0f}",
            f"{f.warm.process_ms:.0f}",
            f"{f.cold.open_ms:.0f}",
            f"{f.warm.open_ms:.0f}",
            f"{f.speedup:.1f}x",
        )
    out.print(table)
    out.print(
        "cold: empty runtime cache; warm: the cache the cold process filled; each its own process. "
        "cold/warm: process start to first answer; open: opening the file to first answer.",
        style="dim",
    )
