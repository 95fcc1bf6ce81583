"""`resnest-deploy predict`: class names and probabilities through any artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnest_deploy.cli._common import (
    ArchOptional,
    JsonOpt,
    Provider,
    ProviderOpt,
    WeightsOptional,
    handle_errors,
    out,
    print_json,
    styled,
)


@handle_errors
def predict_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files (jpg, png, webp, ...).")],
    artifact: Annotated[str, typer.Option(help="An ONNX file, an engine, or 'torch'.")] = "torch",
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    topk: Annotated[int, typer.Option(min=1, help="Classes to show per image.")] = 5,
    provider: ProviderOpt = Provider.cpu,
    json_out: JsonOpt = False,
) -> None:
    """Classify images with any artifact; ImageNet class names for 1000-class models.

    Examples:
      resnest-deploy predict cat.jpg --arch resnest50
      resnest-deploy predict a.jpg b.png --artifact models/resnest50/resnest50.int8-cpu.onnx --topk 3
    """
    from resnest_deploy.predict import predict

    preds = predict(images, artifact, arch=arch, weights=weights, topk=topk, provider=provider.value)
    if json_out:
        print_json(
            [
                {"image": p.image, "top": [{"index": i, "label": n, "probability": pr} for i, n, pr in p.top]}
                for p in preds
            ]
        )
        return
    for p in preds:
        out.print(p.image, style="bold")
        for i, name, prob in p.top:
            out.print(styled(f"  {prob:7.2%}  {name} ", (f"({i})", "dim")))
