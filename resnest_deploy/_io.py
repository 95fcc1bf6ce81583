"""File helpers: artifacts appear whole or not at all, never over an input; sidecars, hashes, JSON.

Reading ONNX files (checked, external data kept inside their folder) is :mod:`onnx_files`; telling
a live process from a gone one is :mod:`_process`.

Every file the tool writes goes to a temp name beside its destination first. The temp name carries
the writer's pid, so a later run can tell the leftovers of a killed run (pid gone) from a live
writer's and remove them. An artifact and its sidecar are installed together by
:func:`artifact_pair`: the sidecar first, the artifact last, so an artifact is never visible
without the sidecar that describes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from resnest_deploy._process import pid_alive
from resnest_deploy.errors import ArtifactError, first_line

SIDECAR_SUFFIX = ".json"
_PARTIAL = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.partial$")


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(artifact)}{SIDECAR_SUFFIX}")


def _temp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")


def clean_partials(folder: Path) -> list[Path]:
    """Remove temp files that killed runs left in ``folder`` (their writer's pid is gone)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            m = _PARTIAL.match(entry.name)
            if m and not pid_alive(int(m.group(1))) and entry.is_file() and not entry.is_symlink():
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def check_destination(dest: str | os.PathLike[str], *, with_sidecar: bool = False) -> Path:
    """Refuse, before any work, a destination that cannot be written as one plain file."""
    dest = Path(dest)
    for path in (dest, sidecar_path(dest)) if with_sidecar else (dest,):
        if path.is_dir():
            raise ArtifactError(f"{path} is a folder, not a file; remove it or choose another output path")
        if path.is_symlink() and not path.exists():
            raise ArtifactError(f"{path} is a dangling symlink; remove it or choose another output path")
    return dest


def _same(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwrite(
    outputs: Iterable[str | os.PathLike[str] | None],
    inputs: Iterable[str | os.PathLike[str] | None],
) -> None:
    """An output (or its sidecar) that is an input (or an input's sidecar) is refused, through
    symlinks, hard links and ``..`` alike: an output never overwrites an input."""
    ins = [Path(p) for p in inputs if p is not None]
    for out in (Path(p) for p in outputs if p is not None):
        for o in (out, sidecar_path(out)):
            for i in ins:
                for j in (i, sidecar_path(i)):
                    if _same(o, j):
                        raise ArtifactError(
                            f"output {out} would overwrite the input {j}; choose another output path (-o)"
                        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_temp(dest: Path) -> Path:
    """A new, empty temp file beside ``dest`` (its folder made, killed runs' leftovers removed)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        clean_partials(dest.parent)
        tmp = _temp_name(dest)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
    except OSError as e:
        raise ArtifactError(f"cannot write {dest}: {e.strerror}; choose a writable output path") from e
    os.close(fd)
    return tmp


def _install(tmp: Path, dest: Path) -> None:
    try:
        os.replace(tmp, dest)
    except OSError as e:
        raise ArtifactError(f"cannot write {dest}: {e.strerror}; choose another output path") from e


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; rename it over ``dest`` only if the block succeeds."""
    dest = check_destination(dest)
    tmp = new_temp(dest)
    try:
        yield tmp
        _install(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class ArtifactPair:
    """Temp files for an artifact and its sidecar, installed together by :func:`artifact_pair`."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.tmp = new_temp(dest)
        self._sidecar_tmp: Path | None = None

    def write_sidecar(self, data: dict[str, Any]) -> Path:
        if self._sidecar_tmp is None:
            self._sidecar_tmp = new_temp(sidecar_path(self.dest))
        self._sidecar_tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return sidecar_path(self.dest)

    def _commit(self) -> None:
        if self._sidecar_tmp is None:
            raise ArtifactError(f"internal error: {self.dest} was about to be written without a sidecar")
        side = sidecar_path(self.dest)
        backups: list[tuple[Path, Path]] = []
        try:
            for path in (self.dest, side):  # keep the old pair until the new one is in place
                if path.exists() or path.is_symlink():
                    backup = _temp_name(path)
                    os.replace(path, backup)
                    backups.append((backup, path))
            os.replace(self._sidecar_tmp, side)
            os.replace(self.tmp, self.dest)  # the artifact appears last: never one without its sidecar
        except OSError as e:
            side.unlink(missing_ok=True)
            for backup, path in backups:
                with contextlib.suppress(OSError):
                    os.replace(backup, path)
            raise ArtifactError(
                f"cannot write {self.dest}: {e.strerror}; the previous files were kept"
            ) from e
        for backup, _ in backups:
            backup.unlink(missing_ok=True)

    def _discard(self) -> None:
        self.tmp.unlink(missing_ok=True)
        if self._sidecar_tmp is not None:
            self._sidecar_tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def artifact_pair(dest: str | os.PathLike[str]) -> Iterator[ArtifactPair]:
    """Write an artifact to ``pair.tmp`` and its sidecar with ``pair.write_sidecar``; both appear at
    ``dest`` and ``dest.json`` when the block succeeds, neither (and the old pair intact) if not."""
    dest = check_destination(dest, with_sidecar=True)
    pair = ArtifactPair(dest)
    try:
        yield pair
        pair._commit()
    finally:
        pair._discard()


def write_json(dest: str | os.PathLike[str], data: Any) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's sha256, computed once per command for a file that does not change (a plan of
    resnest269 takes seconds, and the sidecar check, the runner and Triton's config each ask)."""
    st = os.stat(path)
    key = (os.fspath(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHED[key] = h.hexdigest()
        HASH_COUNT[0] += 1
    return _HASHED[key]


_HASHED: dict[tuple[object, ...], str] = {}
#: how many files were really read to hash them (the tests check a plan is hashed once per command)
HASH_COUNT = [0]


def read_json_object(path: str | os.PathLike[str], what: str, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object; anything else is one line naming the file and ``fix``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{what} {path} is unreadable ({first_line(e, 80)}); {fix}") from e
    if not isinstance(data, dict):
        raise ArtifactError(f"{what} {path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def require_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{what} not found: {p}; check the path")
    return p


def prepare_outputs(
    outputs: Iterable[str | os.PathLike[str] | None],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    with_sidecar: bool = True,
) -> None:
    """Before any work: every output can be written as a file and spares every input."""
    outs = [o for o in outputs if o is not None]
    refuse_overwrite(outs, inputs)
    for o in outs:
        check_destination(o, with_sidecar=with_sidecar)
