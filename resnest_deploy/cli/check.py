"""`resnest-deploy check`: every artifact against PyTorch FP32, with an exit code for CI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.cli._common import (
    ArchOptional,
    ArtifactsArg,
    ChunkOpt,
    CountOpt,
    JsonOpt,
    Provider,
    ProviderOpt,
    WeightsOptional,
)
from resnest_deploy.cli._console import metrics_table, out, print_json, styled
from resnest_deploy.cli._errors import handle_errors
from resnest_deploy.cli._progress import progress


@handle_errors
def check_cmd(
    artifacts: ArtifactsArg,
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of real images (default: seeded random inputs).")
    ] = None,
    count: CountOpt = 32,
    chunk_size: ChunkOpt = 8,
    min_cosine: Annotated[float | None, typer.Option(help="Override every precision's cosine bar.")] = None,
    min_top1: Annotated[
        float | None,
        typer.Option(
            help="Override every precision's top-1 agreement bar (0..1); a lower one lowers top-5's to it."
        ),
    ] = None,
    provider: ProviderOpt = Provider.cpu,
    reference: Annotated[
        str,
        typer.Option(
            help="Compare against PyTorch run now ('pytorch'); against the PyTorch logits recorded in the "
            "file at export ('recorded': no PyTorch needed, but it proves only that the runtime reproduces "
            "the file's own record); or against a reference kept apart from the file (REF.npz, from "
            "export --reference-out). 'auto' picks recorded only where torch is missing.",
        ),
    ] = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Compare each artifact with PyTorch FP32 on the same inputs; exit 1 if any is out of bounds.

    Bars default by precision (fp32 tight; fp16; int8 by cosine and top-1/top-5 agreement).
    The PyTorch reference uses the weights the artifact was made from unless --weights is given.

    Examples:
      resnest-deploy check models/resnest50/resnest50.onnx models/resnest50/resnest50.int8.onnx
      resnest-deploy check m.plan --images ~/val --count 200
      resnest-deploy check m.int8.onnx --reference ref.npz     # a reference kept apart from the file
    """
    from resnest_deploy.check import check
    from resnest_deploy.compare import TOLERANCES

    tolerances = {k: t.with_bars(min_cosine, min_top1) for k, t in TOLERANCES.items()}
    with progress(not json_out) as say:
        report = check(
            artifacts,
            arch=arch,
            weights=weights,
            images=images,
            count=count,
            batch=chunk_size,
            tolerances=tolerances,
            provider=provider.value,
            progress=say,
            reference_from=reference,
        )
    if json_out:
        print_json(report.as_dict())
    else:
        rows = {r.artifact: r.metrics for r in report.results}
        failures = {r.artifact: r.problems for r in report.results}
        title = f"{report.arch} ({report.weights} weights) vs PyTorch FP32, {report.inputs['kind']} inputs"
        unjudged = [r.artifact for r in report.results if not r.judged]
        out.print(metrics_table(title, rows, failures, unjudged))
        if report.note:
            out.print(styled(("note:", "yellow"), f" {report.note}"))
    if not report.passed:
        raise typer.Exit(1)
