"""`resnest-deploy equalize`: the cross-layer equalized FP32 file of an export, on its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resnest_deploy.cli._common import JsonOpt
from resnest_deploy.cli._console import out, print_json
from resnest_deploy.cli._errors import handle_errors


@handle_errors
def equalize_cmd(
    src: Annotated[Path, typer.Argument(help="FP32 ONNX file from `export`.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Default: SRC with .equalized.onnx (m.equalized.onnx)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the cross-layer equalized FP32 file of an export: the same function, balanced ranges.

    For convolutions joined by ReLU (and the pools between), each channel's output range of the first
    and input range of the next are rescaled to meet (Nagel et al., ICCV 2019); exact in FP32, also
    inside split attention (one scale per channel shared by its radix branches). The residual sums
    are left alone. The logits are checked against SRC (within 1e-5 of their scale) before anything
    is written; `check` proves the file equal to PyTorch. `quantize --equalize on` does this before
    calibrating.

    Examples:
      resnest-deploy equalize models/resnest50/resnest50.onnx
      resnest-deploy equalize m.onnx -o m.equalized.onnx --json
    """
    from resnest_deploy.precision.equalize import write_equalized
    from resnest_deploy.reports.conversion import module_name as _module

    dest = output or src.with_name(f"{src.name.removesuffix('.onnx')}.equalized.onnx")
    report = write_equalized(src, dest)
    sidecar = Path(f"{dest}.json")
    record = json.loads(sidecar.read_text())["equalization"]
    if json_out:
        print_json(record | {"path": str(dest), "sidecar": str(sidecar)})
        return
    table = Table(title=f"equalized {src.name}", title_justify="left")
    for column in ("convolution", "read by", "kind", "channels", "range ratio before", "after"):
        table.add_column(
            column, justify="right" if column in ("channels", "range ratio before", "after") else "left"
        )
    for p in report.equalized:
        readers = ", ".join(_module(s) for s in p.seconds)
        table.add_row(
            ", ".join(_module(c) for c in p.producers or (p.first,)),
            readers,
            p.kind,
            str(p.channels),
            f"{p.imbalance_before:.3g}",
            f"{p.imbalance_after:.3g}",
        )
    out.print(table)
    for s in report.skipped:
        out.print(f"  left alone: {s.first}: {s.reason}")
    out.print(f"{report}; logits moved {record['relative_change']:.2g} of their scale (bar 1e-05)")
    out.print(f"wrote {dest}; metadata in {sidecar}; prove it with: resnest-deploy check {dest}")
