"""`check`, `bench`, `predict`, `eval`: run artifacts side by side through one runner interface."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resnest_deploy.cli._common import (
    JsonOpt,
    counting_bar,
    err,
    handle_errors,
    metrics_table,
    out,
    print_json,
    progress,
)

ArtifactsArg = Annotated[
    list[str], typer.Argument(help="ONNX files (any precision), engines (.plan), or 'torch' / 'torch:cuda'.")
]
ArchOptional = Annotated[
    str | None, typer.Option("--arch", "-a", help="Default: the arch the artifacts record.")
]
WeightsOptional = Annotated[
    str | None, typer.Option("--weights", "-w", help="Default: the weights the artifacts record.")
]
ProviderOpt = Annotated[
    str, typer.Option(help="ONNX Runtime provider for .onnx files: cpu, cuda or tensorrt.")
]


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a comma-separated list of batch sizes, e.g. 1,8,32"
        ) from None
    if not values or min(values) < 1:
        raise typer.BadParameter("batch sizes must be positive, e.g. 1,8,32")
    return values


@handle_errors
def check_cmd(
    artifacts: ArtifactsArg,
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of real images (default: seeded random inputs).")
    ] = None,
    count: Annotated[int, typer.Option(help="How many inputs.")] = 32,
    batch: Annotated[int, typer.Option(help="Batch size to run them in.")] = 8,
    min_cosine: Annotated[float | None, typer.Option(help="Override every precision's cosine bar.")] = None,
    min_top1: Annotated[
        float | None, typer.Option(help="Override every precision's top-1 agreement bar (0..1).")
    ] = None,
    provider: ProviderOpt = "cpu",
    json_out: JsonOpt = False,
) -> None:
    """Compare each artifact with PyTorch FP32 on the same inputs; exit 1 if any is out of bounds.

    Bars default by precision (fp32 tight; fp16; int8 by cosine and top-1/top-5 agreement).
    The PyTorch reference uses the weights the artifact was made from unless --weights is given.

    Examples:
      resnest-deploy check models/resnest50/resnest50.onnx models/resnest50/resnest50.int8.onnx
      resnest-deploy check m.plan --images ~/val --count 200
    """
    import dataclasses

    from resnest_deploy.check import check
    from resnest_deploy.compare import TOLERANCES

    tolerances = {
        k: dataclasses.replace(
            t,
            cosine=t.cosine if min_cosine is None else min_cosine,
            top1=t.top1 if min_top1 is None else min_top1,
        )
        for k, t in TOLERANCES.items()
    }
    with progress(not json_out) as say:
        report = check(
            artifacts,
            arch=arch,
            weights=weights,
            images=images,
            count=count,
            batch=batch,
            tolerances=tolerances,
            provider=provider,
            progress=say,
        )
    if json_out:
        print_json(report.as_dict())
    else:
        rows = {r.artifact: r.metrics for r in report.results}
        failures = {r.artifact: r.problems for r in report.results}
        title = f"{report.arch} ({report.weights} weights) vs PyTorch FP32, {report.inputs['kind']} inputs"
        out.print(metrics_table(title, rows, failures))
    if not report.passed:
        raise typer.Exit(1)


@handle_errors
def bench_cmd(
    artifacts: Annotated[
        list[str] | None, typer.Argument(help="ONNX files, engines, or 'torch' / 'torch:cuda'.")
    ] = None,
    engine: Annotated[list[Path] | None, typer.Option(help="A TensorRT engine (repeatable).")] = None,
    onnx: Annotated[list[Path] | None, typer.Option(help="An ONNX file (repeatable).")] = None,
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    torch_: Annotated[
        bool, typer.Option("--torch", help="Also time PyTorch eager (needs --arch or an artifact).")
    ] = False,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8",
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 5,
    iterations: Annotated[int, typer.Option("--iterations", "-n", help="Timed calls per batch size.")] = 20,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime intra-op threads (default: all cores).")
    ] = None,
    cuda_graphs: Annotated[bool, typer.Option(help="Replay a CUDA graph per batch size (engines).")] = False,
    provider: ProviderOpt = "cpu",
    csv: Annotated[Path | None, typer.Option(help="Also write the results as CSV.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw p50 latency against batch size (PNG).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Latency percentiles and throughput per artifact and batch size, side by side.

    Engines are timed with CUDA events around execute_async_v3 (no Polygraphy per-call overhead),
    everything else with the host clock around one call. Timing never depends on input values,
    so seeded random inputs are used.

    Examples:
      resnest-deploy bench --engine m.plan --batch 1,8,32 --cuda-graphs
      resnest-deploy bench torch m.onnx m.int8-cpu.onnx --batch 1,8 --plot latency.png
    """
    from resnest_deploy.bench import bench, to_csv
    from resnest_deploy.bench import plot as draw

    chosen = [*(artifacts or []), *map(str, onnx or []), *map(str, engine or [])]
    if torch_:
        chosen.insert(0, "torch")
    if not chosen:
        raise typer.BadParameter("name something to time: --engine, --onnx, 'torch' or file arguments")
    batches = _batches(batch)
    if plot:
        from resnest_deploy import _deps

        _deps.require("matplotlib")  # fail before timing, not after
    with counting_bar("timing", not json_out) as (on_total, advance):
        results = bench(
            chosen,
            arch=arch,
            weights=weights,
            batches=batches,
            warmup=warmup,
            iterations=iterations,
            provider=provider,
            threads=threads,
            cuda_graphs=cuda_graphs,
            advance=advance,
            on_total=on_total,
        )
    if csv:
        from resnest_deploy._io import atomic_path

        with atomic_path(csv) as tmp:
            tmp.write_text(to_csv(results))
    if plot:
        draw(results, plot)
    if json_out:
        print_json([r.as_dict() for r in results])
        return
    table = Table(title="latency (ms) and throughput", title_justify="left")
    for col in ("artifact", "backend", "precision", "batch", "p50", "p90", "p99", "images/s", "timer"):
        table.add_column(
            col, justify="left" if col in ("artifact", "backend", "precision", "timer") else "right"
        )
    for r in results:
        table.add_row(
            Path(r.artifact).name,
            r.backend,
            r.precision,
            str(r.batch),
            f"{r.p50_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.images_per_s:.1f}",
            r.timer,
        )
    out.print(table)


@handle_errors
def predict_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files (jpg, png, webp, ...).")],
    artifact: Annotated[str, typer.Option(help="An ONNX file, an engine, or 'torch'.")] = "torch",
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    topk: Annotated[int, typer.Option(help="Classes to show per image.")] = 5,
    provider: ProviderOpt = "cpu",
    json_out: JsonOpt = False,
) -> None:
    """Classify images with any artifact; ImageNet class names for 1000-class models.

    Examples:
      resnest-deploy predict cat.jpg --arch resnest50
      resnest-deploy predict a.jpg b.png --artifact models/resnest50/resnest50.int8-cpu.onnx --topk 3
    """
    from resnest_deploy.predict import predict

    preds = predict(images, artifact, arch=arch, weights=weights, topk=topk, provider=provider)
    if json_out:
        print_json(
            [
                {"image": p.image, "top": [{"index": i, "label": n, "probability": pr} for i, n, pr in p.top]}
                for p in preds
            ]
        )
        return
    for p in preds:
        out.print(f"[bold]{p.image}[/]")
        for i, name, prob in p.top:
            out.print(f"  {prob:7.2%}  {name} [dim]({i})[/]")


@handle_errors
def eval_cmd(
    images: Annotated[
        Path, typer.Option(help="Labelled folder: one sub-folder per class (0, 1, ... or n01440764).")
    ],
    artifacts: Annotated[list[str] | None, typer.Argument(help="ONNX files, engines, or 'torch'.")] = None,
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 16,
    provider: ProviderOpt = "cpu",
    json_out: JsonOpt = False,
) -> None:
    """Top-1 / top-5 accuracy of each artifact on your labelled images.

    Examples:
      resnest-deploy eval --images ~/imagenet/val torch m.onnx m.int8.onnx --arch resnest50
    """
    from resnest_deploy.evaluate import evaluate

    with counting_bar("reading images", not json_out) as (on_total, advance):
        results, described = evaluate(
            artifacts or ["torch"],
            images,
            arch=arch,
            weights=weights,
            batch=batch,
            provider=provider,
            advance=advance,
            on_total=on_total,
        )
    if json_out:
        print_json({"images": described, "results": [r.as_dict() for r in results]})
        return
    table = Table(title=f"accuracy on {described['images']} images in {images}", title_justify="left")
    for col in ("artifact", "backend", "precision", "top-1", "top-5"):
        table.add_column(col, justify="right" if col.startswith("top") else "left")
    for r in results:
        table.add_row(Path(r.artifact).name, r.backend, r.precision, f"{r.top1:.2%}", f"{r.top5:.2%}")
    out.print(table)
    if described["skipped"]:
        err.print(
            f"[yellow]skipped {len(described['skipped'])} unreadable file(s)[/], "
            f"e.g. {described['skipped'][0]}"
        )
