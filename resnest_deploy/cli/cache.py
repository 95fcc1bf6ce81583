"""`resnest-deploy cache`: what the tool keeps between runs, and removing it."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from rich.table import Table

from resnest_deploy.cli._common import JsonOpt
from resnest_deploy.cli._console import out, print_json
from resnest_deploy.cli._errors import handle_errors


class CacheAction(str, Enum):
    list = "list"
    clear = "clear"


def _kinds(kind: list[str] | None) -> list[str] | None:
    from resnest_deploy.cache import KINDS

    for k in kind or []:
        if k not in KINDS:
            raise typer.BadParameter(f"unknown cache kind {k!r}; choose from {', '.join(KINDS)}")
    return kind or None


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


@handle_errors
def cache_cmd(
    action: Annotated[CacheAction, typer.Argument(help="'list' the entries, or 'clear' them.")],
    kind: Annotated[
        list[str] | None,
        typer.Option(
            help="Only this kind (repeatable): openvino, onnxruntime, tensorrt-timing, ort-tensorrt, "
            "calibration."
        ),
    ] = None,
    older_than: Annotated[
        float | None, typer.Option(min=0, help="clear: only entries not written for this many days.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List or clear the caches under the cache root ($RESNEST_DEPLOY_CACHE, else
    ~/.cache/resnest_deploy): compiled models (OpenVINO), optimized graphs (ONNX Runtime), TensorRT
    timing caches and INT8 calibration data.

    Every entry is keyed by what makes it valid (runtime and version, CPU flags or GPU, the file's
    sha256) and checked against its manifest before use: a stale or foreign entry is a miss, never
    trusted. Set RESNEST_DEPLOY_CACHE=off to run without runtime caches.

    Examples:
      resnest-deploy cache list
      resnest-deploy cache list --kind openvino --json
      resnest-deploy cache clear --older-than 30
    """
    from resnest_deploy.cache import cache_root
    from resnest_deploy.cache_listing import clear, list_entries

    kinds = _kinds(kind)
    if older_than is not None and action is not CacheAction.clear:
        raise typer.BadParameter("--older-than applies to 'clear'", param_hint="--older-than")
    root = cache_root()
    entries = list_entries(kinds) if action is CacheAction.list else clear(kinds, older_than)
    total = sum(e.size_bytes for e in entries)
    if json_out:
        print_json({"root": str(root), "action": action.value, "entries": [e.as_dict() for e in entries]})
        return
    if action is CacheAction.clear:
        out.print(f"removed {len(entries)} entries, {_mib(total)} MiB, from {root}")
        return
    table = Table(title=f"caches under {root}", title_justify="left")
    for col in ("kind", "entry", "MiB", "files", "written (UTC)", "valid", "runtime"):
        table.add_column(col, justify="right" if col in ("MiB", "files") else "left", overflow="fold")
    for e in entries:
        valid = "-" if e.valid is None else ("yes" if e.valid else "no")
        table.add_row(
            e.kind,
            e.entry,
            _mib(e.size_bytes),
            str(e.files),
            e.modified[:19],
            valid,
            str(e.key.get("runtime", "")),
        )
    out.print(table)
    out.print(f"{len(entries)} entries, {_mib(total)} MiB in all", style="dim")
