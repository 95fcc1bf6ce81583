"""Terminal output: the one place untrusted text reaches the terminal (escaped, no markup), the
result tables several commands share, and ``--json`` printing."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

#: control characters (C0, DEL, C1) and bidi overrides: shown escaped, never sent to the terminal
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def visible(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``): a file name or a metadata
    string can move the cursor, retitle the window or clear the screen otherwise."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text with styles from plain parts: ``styled(("error:", "bold red"), " ", message)``."""
    return Text.assemble(*((visible(p[0]), p[1]) if isinstance(p, tuple) else visible(p) for p in parts))


class SafeConsole(Console):
    """The one place untrusted text reaches the terminal: markup is off (a path holding ``[/x]`` is a
    path, ``[red]b.png`` prints as written) and control characters are escaped, in plain strings and
    table cells alike. Styles come from :func:`styled` ``Text`` and ``style=``."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs["markup"] = False
        super().print(*(_clean(o) for o in objects), **kwargs)


def _clean(obj: Any) -> Any:
    if isinstance(obj, str):
        return visible(obj)
    if isinstance(obj, Table):
        if isinstance(obj.title, str):
            obj.title = visible(obj.title)
        for column in obj.columns:
            column._cells = [visible(c) if isinstance(c, str) else c for c in column._cells]
    return obj


out = SafeConsole(soft_wrap=True, markup=False)
err = SafeConsole(stderr=True, soft_wrap=True, markup=False)


def deprecated(old: str, new: str) -> None:
    """An old spelling that still works for one release, said once on stderr."""
    err.print(
        styled(("deprecated:", "yellow"), f" {old} still works this release; write {new}"), highlight=False
    )


def metrics_table(
    title: str,
    rows: dict[str, Any],
    failures: dict[str, list[str]] | None = None,
    unjudged: Sequence[str] = (),
) -> Any:
    """Parity metrics (``compare.Metrics``) per artifact, as check and quantize print them; rows in
    ``unjudged`` (random weights) say so instead of ok."""
    table = Table(title=title, title_justify="left")
    for col in ("artifact", "max abs", "mean abs", "cosine", "top-1", "top-5", "n"):
        table.add_column(col, justify="left" if col == "artifact" else "right", overflow="fold")
    if failures is not None:
        table.add_column("result")
    for name, m in rows.items():
        cells: list[str | Text] = [
            name,
            f"{m.max_abs:.3g}",
            f"{m.mean_abs:.3g}",
            f"{m.cosine:.6f}",
            f"{m.top1:.1%}",
            f"{m.top5:.1%}",
        ]
        cells.append(str(m.samples))
        if failures is not None:
            problems = failures.get(name) or []
            cells.append(
                styled(("FAIL", "red"), " " + "; ".join(problems))
                if problems
                else styled(("not judged", "yellow"))
                if name in unjudged
                else styled(("ok", "green"))
            )
        table.add_row(*cells)
    return table


def strict_json(data: Any) -> Any:
    """``data`` with NaN and infinities as null: ``--json`` is RFC 8259 JSON, which has neither."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {str(k): strict_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [strict_json(v) for v in data]
    return data


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(strict_json(data), indent=2, default=str, allow_nan=False) + "\n")
