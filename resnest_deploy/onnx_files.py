"""ONNX files read with a check: a graph that is there, and external data that stays a plain file
inside the model's own folder (a parser would otherwise read any file the user can read)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resnest_deploy import _deps
from resnest_deploy._io import require_file
from resnest_deploy.errors import ArtifactError, first_line


def all_tensors(model: Any) -> Iterator[Any]:
    """Every ``TensorProto`` of an ``onnx.ModelProto``: initializers, the values and indices of sparse
    initializers, tensors in node attributes (dense and sparse), in subgraphs and in functions.
    ``onnx.external_data_helper`` skips sparse tensors, which ONNX Runtime reads all the same."""

    def of_sparse(sparse: Any) -> Iterator[Any]:
        yield sparse.values
        yield sparse.indices

    def of_attributes(attributes: Any) -> Iterator[Any]:
        for a in attributes:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                yield from of_sparse(a.sparse_tensor)
            for sparse in a.sparse_tensors:
                yield from of_sparse(sparse)
            if a.HasField("g"):
                yield from of_graph(a.g)
            for g in a.graphs:
                yield from of_graph(g)

    def of_graph(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from of_sparse(sparse)
        for node in graph.node:
            yield from of_attributes(node.attribute)

    yield from of_graph(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from of_attributes(node.attribute)


def external_tensors(model: Any) -> Iterator[Any]:
    """The tensors of an ``onnx.ModelProto`` whose bytes live in external-data files."""
    onnx = _deps.require("onnx")
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def external_files(model: Any) -> list[str]:
    """The external-data file names a model uses (relative to its folder), each once."""
    names = []
    for tensor in external_tensors(model):
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        if location not in names:
            names.append(location)
    return names


def check_external_data(model: Any, path: Path) -> None:
    """External weights must be plain files inside the model's own folder: no absolute paths, no
    ``..``, no symlinks. Parsers (TensorRT's among them) would otherwise read any file the user can
    read into the artifact."""
    base = path.resolve().parent
    for tensor in external_tensors(model):
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        bad = f"{path} names external data {location!r} for {tensor.name!r}"
        rel = Path(location)
        if not location or rel.is_absolute() or ".." in rel.parts:
            raise ArtifactError(f"{bad}, which is not a plain file name beside it; refusing to read it")
        full = base / rel
        if full.resolve() != full or full.is_symlink():
            raise ArtifactError(f"{bad}, which is a symlink; copy the real file beside the model")
        if not full.is_file():
            raise ArtifactError(f"{bad}, which does not exist; keep the data file beside the model")
        with contextlib.suppress(ValueError):
            end = int(info.get("offset", 0)) + int(info.get("length", 0))
            if end > full.stat().st_size:
                raise ArtifactError(f"{bad}, which is shorter than the model says; the file is truncated")


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """The ``onnx.ModelProto`` at ``path`` (external weights left on disk, but checked), or one line
    saying why not."""
    onnx = _deps.require("onnx")
    path = require_file(path, "ONNX file")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:
        raise ArtifactError(f"{path} is not a readable ONNX file ({first_line(e, 120)}); re-export it") from e
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise ArtifactError(f"{path} holds no ONNX graph (empty or not an ONNX file); re-export it")
    check_external_data(model, path)
    return model
