"""The `resnest-deploy` command: registers commands, nothing else.

Commands are imported when they run: ``resnest-deploy export`` imports the export command's module
and no other, and the root ``--help`` lists each command from its docstring, read without importing
it. Command NAME is ``NAME_cmd`` in ``cli/NAME.py``."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from resnest_deploy import __version__
from resnest_deploy.cli._errors import OneLineErrors, run_app

#: every command, in the order the root --help lists them
COMMANDS = (
    "models",
    "export",
    "quantize",
    "equalize",
    "build",
    "check",
    "bench",
    "predict",
    "eval",
    "inspect",
    "pipeline",
    "deepstream",
    "triton",
    "serve",
    "k8s",
    "cache",
    "zoo",
)


def _docstring(name: str) -> str:
    """The docstring of command ``name``, read from its source without importing the module."""
    source = Path(__file__).with_name(f"{name}.py")
    if source.is_file():
        for node in ast.parse(source.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name == f"{name}_cmd":
                return ast.get_docstring(node, clean=False) or ""
    return _function(name).__doc__ or ""  # no source beside the package: import it


def _function(name: str) -> Callable[..., None]:
    fn: Callable[..., None] = getattr(importlib.import_module(f"resnest_deploy.cli.{name}"), f"{name}_cmd")
    return fn


class PlainUsage(TyperCommand):
    """Arguments in the usage line as placeholders people know (``SRC``, ``[ARTIFACTS]...``): Typer
    writes a required one ``{src}``, which reads like a template left unfilled (our messages'
    ``{name}`` placeholders look the same)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [_plain(piece) for piece in super().collect_usage_pieces(ctx)]


def _plain(piece: str) -> str:
    """``{src}`` -> ``SRC``, ``{artifacts}...`` -> ``ARTIFACTS...``, ``[a]...`` -> ``[A]...``."""
    name, dots = piece.removesuffix("..."), "..." if piece.endswith("...") else ""
    if name.startswith("{") and name.endswith("}"):
        return name[1:-1].upper() + dots
    if name.startswith("[") and name.endswith("]") and name != "[OPTIONS]":
        return f"[{name[1:-1].upper()}]{dots}"
    return piece


def _command(name: str) -> Any:
    """The Typer command ``name``, made as ``app.command(name)`` makes it."""
    fn = _function(name)
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    one.command(name, help=reflow(fn.__doc__ or ""), cls=PlainUsage)(fn)
    return typer.main.get_command(one)


class LazyCommands(OneLineErrors):
    """The root group: a command's module is imported when the command is looked up to run (or to
    show its own --help); listing the commands (the root --help) reads only their docstrings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listing = False
        self.commands = _Commands(self)
        for name in COMMANDS:
            dict.__setitem__(self.commands, name, None)  # nothing read until listed or run

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


class _Commands(dict[str, Any]):
    """The group's commands by name: one looked up is imported then; one listed for the root --help
    is its name and docstring only, read from the source."""

    def __init__(self, group: LazyCommands) -> None:
        super().__init__()
        self.group = group

    def __getitem__(self, name: str) -> Any:
        found = super().__getitem__(name)
        if self.group.listing and found is None:
            found = _Listed(name=name, help=reflow(_docstring(name)))
        elif not self.group.listing and (found is None or isinstance(found, _Listed)):
            found = _command(name)
        super().__setitem__(name, found)
        return found

    def get(self, name: str, default: Any = None) -> Any:
        if name not in self:
            return default
        return self[name]


class _Listed(TyperCommand):
    """A command as the root --help lists it (name and help), before its module is imported."""


app = typer.Typer(
    name="resnest-deploy",
    help="Take a ResNeSt from checkpoint to a verified ONNX / FP16 / INT8 / TensorRT artifact.\n\n"
    "Start with: resnest-deploy export --arch resnest50",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=LazyCommands,
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


def main() -> None:
    run_app(app)
