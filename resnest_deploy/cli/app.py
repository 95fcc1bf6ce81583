"""The `resnest-deploy` command: registers commands, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from resnest_deploy import __version__
from resnest_deploy.cli._common import OneLineErrors, reflow, run_app
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
