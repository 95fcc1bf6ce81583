"""`resnest-deploy bench`: latency and throughput, side by side across backends."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

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

if TYPE_CHECKING:
    from resnest_deploy.bench import BenchResult
    from resnest_deploy.startup import FirstInference

#: what a cell is timed for when neither -t nor -n is given
DEFAULT_SECONDS = 2.0

# --- options (bench's own; the shared ones come from _common) ------------------------------------

BenchArtifacts = Annotated[
    list[str] | None, typer.Argument(help="ONNX files, engines, or 'torch' / 'torch:cuda'.")
]
OldEngines = Annotated[
    list[Path] | None, typer.Option("--engine", hidden=True, help="Deprecated: give engines as arguments.")
]
OldOnnx = Annotated[
    list[Path] | None, typer.Option("--onnx", hidden=True, help="Deprecated: give ONNX files as arguments.")
]
SecondsOpt = Annotated[
    float | None,
    typer.Option(
        "--time",
        "-t",
        min=0.01,
        max=3600,
        help="Time each cell (artifact x batch) for this many seconds, at least 10 calls (or -n), as "
        "benchmark_app -t. Default: 2 s unless -n is given.",
    ),
]
IterationsOpt = Annotated[
    int | None,
    typer.Option(
        "--iterations", "-n", min=1, help="Timed calls per cell: exactly this many (with -t: at least)."
    ),
]
WarmupOpt = Annotated[
    int | None,
    typer.Option("--warmup", min=0, help="Untimed calls first (default: until the call time is stable)."),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, max=MAX_THREADS, help="Intra-op threads (default: all cores)."),
]
CudaGraphsOpt = Annotated[
    bool, typer.Option("--cuda-graphs/--no-cuda-graphs", help="Replay a CUDA graph per batch size (engines).")
]
OvHintOpt = Annotated[
    OvHint, typer.Option("--ov-hint", help="OpenVINO performance hint (--provider openvino*).")
]
ProvidersOpt = Annotated[
    str,
    typer.Option(
        "--provider",
        help="What runs .onnx files, comma-separated to time several in one table, each in a process of "
        "its own: ONNX Runtime on cpu, cuda or tensorrt; or OpenVINO on the CPU in f32 ('openvino') or "
        "bf16 ('openvino-bf16'). PyTorch and engines run once, with the first.",
    ),
]
CsvOpt = Annotated[Path | None, typer.Option("--csv", help="Also write the results as CSV.")]
PlotOpt = Annotated[
    Path | None, typer.Option("--plot", help="Also draw p50 latency against batch size (PNG).")
]
FirstInferenceOpt = Annotated[
    bool,
    typer.Option(
        "--first-inference/--no-first-inference",
        help="Also time each file's first answer from a fresh process, cold (empty runtime cache) "
        "and warm (the cache the cold run filled): two more processes per file.",
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
    artifacts: BenchArtifacts = None,
    engine: OldEngines = None,
    onnx: OldOnnx = None,
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    batch_sizes: BatchSizesOpt = "1,8",
    seconds: SecondsOpt = None,
    iterations: IterationsOpt = None,
    warmup: WarmupOpt = None,
    threads: ThreadsOpt = None,
    cuda_graphs: CudaGraphsOpt = False,
    ov_hint: OvHintOpt = OvHint.latency,
    provider: ProvidersOpt = "cpu",
    csv: CsvOpt = None,
    plot: PlotOpt = None,
    first_inference: FirstInferenceOpt = False,
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
    from resnest_deploy.bench import BenchPlan, bench_providers
    from resnest_deploy.reports import bench as report

    chosen = _chosen(artifacts, onnx, engine, arch)
    batches = parse_batches(batch_sizes)
    providers = parse_providers(provider)
    prepare_outputs([csv, plot], [c for c in chosen if c not in TORCH_NAMES], with_sidecar=False)
    if plot:
        report.check_plot_path(plot)  # fail before timing, not after
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
        on_cell=lambda r: err.print(report.progress_line(r), style="dim", highlight=False),
    )
    starts = _first_inferences(chosen, providers[0], not json_out) if first_inference else {}
    if csv:
        report.write_csv(results, csv)
    if plot:
        report.plot(results, plot)
    if json_out:
        print_json(report.json_rows(results, starts))
    else:
        _print_tables(results, list(starts.values()))


def _chosen(
    artifacts: list[str] | None, onnx: list[Path] | None, engine: list[Path] | None, arch: str | None
) -> list[str]:
    """What to time: the arguments, and the deprecated spellings (each said once on stderr)."""
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
    return chosen


def _first_inferences(chosen: list[str], provider: str, progress: bool) -> dict[str, FirstInference]:
    from resnest_deploy.startup import measure

    files = [c for c in chosen if c not in TORCH_NAMES]
    found = {}
    for i, name in enumerate(files, 1):
        if progress:
            err.print(f"first inference {i}/{len(files)}: {Path(name).name}, cold then warm")
        found[name] = measure(name, provider)
    return found


def _print_tables(results: list[BenchResult], starts: list[FirstInference]) -> None:
    from resnest_deploy.reports import bench as report

    out.print(report.latency_table(results))
    out.print(report.LEGEND, style="dim")
    for note in report.notes(results):
        out.print(styled((f"{note.mark} ", report.MARK_STYLE), note.text))
        if note.cause:
            out.print(f"   likely cause: {note.cause}", style="yellow")
    if starts:
        out.print(report.starts_table(starts))
        out.print(report.STARTS_LEGEND, style="dim")
