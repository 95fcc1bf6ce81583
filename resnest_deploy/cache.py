"""A content-checked cache: an entry is a file plus a manifest recording its key and sha256.

What comes back from the cache is used only if the manifest is a JSON object written for the same
key and the file's bytes still hash to what the manifest recorded. A missing, corrupt, replaced or
foreign entry is a miss (and is recomputed and rewritten), never an error and never trusted.
Listing and clearing what is kept (`resnest-deploy cache`) is :mod:`resnest_deploy.cache_listing`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnest_deploy._io import atomic_path, read_json_object, sha256_file, write_json
from resnest_deploy.errors import ArtifactError

CACHE_ENV = "RESNEST_DEPLOY_CACHE"


def cache_root() -> Path:
    """$RESNEST_DEPLOY_CACHE, else the XDG cache folder (also when the variable says ``off``, which
    turns only the runtime caches off)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    chosen = os.environ.get(CACHE_ENV, "")
    if chosen.lower() in ("off", "none", "0", "no"):
        chosen = ""
    return Path(chosen or Path(base) / "resnest_deploy")


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

    def get_arrays(self, key: str) -> tuple[Entry, dict[str, Any]] | None:
        """An intact entry's NumPy arrays (an ``.npz`` from :meth:`put_arrays`), read whole with
        pickles refused; an entry that does not load as one is a miss, like a damaged one."""
        entry = self.get(key)
        if entry is None:
            return None
        import numpy as np  # imported here: listing and describing caches needs no numpy

        try:
            with np.load(entry.path, allow_pickle=False) as z:
                return entry, {name: z[name] for name in z.files}
        except (OSError, ValueError):
            return None

    def put_arrays(self, key: str, info: dict[str, Any], **arrays: Any) -> None:
        """Store named NumPy arrays under ``key`` as one ``.npz`` (see :meth:`put`)."""
        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.put(key, info, buf.getvalue())


# --- the registry: every cache the tool keeps, one kind of entry each ------------------------------
#
# Runtime caches (OpenVINO's compiled models, ONNX Runtime's optimized graphs, TensorRT's timing
# caches) are folders the runtime itself writes into. Such a folder is trusted only through its
# manifest: the key it was made for (runtime and version, CPU flags or GPU, the artifact's sha256)
# and the sha256 of every file in it. Opening a folder whose manifest is missing, foreign, stale or
# contradicted by a file empties it (a miss); a file the manifest does not list is removed before
# the runtime can read it. The manifest is written atomically after the runtime has written.

MANIFEST = "manifest.json"
OFF_WORDS = ("off", "none", "0", "no")


@dataclass(frozen=True)
class Kind:
    name: str
    folder: str
    what: str
    layout: str  # "folders": one folder per key with a MANIFEST; "files": Cache's file + manifest


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("openvino", "openvino", "OpenVINO compiled models (CACHE_DIR), per ONNX file", "folders"),
        Kind("onnxruntime", "onnxruntime", "ONNX Runtime optimized graphs, per ONNX file", "folders"),
        Kind("tensorrt-timing", "tensorrt-timing", "TensorRT builder timing caches, per GPU", "folders"),
        Kind(
            "tensorrt-rtx-runtime",
            "tensorrt-rtx-runtime",
            "TensorRT-RTX runtime caches (kernels JIT-compiled at run time), per engine and GPU",
            "folders",
        ),
        Kind(
            "ort-tensorrt", "ort-tensorrt", "ONNX Runtime TensorRT-provider engines (its own checks)", "raw"
        ),
        Kind("calibration", "calib", "INT8 calibration images and models", "files"),
        Kind("references", "references", "FP32 logits of evaluation sets, per source file and set", "files"),
    )
}


@dataclass(frozen=True)
class CacheKey:
    """What makes a runtime cache entry valid; any difference is another entry."""

    runtime: str  # e.g. "openvino 2026.4.1"
    device: str  # "cpu:avx,avx2,fma" or "gpu:sm_89"
    artifact_sha256: str  # "" where the cache is not per file (timing caches)
    options: tuple[tuple[str, str], ...] = ()

    def fields(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "device": self.device,
            "artifact_sha256": self.artifact_sha256,
            "options": dict(self.options),
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()[:24]


def cpu_device() -> str:
    from resnest_deploy.metadata import cpu_flags

    return "cpu:" + ",".join(cpu_flags())


def runtime_version(*distributions: str) -> str:
    """The installed version of the first of ``distributions`` present (no import of the runtime)."""
    from importlib import metadata as im

    for dist in distributions:
        with contextlib.suppress(im.PackageNotFoundError):
            return f"{dist} {im.version(dist)}"
    return f"{distributions[0]} unknown"


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        print(f"warning: {message}", file=sys.stderr)


_SAID: set[str] = set()


def _writable(folder: Path) -> str | None:
    """None if ``folder`` can be created and written, else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def fallback_root() -> Path:
    """Where runtime caches go when the cache root cannot be written: per user, under $TMPDIR."""
    return Path(tempfile.gettempdir()) / f"resnest_deploy-cache-{os.getuid()}"


def runtime_root() -> Path | None:
    """Where runtime caches go: the cache root, or when it cannot be written (a read-only root
    filesystem, a device's store) a folder under the temp directory, or nowhere; said once.
    ``RESNEST_DEPLOY_CACHE=off`` turns runtime caches off."""
    if os.environ.get(CACHE_ENV, "").lower() in OFF_WORDS:
        return None
    root = cache_root()
    why = _writable(root)
    if why is None:
        return root
    fallback = fallback_root()
    if _writable(fallback) is None:
        _say_once(f"cache root {root} is not writable ({why}); caching in {fallback} instead")
        return fallback
    _say_once(f"cache root {root} is not writable ({why}) nor is {fallback}; running without a cache")
    return None


def _files(folder: Path) -> dict[str, int]:
    """Regular files of ``folder`` (not the manifest, not symlinks, not partial writes) and sizes."""
    out = {}
    for p in folder.iterdir():
        if p.name != MANIFEST and not p.name.endswith(".partial") and p.is_file() and not p.is_symlink():
            out[p.name] = p.stat().st_size
    return out


@dataclass
class CacheFolder:
    """One runtime cache entry, handed to a runner: it reads and writes ``path``, then ``seal``s."""

    kind: str
    key: CacheKey
    path: Path
    hit: bool  # the folder held a verified entry when opened
    #: the files verified when the folder was opened: the only ones a runner may read back
    verified: frozenset[str] = frozenset()

    @classmethod
    def open(cls, kind: str, key: CacheKey, root: Path | None = None) -> CacheFolder | None:
        """The entry for ``key``, verified (a hit) or emptied (a miss); ``None`` when there is no
        usable cache at all (said once)."""
        root = root or runtime_root()
        if root is None:
            return None
        folder = root / KINDS[kind].folder / key.digest()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            verified = _verify(folder, kind, key)
            if not verified:
                _empty(folder)
        except OSError as e:
            _say_once(f"cannot use the {kind} cache in {folder} ({e.strerror}); running without it")
            return None
        return cls(kind, key, folder, bool(verified), frozenset(verified))

    def seal(self) -> None:
        """Record what the runtime wrote: every file's sha256, then the manifest, atomically. A
        cache that cannot be written is skipped: caching never fails a run."""
        with contextlib.suppress(OSError, ArtifactError):
            sizes = _files(self.path)
            old = read_manifest(self.path)
            if old and {n: f.get("size") for n, f in old.get("files", {}).items()} == sizes:
                return  # nothing new since the last seal
            from resnest_deploy.metadata import now

            files = {n: {"sha256": sha256_file(self.path / n), "size": s} for n, s in sizes.items()}
            with atomic_path(self.path / MANIFEST) as tmp:
                tmp.write_text(
                    json.dumps(
                        {"kind": self.kind, "key": self.key.fields(), "files": files, "created": now()}
                    )
                )


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """A runtime entry's manifest if it is a JSON object listing files, else None (never trusted more)."""
    try:
        m = read_json_object(folder / MANIFEST, "cache manifest", "")
    except ArtifactError:
        return None
    return m if isinstance(m.get("files"), dict) else None


def _verify(folder: Path, kind: str, key: CacheKey) -> set[str]:
    """The files of an intact entry for ``key`` in ``folder`` (none: not one); files the manifest
    does not list are removed."""
    m = read_manifest(folder)
    if m is None or m.get("kind") != kind or m.get("key") != key.fields():
        return set()
    listed: dict[str, Any] = m["files"]
    for name, f in listed.items():
        p = folder / str(name)
        if not isinstance(f, dict) or p.parent != folder or p.is_symlink() or not p.is_file():
            return set()
        if p.stat().st_size != f.get("size") or sha256_file(p) != f.get("sha256"):
            return set()
    for p in folder.iterdir():  # written by an interrupted run, or by someone else: not ours
        if p.name != MANIFEST and p.name not in listed:
            remove_entry(p)
    return set(listed)


def remove_entry(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _empty(folder: Path) -> None:
    for p in folder.iterdir():
        remove_entry(p)


def for_artifact(
    kind: str,
    artifact: str | os.PathLike[str],
    runtime: str,
    options: dict[str, str] | None = None,
    device: str | None = None,
) -> CacheFolder | None:
    """The ``kind`` cache folder for a file with ``runtime`` on ``device`` (default: this CPU, by its
    flags; a GPU as ``gpu:sm_XY``): what a runner is handed."""
    try:
        digest = sha256_file(artifact)
    except OSError:
        return None
    key = CacheKey(runtime, device or cpu_device(), digest, tuple(sorted((options or {}).items())))
    return CacheFolder.open(kind, key)


# --- what `resnest-deploy cache list|clear` shows and removes -------------------------------------
