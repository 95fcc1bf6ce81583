"""``predict -o`` on a Ray cluster: rows written by Ray Data's writers, one part file per block.

Rows go from the workers straight to the output folder, so a million-image job does not pass
through the driver's memory; only the images' indices come back first, to check that every image
is there exactly once before a single row is written. JSON Lines rows are written by our own line
writer (``rows.json_line``), so they read back exactly as the local file's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.executors import ClusterError

#: the columns a written row keeps (the outcome's index, error and backend stay behind)
ROW_COLUMNS = ["path", "classes", "labels", "probabilities"]


def write_dataset(ray: Any, ds: Any, images: int, folder: str, fmt: str, topk: int) -> list[str]:
    """Write the classified dataset ``ds`` of ``images`` images into ``folder`` (``jsonl`` or
    ``parquet``) once every image is accounted for exactly once; returns the skipped images as
    ``path: why``. Raises ``ClusterError`` before writing anything when an image is missing or
    repeated."""
    ds = ds.materialize()
    got = ds.select_columns(["index"]).to_arrow_refs()
    indices = [i for t in ray.get(got) for i in t.column("index").to_pylist()]
    if len(indices) != images or len(set(indices)) != images:
        raise ClusterError(
            f"the cluster returned {len(indices)} results for {images} images "
            f"({len(indices) - len(set(indices))} repeated); nothing was written: run it again"
        )
    errors = [f"{r['path']}: {r['error']}" for r in ds.filter(lambda r: r["error"] is not None).iter_rows()]
    good = ds.filter(lambda r: r["error"] is None).select_columns(ROW_COLUMNS)
    good = good.map_batches(_cut(topk), batch_format="pyarrow")
    if fmt == "jsonl":
        good.write_datasink(_jsonl_sink(folder))
    else:
        good.write_parquet(folder)
    return errors


def _cut(topk: int) -> Callable[[Any], Any]:
    """Keep the top-k the user asked for (outcomes carry at least five)."""

    def cut(batch: Any) -> Any:
        pc = _deps.require("pyarrow.compute")
        for name in ("classes", "labels", "probabilities"):
            batch = batch.set_column(
                batch.schema.get_field_index(name), name, pc.list_slice(batch.column(name), 0, topk)
            )
        return batch

    return cut


def _jsonl_sink(path: str) -> Any:
    """Ray Data's file writer with our JSON Lines rows: pandas' ``to_json`` rounds floats to ten
    digits, and the rows must read back exactly as the local file's."""
    from ray.data.datasource import BlockBasedFileDatasink

    from resnest_deploy.executors.rows import json_line

    class JsonLinesDatasink(BlockBasedFileDatasink):
        def write_block_to_file(self, block: Any, file: Any) -> None:
            text = "".join(json_line(row) for row in block.to_arrow().to_pylist())
            file.write(text.encode("utf-8"))

    return JsonLinesDatasink(path, file_format="jsonl")
