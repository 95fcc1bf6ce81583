"""What the cache keeps, listed and cleared by kind (`resnest-deploy cache list|clear`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnest_deploy.cache import KINDS, Cache, Kind, cache_root, read_manifest, remove_entry


@dataclass(frozen=True)
class Listed:
    kind: str
    entry: str  # the folder or file name under the kind's folder
    size_bytes: int
    files: int
    modified: str  # UTC, ISO 8601
    valid: bool | None  # manifest intact (None where the runtime keeps its own checks)
    key: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _size(p: Path) -> tuple[int, int]:
    if p.is_file() or p.is_symlink():
        return p.lstat().st_size, 1
    total = count = 0
    for q in p.rglob("*"):
        if q.is_file() and not q.is_symlink():
            total, count = total + q.stat().st_size, count + 1
    return total, count


def _mtime(p: Path) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(p.lstat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds")


def _listed_file(kind: Kind, p: Path) -> Listed | None:
    """A calibration entry: a file and its manifest (``Cache``'s layout)."""
    suffix = "".join(p.suffixes)
    if p.name.endswith((".manifest.json", ".partial")) or suffix not in (".npz", ".onnx"):
        return None
    manifest = p.with_name(p.name + ".manifest.json")
    size, n = _size(p)
    if manifest.is_file():
        size, n = size + manifest.stat().st_size, n + 1
    stem = p.name.split(".")[0]
    valid = stem.isalnum() and Cache(kind.folder, suffix).get(stem) is not None
    return Listed(kind.name, p.name, size, n, _mtime(p), valid, {})


def _listed_folder(kind: Kind, p: Path) -> Listed | None:
    """A runtime cache folder; its manifest is read (not re-hashed: opening it does that)."""
    if not p.is_dir() or p.is_symlink():
        return None
    size, n = _size(p)
    m = read_manifest(p) if kind.layout == "folders" else None
    valid = None if kind.layout == "raw" else m is not None
    key = m.get("key") if m else None
    return Listed(kind.name, p.name, size, n, _mtime(p), valid, key if isinstance(key, dict) else {})


def list_entries(kinds: list[str] | None = None, root: Path | None = None) -> list[Listed]:
    """Every entry the tool keeps under ``root`` (the cache root), by kind."""
    root = root or cache_root()
    out: list[Listed] = []
    for name in kinds or list(KINDS):
        kind = KINDS[name]
        base = root / kind.folder
        if not base.is_dir():
            continue
        lister = _listed_file if kind.layout == "files" else _listed_folder
        out += [e for e in (lister(kind, p) for p in sorted(base.iterdir())) if e is not None]
    return out


def clear(
    kinds: list[str] | None = None, older_than_days: float | None = None, root: Path | None = None
) -> list[Listed]:
    """Remove the entries of ``kinds`` (all by default), or only those older than a number of days;
    returns what was removed."""
    import time

    removed = []
    root = root or cache_root()
    for e in list_entries(kinds, root):
        p = root / KINDS[e.kind].folder / e.entry
        if older_than_days is not None and time.time() - p.lstat().st_mtime < older_than_days * 86400:
            continue
        with contextlib.suppress(OSError):
            remove_entry(p)
            if KINDS[e.kind].layout == "files":
                p.with_name(p.name + ".manifest.json").unlink(missing_ok=True)
            removed.append(e)
    return removed
