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
    deprecated,
    err,
    handle_errors,
    out,
    print_json,
    styled,
)


def _is_artifact(name: str) -> bool:
    from resnest_deploy.runners import ENGINE_SUFFIXES, TORCH_NAMES

    return name in TORCH_NAMES or Path(name).suffix.lower() in (".onnx", *ENGINE_SUFFIXES)


@handle_errors
def predict_cmd(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="The artifact (an ONNX file, an engine, or 'torch') and then the image files; "
            "like check, eval and bench, the artifact comes first."
        ),
    ],
    artifact: Annotated[
        str | None, typer.Option(hidden=True, help="Deprecated: give the artifact first instead.")
    ] = None,
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    topk: Annotated[int, typer.Option(min=1, max=1000, help="Classes to show per image.")] = 5,
    provider: ProviderOpt = Provider.cpu,
    json_out: JsonOpt = False,
) -> None:
    """Classify images with any artifact; ImageNet class names for 1000-class models.

    Examples:
      resnest-deploy predict torch cat.jpg --arch resnest50
      resnest-deploy predict models/resnest50/resnest50.int8-cpu.onnx a.jpg b.png --topk 3
    """
    if artifact is not None:
        deprecated("predict IMAGES --artifact A", "predict A IMAGES")
        chosen, images = artifact, inputs
    elif _is_artifact(inputs[0]):
        chosen, images = inputs[0], inputs[1:]
    else:
        deprecated("predict IMAGES (PyTorch implied)", "predict torch IMAGES")
        chosen, images = "torch", inputs
    if not images:
        raise typer.BadParameter("give at least one image after the artifact", param_hint="INPUTS")
    from resnest_deploy.predict import predict

    preds = predict(
        [Path(i) for i in images], chosen, arch=arch, weights=weights, topk=topk, provider=provider.value
    )
    from resnest_deploy.artifacts import weights_note

    note = weights_note([chosen], weights)
    if json_out:
        print_json(
            [
                {"image": p.image, "top": [{"index": i, "label": n, "probability": pr} for i, n, pr in p.top]}
                for p in preds
            ]
        )
        if note:  # the JSON stays a list of predictions; the note goes where a person reads it
            err.print(styled(("note:", "yellow"), f" {note}"))
        return
    for p in preds:
        out.print(p.image, style="bold")
        for i, name, prob in p.top:
            out.print(styled(f"  {prob:7.2%}  {name} ", (f"({i})", "dim")))
    if note:
        out.print(styled(("note:", "yellow"), f" {note}"))
