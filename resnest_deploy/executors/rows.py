"""Predictions as rows, one per image (path, top-k classes, names, probabilities): JSON Lines or
Parquet, picked by the output's suffix. The same columns whether this machine or Ray's writers write
them, so a reader does not care where the job ran."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.errors import ArtifactError
from resnest_deploy.executors.work import ImageOutcome

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def format_of(output: str | os.PathLike[str]) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise ArtifactError(f"cannot tell the format of {output}: name it .jsonl (JSON Lines) or .parquet")
    return FORMATS[suffix]


def json_line(row: dict[str, Any]) -> str:
    """One JSON Lines row, floats written exactly (``repr``), here and in Ray's writer alike."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def rows_of(outcomes: Sequence[ImageOutcome], topk: int) -> list[dict[str, Any]]:
    """Rows for the images that decoded; the others are reported, not written."""
    return [o.row(topk) for o in outcomes if o.error is None]


def write_file(output: Path, outcomes: Sequence[ImageOutcome], topk: int) -> int:
    """Write atomically (a temporary file renamed into place): never a half-written output."""
    fmt = format_of(output)
    rows = rows_of(outcomes, topk)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json_line(row) for row in rows)
        else:
            pa = _deps.require("pyarrow")
            pq = _deps.require("pyarrow.parquet")
            pq.write_table(pa.Table.from_pylist(rows, schema=schema()), tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


def schema() -> Any:
    """The Parquet schema of a prediction row (also what Ray's writer writes)."""
    pa = _deps.require("pyarrow")
    return pa.schema(
        [
            ("path", pa.string()),
            ("classes", pa.list_(pa.int64())),
            ("labels", pa.list_(pa.string())),
            ("probabilities", pa.list_(pa.float64())),
        ]
    )


def read(output: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows back from a file or a folder of part files (what Ray's writers make), in path order."""
    path = Path(output)
    files = sorted(p for p in path.iterdir() if not p.name.startswith(".")) if path.is_dir() else [path]
    rows: list[dict[str, Any]] = []
    for f in files:
        if format_of(output) == "jsonl":
            rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line]
        else:
            rows += _deps.require("pyarrow.parquet").read_table(f).to_pylist()
    return rows
