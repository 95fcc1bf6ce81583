"""`resnest-deploy models`: the registry as a table."""

from __future__ import annotations

from rich.table import Table

from resnest_deploy.cli._common import JsonOpt
from resnest_deploy.cli._console import out, print_json
from resnest_deploy.cli._errors import handle_errors
from resnest_deploy.models.catalog import catalog


@handle_errors
def models_cmd(json_out: JsonOpt = False) -> None:
    """List every supported ResNeSt variant with its size, eval input and weights source.

    Examples:
      resnest-deploy models
      resnest-deploy models --json | jq '.[].arch'
    """
    rows = catalog()
    if json_out:
        print_json(rows)
        return
    table = Table(title="ResNeSt variants")
    for col in ("arch", "params", "input", "crop", "interp.", "weights"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for r in rows:
        table.add_row(
            r["arch"],
            "?" if r["params"] is None else f"{r['params'] / 1e6:.2f}M",
            str(r["input_size"]),
            f"{r['crop_pct']:.3f}",
            r["interpolation"],
            r["weights_url"],
        )
    out.print(table)
