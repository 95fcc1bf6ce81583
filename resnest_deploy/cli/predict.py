"""`resnest-deploy predict`: class names and probabilities through any artifact."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from resnest_deploy.cli._common import ArchOptional, JsonOpt, Provider, ProviderOpt, RayOpt, WeightsOptional
from resnest_deploy.cli._console import deprecated, err, out, print_json, styled
from resnest_deploy.cli._errors import handle_errors
from resnest_deploy.cli._progress import executor, ray_typed

if TYPE_CHECKING:
    from resnest_deploy.predict import Prediction


def _is_artifact(name: str) -> bool:
    from resnest_deploy.runners import ENGINE_SUFFIXES, TORCH_NAMES

    return name in TORCH_NAMES or Path(name).suffix.lower() in (".onnx", *ENGINE_SUFFIXES)


InputsArg = Annotated[
    list[str],
    typer.Argument(
        help="The artifact (an ONNX file, an engine, or 'torch') and then image files or folders "
        "(every image under them); like check, eval and bench, the artifact comes first."
    ),
]
ServerOpt = Annotated[
    str | None,
    typer.Option(
        help="Ask a served model instead (`serve`, or any Triton serving a resnest-deploy "
        "repository): http://HOST:PORT or grpc://HOST:PORT. Then every argument is an image.",
    ),
]
ServedModelOpt = Annotated[
    str | None,
    typer.Option(
        help="The served model's name (with --server; `serve` prints it as 'serving NAME'). Without "
        "it, the server's only model, where the server lists its models (serve does not).",
    ),
]
RowsOutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Write one row per image (path, classes, labels, probabilities) to a .jsonl or "
        ".parquet file instead of printing; with --ray, a folder of part files by that name.",
    ),
]


def _refuse_local_options(
    output: Path | None,
    ray_address: str | None,
    artifact: str | None,
    weights: str | None,
    provider: Provider,
) -> None:
    """With --server the server runs the model: options that choose what runs here are refused."""
    if output is not None or ray_typed(ray_address):
        raise typer.BadParameter(
            "-o and --ray run the model here or on a cluster; with --server the server runs it",
            param_hint="--server",
        )
    if artifact is not None or weights is not None or provider is not Provider.cpu:
        raise typer.BadParameter(
            "--artifact, --weights and --provider choose what runs locally; the server runs its own model",
            param_hint="--server",
        )


def _artifact_and_images(inputs: list[str], artifact: str | None) -> tuple[str, list[str]]:
    """The artifact and the images, from the arguments (artifact first) or the old spellings."""
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
    return chosen, images


@handle_errors
def predict_cmd(
    inputs: InputsArg,
    artifact: Annotated[
        str | None, typer.Option(hidden=True, help="Deprecated: give the artifact first instead.")
    ] = None,
    arch: ArchOptional = None,
    weights: WeightsOptional = None,
    topk: Annotated[int, typer.Option(min=1, max=1000, help="Classes to show per image.")] = 5,
    provider: ProviderOpt = Provider.cpu,
    server: ServerOpt = None,
    model: ServedModelOpt = None,
    json_out: JsonOpt = False,
    output: RowsOutputOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Classify images (files, or folders of them) with any artifact, or with a served model;
    ImageNet class names for 1000-class models.

    With --server, images are preprocessed as the served model's config records (resize, crop,
    normalise, input form), sent over HTTP or gRPC (Triton's protocol), and the answer printed as a
    local predict prints it.

    Examples:
      resnest-deploy predict torch cat.jpg --arch resnest50
      resnest-deploy predict models/resnest50/resnest50.int8-cpu.onnx a.jpg b.png --topk 3
      resnest-deploy predict m.int8-cpu.onnx photos/ -o tags.parquet --ray auto
      resnest-deploy predict --server http://127.0.0.1:8000 --model resnest50 cat.jpg
      resnest-deploy predict --server grpc://127.0.0.1:8001 --model resnest50 photos/ --json
      resnest-deploy predict models/resnest50/resnest50.onnx photos/
    """
    if server is not None:
        _refuse_local_options(output, ray_address, artifact, weights, provider)
        _predict_served(inputs, server, model, arch, topk, json_out)
        return
    if model is not None:
        raise typer.BadParameter("--model names a served model; give --server too", param_hint="--model")
    chosen, images = _artifact_and_images(inputs, artifact)
    from resnest_deploy.predict import predict
    from resnest_deploy.runners.options import RunnerOptions

    if output is not None:
        _predict_rows(
            [Path(i) for i in images], output, chosen, arch, weights, topk, provider, ray_address, json_out
        )
        return
    with executor(ray_address) as ex:
        preds = predict(
            [Path(i) for i in images],
            chosen,
            arch=arch,
            weights=weights,
            topk=topk,
            options=RunnerOptions.from_provider(provider.value),
            executor=ex,
        )
    from resnest_deploy.artifacts import weights_note

    show(preds, json_out, weights_note([chosen], weights))


def _predict_rows(
    images: list[Path],
    output: Path,
    chosen: str,
    arch: str | None,
    weights: str | None,
    topk: int,
    provider: Provider,
    ray_address: str | None,
    json_out: bool,
) -> None:
    """Predictions written as rows to ``output`` (here, or on the Ray cluster's workers)."""
    from resnest_deploy.predict import predict_to_file
    from resnest_deploy.runners.options import RunnerOptions

    with executor(ray_address) as ex:
        report = predict_to_file(
            images,
            output,
            chosen,
            arch=arch,
            weights=weights,
            topk=topk,
            options=RunnerOptions.from_provider(provider.value),
            executor=ex,
        )
    if json_out:
        print_json({"output": report.output, "rows": report.rows, "skipped": report.skipped})
        return
    out.print(f"{report.rows} predictions written to {report.output}")
    if report.skipped:
        err.print(
            styled(
                (f"skipped {len(report.skipped)} unreadable file(s)", "yellow"),
                f", e.g. {report.skipped[0]}",
            )
        )


def _predict_served(
    inputs: list[str],
    server: str,
    model: str | None,
    arch: str | None,
    topk: int,
    json_out: bool,
) -> None:
    if _is_artifact(inputs[0]):
        raise typer.BadParameter(
            f"with --server every argument is an image; {inputs[0]!r} is a model: serve it, or drop --server",
            param_hint="INPUTS",
        )
    from resnest_deploy.serving.client import predict_served

    preds, served = predict_served(inputs, server, model=model, arch=arch, topk=topk)
    err.print(
        f"{served.name} at {server}: {served.form.name} input, preprocessing from {served.transform_source}",
        style="dim",
    )
    show(preds, json_out)


def show(preds: list[Prediction], json_out: bool, note: str | None = None) -> None:
    """The table (or JSON) of local and served predictions alike; ``note``: what a person must know
    of the figures (random weights)."""
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
