"""Long work made visible on stderr (spinners, bars) and the executor a command runs its work on."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from resnest_deploy.cli._console import err


@contextmanager
def progress(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr whose text the library's ``progress`` callback updates."""
    if not enabled or not err.is_terminal:
        yield lambda msg: err.print(msg, style="dim", highlight=False)
        return
    with err.status("starting") as status:
        yield lambda msg: status.update(msg)


@contextmanager
def executor(ray_address: str | None, show_progress: bool = True) -> Iterator[Any]:
    """The executor the user chose (local, or the Ray cluster at ``ray_address``), closed after."""
    from resnest_deploy.executors import executor_for

    def report(line: str) -> None:
        err.print(line, style="dim", highlight=False)

    chosen = executor_for(ray_address, report if show_progress else None)
    try:
        yield chosen
    finally:
        chosen.close()


def ray_typed(ray_address: str | None) -> bool:
    """Whether ``--ray`` was given on the command line: the same value in ``RAY_ADDRESS`` is the
    environment's, which is no request to use Ray for a command that runs none (typer's context does
    not say where a value came from here)."""
    return bool(ray_address) and ray_address != os.environ.get("RAY_ADDRESS")


@contextmanager
def search_executor(ray_address: str | None, searching: bool, show_progress: bool = True) -> Iterator[Any]:
    """The executor for the INT8 search's trials: the Ray cluster's when one is named and a search
    runs, else None (here, one trial after another). ``--ray`` given where no search runs is
    refused; ``RAY_ADDRESS`` from the environment is then ignored, as for any command without Ray."""
    if not searching and ray_typed(ray_address):
        raise typer.BadParameter(
            "--ray runs the INT8 search's trials: add --max-drop with -p int8 (pipeline: -p int8), "
            "or drop --ray",
            param_hint="--ray",
        )
    if not (ray_address and searching):
        yield None
        return
    with executor(ray_address, show_progress) as chosen:
        yield chosen


@contextmanager
def counting_bar(
    label: str, enabled: bool = True
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A progress bar on stderr for the library's ``on_total``/``advance`` callbacks."""
    if not enabled or not err.is_terminal:
        yield (lambda _n: None), (lambda _n: None)
        return
    from rich.progress import Progress

    with Progress(*Progress.get_default_columns(), console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield (lambda n: bar.update(task, total=n)), (lambda n: bar.advance(task, n))
