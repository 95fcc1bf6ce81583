"""`resnest-deploy deepstream`: an nvinfer config (and labels) for an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.cli._common import JsonOpt
from resnest_deploy.cli._console import out, print_json
from resnest_deploy.cli._errors import handle_errors


@handle_errors
def deepstream_cmd(
    artifact: Annotated[Path, typer.Argument(help="An .onnx file, or a .plan built by full TensorRT.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Config path; default config_infer_<stem>.txt beside the file."),
    ] = None,
    process_mode: Annotated[
        int, typer.Option(min=1, max=2, help="1: classify whole frames (primary), 2: objects (secondary).")
    ] = 1,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Default: the engine profile's maximum, or the export's batch.")
    ] = None,
    gie_unique_id: Annotated[int, typer.Option(min=1, help="gie-unique-id of this nvinfer.")] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Write a DeepStream nvinfer config for a classifier, with exact normalisation.

    net-scale-factor and offsets reproduce what the file expects. Files exported with
    --input-format deepstream always qualify; the default float form only if its std is one number
    for all channels (the digits model), since nvinfer has a single scale. nvinfer resizes the
    frame or object to infer-dims without a centre crop.

    Examples:
      resnest-deploy export --arch resnest50 --input-format deepstream -o r50.onnx
      resnest-deploy deepstream r50.onnx --process-mode 2
    """
    from resnest_deploy.deepstream import write

    config, labels, cfg = write(
        artifact, output, process_mode=process_mode, batch_size=batch_size, gie_unique_id=gie_unique_id
    )
    if json_out:
        print_json({"config": str(config), "labels": str(labels), "properties": cfg.properties})
        return
    out.print(f"wrote {config} and {labels} ({len(cfg.labels)} labels)")
    out.print(cfg.text(), highlight=False, markup=False)
