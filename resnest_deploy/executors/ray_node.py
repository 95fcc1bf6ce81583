"""What a Ray node keeps: the artifact a job sent it, by sha256, checked before every use.

The driver ships the artifact's bytes once through the object store; each actor hashes what it
received against the sha256 the driver measured, keeps a node-local copy (a copy already there is
used only if it still hashes right), with the artifact's sidecar beside it when it has one (an
engine's loader reads it), and prunes the copies of older jobs, so a node's /tmp does not fill with
every model the cluster ever ran. No ``ray`` import here: plain files and hashes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from resnest_deploy._io import sidecar_path
from resnest_deploy.errors import ArtifactError
from resnest_deploy.executors.work import ArtifactRef

#: where a node keeps the artifacts it was sent, by sha256 (checked again on every use)
NODE_CACHE = Path(tempfile.gettempdir()) / "resnest-deploy-ray"
#: artifacts a node keeps (the most recently used); older copies are removed when a job starts
KEEP_ARTIFACTS = 4
#: a copy used this recently is kept whatever its rank: a job running beside this one may still open it
KEEP_RECENT_S = 600.0

_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def node_copy(
    blob: bytes,
    ref: ArtifactRef,
    cache: Path = NODE_CACHE,
    keep: int = KEEP_ARTIFACTS,
    sidecar: Sidecar | None = None,
) -> Path:
    """The artifact as a file on this node, its content checked: the bytes received must hash to
    the sha256 the driver measured, and a copy already on the node is used only if it still does.
    ``sidecar`` (an engine's ``FILE.json``: its input form, what it was built for) is written next
    to the copy, where the loader reads it and checks again that it describes these very bytes.
    The node keeps the ``keep`` most recently used artifacts (``prune``): without a bound, every
    model a cluster ever evaluated stayed in its nodes' /tmp."""
    node = socket.gethostname()
    got = sha256(blob)
    if got != ref.sha256:
        raise ArtifactError(
            f"node {node} received {Path(ref.path).name} with sha256 {got[:16]}, not {ref.sha256[:16]} "
            "as the driver measured; the file changed during the job: refusing it, run it again"
        )
    dest = cache / ref.sha256 / Path(ref.path).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.utime(dest.parent)  # used now: the newest, whatever prune removes
    if not (dest.is_file() and _file_sha256(dest) == ref.sha256):
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        try:
            tmp.write_bytes(blob)
            if _file_sha256(tmp) != ref.sha256:
                raise ArtifactError(
                    f"node {node} could not write an intact copy of {dest.name}; check its disk"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    _place_sidecar(dest, sidecar, node)
    prune(cache, keep)
    return dest


@dataclass(frozen=True)
class Sidecar:
    """An artifact's sidecar as the driver read it, and the sha256 it measured of those bytes."""

    blob: bytes
    sha256: str

    @classmethod
    def of(cls, artifact: str | os.PathLike[str]) -> Sidecar | None:
        path = sidecar_path(artifact)
        if not path.is_file():
            return None
        blob = path.read_bytes()
        return cls(blob, sha256(blob))


def _place_sidecar(dest: Path, sidecar: Sidecar | None, node: str) -> None:
    """The sidecar the driver sent next to the copy, or none (an older job's is removed): the node
    reads what the driver read, never what an earlier job left behind."""
    path = sidecar_path(dest)
    if sidecar is None:
        path.unlink(missing_ok=True)
        return
    if sha256(sidecar.blob) != sidecar.sha256:
        raise ArtifactError(
            f"node {node} received a sidecar of {dest.name} that differs from the driver's; run it again"
        )
    if path.is_file() and _file_sha256(path) == sidecar.sha256:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_bytes(sidecar.blob)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def prune(cache: Path, keep: int = KEEP_ARTIFACTS, recent_s: float = KEEP_RECENT_S) -> list[Path]:
    """Remove the node's artifact copies beyond the ``keep`` most recently used, except those used
    within ``recent_s`` (another job may be opening one). Only folders named by a sha256 are
    touched, never a link or anything else in ``cache``; returns what was removed."""
    try:
        entries = [p for p in cache.iterdir() if _SHA256.fullmatch(p.name)]
    except OSError:
        return []
    folders = []
    for p in entries:
        try:
            st = p.lstat()
        except OSError:
            continue  # removed meanwhile by another actor's prune
        if stat.S_ISDIR(st.st_mode):
            folders.append((st.st_mtime, p))
    folders.sort(reverse=True)
    now = time.time()
    removed = []
    for mtime, p in folders[keep:]:
        if now - mtime >= recent_s:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
