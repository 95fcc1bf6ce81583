"""`resnest-deploy zoo`: every arch measured side by side on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.cli._common import JsonOpt
from resnest_deploy.cli._console import err, out, print_json
from resnest_deploy.cli._errors import handle_errors


def _names(text: str, option: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise typer.BadParameter(f"give at least one name, e.g. {option} a,b", param_hint=option)
    return names


@handle_errors
def zoo_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the models and zoo.* results.")],
    archs: Annotated[
        str | None,
        typer.Option(help="Comma-separated archs (default: a small set; see `resnest-deploy models`)."),
    ] = None,
    all_archs: Annotated[
        bool, typer.Option("--all", help="Every registered arch (19); prints an estimate of the time first.")
    ] = False,
    precisions: Annotated[
        str, typer.Option(help="fp32, int8 (the CPU-target INT8), comma-separated.")
    ] = "fp32,int8",
    backends: Annotated[
        str, typer.Option(help="onnxruntime, openvino, comma-separated.")
    ] = "onnxruntime,openvino",
    weights: Annotated[
        str,
        typer.Option(
            "--weights", "-w", help="'random' (offline; latency does not depend on weights) or 'pretrained'."
        ),
    ] = "random",
    iterations: Annotated[int, typer.Option("--iterations", "-n", min=1, help="Timed calls per batch.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """Export, convert, check and time every arch, each backend in its own process; write zoo.md,
    zoo.csv, zoo.json and zoo.png (latency against published ImageNet top-1) under OUTPUT.

    Columns: params and multiply-accumulates counted from the exported graph beside the published
    figures (the ResNeSt authors' tables, timm's model cards; the source named), node count, parity
    against FP32, p50 at batch 1 and 8, images/s and the fraction of the CPU's peak reached.
    Resumable: a rerun into the same folder skips cells already measured for the same file on the
    same machine.

    Examples:
      resnest-deploy zoo -o zoo
      resnest-deploy zoo --archs resnest14d,resnest50 --precisions int8 --backends openvino -o zoo
      resnest-deploy zoo --all -o zoo-all
    """
    from resnest_deploy.models import list_models
    from resnest_deploy.reports.zoo import write_outputs
    from resnest_deploy.zoo import DEFAULT_ARCHS, ZooConfig, estimate_s, run_zoo

    if archs and all_archs:
        raise typer.BadParameter("give --archs or --all, not both", param_hint="--all")
    chosen = tuple(list_models()) if all_archs else (_names(archs, "--archs") if archs else DEFAULT_ARCHS)
    cfg = ZooConfig(
        archs=chosen,
        precisions=_names(precisions, "--precisions"),
        backends=_names(backends, "--backends"),
        weights=weights,
        output=output,
        iterations=iterations,
    )
    cells = len(cfg.precisions) * len(cfg.backends)
    guess = estimate_s(cfg.archs, cells, cfg.iterations)
    err.print(
        f"{len(cfg.archs)} archs x {cells} cells; rough estimate {guess / 60:.0f} min on a 2-core AVX2 CPU "
        "(cells measured before in this folder are skipped)"
    )
    result = run_zoo(cfg, say=err.print)
    written = write_outputs(result, output)
    if json_out:
        print_json(result)
        return
    out.print((output / "zoo.md").read_text())
    err.print("wrote " + ", ".join(str(p) for p in written))
