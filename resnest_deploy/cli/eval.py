"""`resnest-deploy eval`: accuracy of artifacts on a labelled image folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resnest_deploy.cli._common import (
    ArchOptional,
    ChunkOpt,
    JsonOpt,
    Provider,
    ProviderOpt,
    RayOpt,
    WeightsOptional,
)
from resnest_deploy.cli._console import err, out, print_json, styled
from resnest_deploy.cli._errors import handle_errors
from resnest_deploy.cli._progress import counting_bar, executor


@handle_errors
def eval_cmd(
    images: Annotated[
        Path, typer.Option(help="Labelled folder: one sub-folder per class (0, 1, ... or n01440764).")
    ],
    artifacts: Annotated[list[str] | None, typer.Argument(help="ONNX files, engines, or 'torch'.")] = None,
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    chunk_size: ChunkOpt = 16,
    provider: ProviderOpt = Provider.cpu,
    tensorrt_arithmetic: Annotated[
        bool,
        typer.Option(
            "--tensorrt-arithmetic",
            help="Run INT8 files' Q/DQ pairs as float ops, as TensorRT computes a TensorRT-target INT8 "
            "file (ONNX Runtime on the CPU), instead of the CPU's int8 kernels.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    ray_address: RayOpt = None,
) -> None:
    """Top-1 / top-5 accuracy of each artifact on your labelled images.

    With --ray the images are read, decoded and classified on a Ray cluster's workers; the counts
    are the same as here.

    Examples:
      resnest-deploy eval --images ~/imagenet/val torch m.onnx m.int8.onnx --arch resnest50
      resnest-deploy eval --images ~/imagenet/val m.int8.onnx --ray auto --json
      resnest-deploy eval --images ~/imagenet/val m.trt-int8.onnx --tensorrt-arithmetic
    """
    from resnest_deploy.evaluate import evaluate
    from resnest_deploy.runners.options import RunnerOptions

    with (
        executor(ray_address) as chosen,
        counting_bar("reading images", not json_out and not ray_address) as (on_total, advance),
    ):
        results, described = evaluate(
            artifacts or ["torch"],
            images,
            arch=arch,
            weights=weights,
            options=RunnerOptions.from_provider(
                provider.value, batch=chunk_size, fake_quant=tensorrt_arithmetic
            ),
            advance=advance,
            on_total=on_total,
            executor=chosen,
        )
    if json_out:
        print_json({"images": described, "results": [r.as_dict() for r in results]})
        return
    table = Table(title=f"accuracy on {described['images']} images in {images}", title_justify="left")
    for col in ("artifact", "backend", "precision", "top-1", "top-5"):
        table.add_column(col, justify="right" if col.startswith("top") else "left", overflow="fold")
    for r in results:
        table.add_row(Path(r.artifact).name, r.backend, r.precision, f"{r.top1:.2%}", f"{r.top5:.2%}")
    out.print(table)
    if described.get("note"):
        out.print(styled(("note:", "yellow"), f" {described['note']}"))
    if described["skipped"]:
        err.print(
            styled(
                (f"skipped {len(described['skipped'])} unreadable file(s)", "yellow"),
                f", e.g. {described['skipped'][0]}",
            )
        )
