"""`resnest-deploy export`: PyTorch weights to a parity-checked ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from resnest_deploy import _deps
from resnest_deploy.cli._common import ArchOpt, InputFormat, JsonOpt, OutputOpt, WeightsOpt, default_path
from resnest_deploy.cli._console import out, print_json
from resnest_deploy.cli._errors import handle_errors
from resnest_deploy.cli._progress import progress
from resnest_deploy.formats import DEFAULT_OPSET
from resnest_deploy.limits import MAX_BATCH, check_positive

if TYPE_CHECKING:
    from resnest_deploy.export import ExportReport


def _batch_dim(value: str) -> int | str:
    if value == "dynamic":
        return value
    try:
        return check_positive(int(value), "--batch-dim", maximum=MAX_BATCH)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither 'dynamic' nor a batch size from 1 to {MAX_BATCH}", param_hint="--batch-dim"
        ) from None


InputFormatOpt = Annotated[
    InputFormat,
    typer.Option(
        "--input-format",
        help="What the file takes: 'float' (normalised NCHW, as the eval transform gives), "
        "'uint8-nhwc' / 'uint8-nchw' (raw RGB camera frames; normalised in the graph), or "
        "'deepstream' (x/255 - mean, as nvinfer feeds it; 1/std folded into the first conv).",
    ),
]
ReferenceOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--reference-out",
        help="Also save the PyTorch reference outputs to REF.npz, to keep apart from the file "
        "(check --reference REF.npz then proves the file still computes what its weights did).",
    ),
]


def _check_reference_out(reference_out: Path | None, destination: Path) -> None:
    """Before any work: the kept-apart reference is an .npz file that spares the export."""
    if reference_out is None:
        return
    from resnest_deploy._io import prepare_outputs

    if reference_out.suffix != ".npz":
        raise typer.BadParameter("the reference file must end in .npz", param_hint="--reference-out")
    prepare_outputs([reference_out], [destination], with_sidecar=False)


@handle_errors
def export_cmd(
    arch: ArchOpt,
    weights: WeightsOpt = "pretrained",
    output: OutputOpt = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (13..20).")] = DEFAULT_OPSET,
    batch_dim: Annotated[
        str, typer.Option("--batch-dim", help="The file's batch dimension: 'dynamic' or a fixed size.")
    ] = "dynamic",
    input_size: Annotated[
        tuple[int, int] | None, typer.Option("--input-size", help="H W; default: the arch's eval size.")
    ] = None,
    dynamic_hw: Annotated[
        bool, typer.Option("--dynamic-hw", help="Also leave height and width free.")
    ] = False,
    input_format: InputFormatOpt = InputFormat.float,
    simplify: Annotated[bool, typer.Option(help="Fold batch norms/constants, drop Identity nodes.")] = True,
    reference_out: ReferenceOutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Export a ResNeSt to ONNX and prove it matches PyTorch in ONNX Runtime.

    Writes OUT.onnx and OUT.onnx.json (arch, weights sha256, preprocessing, parity figures). The
    export fails, leaving no file, if ONNX Runtime differs from PyTorch by more than 1e-4 of the
    logit scale.

    Examples:
      resnest-deploy export --arch resnest50
      resnest-deploy export --arch resnest50 --input-format uint8-nhwc -o r50.frames.onnx
      resnest-deploy export --arch resnest50 --input-format deepstream -o r50.ds.onnx
      resnest-deploy export --arch resnest14d --weights random --input-size 200 232 --dynamic-hw -o m.onnx
    """
    _deps.require("torch")  # the `export` extra: say so instead of failing on an import
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    dim = _batch_dim(batch_dim)
    destination = output or default_path(arch, f"{arch}.onnx")
    _check_reference_out(reference_out, destination)
    with progress(not json_out) as say:
        say(f"loading {arch} ({weights} weights)")
        model, info = load_model(arch, weights)
        report = export_onnx(
            model,
            destination,
            opset=opset,
            batch=dim,
            input_size=input_size,
            dynamic_hw=dynamic_hw,
            input_format=input_format.value,
            simplify=simplify,
            weights=info,
            progress=say,
        )
        if reference_out is not None:
            from resnest_deploy import reference

            reference.save(reference_out, report.metadata)
            say(f"reference outputs saved to {reference_out}")
    if json_out:
        print_json(report.as_dict())
    else:
        print_report(report)


def print_report(r: ExportReport) -> None:
    table = Table(title=f"{r.arch} -> {r.path}", show_header=True)
    for col in ("check", "max abs err", "cosine", "top-1", "top-5"):
        table.add_column(col)
    for key, m in r.parity.items():
        table.add_row(
            f"onnxruntime vs torch, {key}",
            f"{m.max_abs:.2e}",
            f"{m.cosine:.7f}",
            f"{m.top1:.0%}",
            f"{m.top5:.0%}",
        )
    out.print(table)
    shape = "x".join(map(str, r.input_shape))
    out.print(
        f"opset {r.opset}, input {shape}, {r.nodes} nodes, {r.size_bytes / 2**20:.1f} MiB, "
        f"{r.seconds:.1f} s; metadata in {r.sidecar}"
    )
