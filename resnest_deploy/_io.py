"""File helpers: artifacts appear whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resnest_deploy import _deps
from resnest_deploy.errors import ArtifactError, first_line


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; rename it over ``dest`` only if the block succeeds."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    except OSError as e:
        raise ArtifactError(f"cannot write {dest}: {e.strerror}; choose a writable output path") from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(dest: str | os.PathLike[str], data: Any) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """The ``onnx.ModelProto`` at ``path`` (external weights left on disk), or one line saying why not."""
    onnx = _deps.require("onnx")
    try:
        return onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:
        raise ArtifactError(f"{path} is not a readable ONNX file ({first_line(e, 120)}); re-export it") from e


def require_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{what} not found: {p}; check the path")
    return p
