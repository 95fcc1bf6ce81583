"""The `resnest-deploy` command: registers commands, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from resnest_deploy import __version__
from resnest_deploy.cli._errors import OneLineErrors, run_app
from resnest_deploy.cli.bench import bench_cmd
from resnest_deploy.cli.build import build_cmd
from resnest_deploy.cli.cache import cache_cmd
from resnest_deploy.cli.check import check_cmd
from resnest_deploy.cli.deepstream import deepstream_cmd
from resnest_deploy.cli.eval import eval_cmd
from resnest_deploy.cli.export import export_cmd
from resnest_deploy.cli.inspect import inspect_cmd
from resnest_deploy.cli.k8s import k8s_cmd
from resnest_deploy.cli.models import models_cmd
from resnest_deploy.cli.pipeline import pipeline_cmd
from resnest_deploy.cli.predict import predict_cmd
from resnest_deploy.cli.quantize import quantize_cmd
from resnest_deploy.cli.serve import serve_cmd
from resnest_deploy.cli.triton import triton_cmd
from resnest_deploy.cli.zoo import zoo_cmd

app = typer.Typer(
    name="resnest-deploy",
    help="Take a ResNeSt from checkpoint to a verified ONNX / FP16 / INT8 / TensorRT artifact.\n\n"
    "Start with: resnest-deploy export --arch resnest50",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)


def reflow(doc: str) -> str:
    """A command's docstring as --help shows it: each prose paragraph one line, so the terminal wraps
    it at any width (hard line breaks came out ragged); example blocks keep their lines."""
    import inspect

    paragraphs = inspect.cleandoc(doc).split("\n\n")
    kept = []
    for paragraph in paragraphs:
        lines = paragraph.splitlines()
        if lines and (lines[0].rstrip().endswith(":") or any(ln.startswith("  ") for ln in lines)):
            kept.append(paragraph)
        else:
            kept.append(" ".join(ln.strip() for ln in lines))
    return "\n\n".join(kept)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"resnest-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", help="Let ONNX Runtime and ModelOpt print their own log lines (off by default)."
        ),
    ] = False,
) -> None:
    from resnest_deploy._verbosity import set_verbose

    if verbose:
        set_verbose(True)


COMMANDS: dict[str, Callable[..., None]] = {
    "models": models_cmd,
    "export": export_cmd,
    "quantize": quantize_cmd,
    "build": build_cmd,
    "check": check_cmd,
    "bench": bench_cmd,
    "predict": predict_cmd,
    "eval": eval_cmd,
    "inspect": inspect_cmd,
    "pipeline": pipeline_cmd,
    "deepstream": deepstream_cmd,
    "triton": triton_cmd,
    "serve": serve_cmd,
    "k8s": k8s_cmd,
    "cache": cache_cmd,
    "zoo": zoo_cmd,
}
for _name, _fn in COMMANDS.items():
    app.command(_name, help=reflow(_fn.__doc__ or ""))(_fn)


def main() -> None:
    run_app(app)
