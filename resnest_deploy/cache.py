"""A content-checked cache: an entry is a file plus a manifest recording its key and sha256.

What comes back from the cache is used only if the manifest is a JSON object written for the same
key and the file's bytes still hash to what the manifest recorded. A missing, corrupt, replaced or
foreign entry is a miss (and is recomputed and rewritten), never an error and never trusted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnest_deploy._io import atomic_path, read_json_object, sha256_file, write_json
from resnest_deploy.errors import ArtifactError

CACHE_ENV = "RESNEST_DEPLOY_CACHE"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get(CACHE_ENV) or Path(base) / "resnest_deploy")


@dataclass(frozen=True)
class Entry:
    path: Path
    info: dict[str, Any]  # what the writer stored beside the file


class Cache:
    def __init__(self, folder: str, suffix: str) -> None:
        self.folder, self.suffix = folder, suffix

    @property
    def root(self) -> Path:
        return cache_root() / self.folder

    def _paths(self, key: str) -> tuple[Path, Path]:
        if not key.isalnum():
            raise ValueError(f"cache keys are hex digests, not {key!r}")
        data = self.root / f"{key}{self.suffix}"
        return data, data.with_name(data.name + ".manifest.json")

    def get(self, key: str) -> Entry | None:
        """The entry for ``key`` if it is intact, else ``None``."""
        data, manifest = self._paths(key)
        if not data.is_file() or data.is_symlink():
            return None
        try:
            m = read_json_object(manifest, "cache manifest", "")
        except ArtifactError:
            return None
        info = m.get("info")
        if m.get("key") != key or not isinstance(info, dict) or not isinstance(m.get("sha256"), str):
            return None
        with contextlib.suppress(OSError):
            if sha256_file(data) == m["sha256"]:
                return Entry(data, info)
        return None

    def put(self, key: str, info: dict[str, Any], content: bytes | Path) -> None:
        """Store ``content`` (bytes, or a file's bytes) under ``key``. A cache that cannot be written
        is skipped: caching never fails a run."""
        data, manifest = self._paths(key)
        with contextlib.suppress(ArtifactError, OSError):
            with atomic_path(data) as tmp:
                if isinstance(content, Path):
                    shutil.copyfile(content, tmp)
                else:
                    tmp.write_bytes(content)
                digest = sha256_file(tmp)
            write_json(manifest, {"key": key, "sha256": digest, "info": info})
