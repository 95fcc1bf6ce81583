"""Triton model repositories written from artifacts: one folder per model, whole or not at all.

Writers of one repository take turns (a lock file), each model is staged in a private temp folder
inside the repository and renamed into place, and an existing model folder is never overwritten.
What each config says is decided in ``serving.config``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resnest_deploy import metadata
from resnest_deploy._io import atomic_path
from resnest_deploy.errors import ArtifactError
from resnest_deploy.onnx_files import external_files, load_onnx
from resnest_deploy.serving.config import ModelEntry, model_config

__all__ = ["PYTHON_MODEL", "ModelEntry", "model_config", "write_repository"]

LOCK_TIMEOUT_S = 30.0


def labels_for(num_classes: int) -> list[str]:
    from resnest_deploy.data.classes import class_names

    return class_names(num_classes)


PYTHON_MODEL = Path(__file__).with_name("triton_model.py")


def write_repository(
    artifacts: list[str | os.PathLike[str]],
    repo: str | os.PathLike[str],
    *,
    names: list[str] | None = None,
    **options: Any,
) -> list[ModelEntry]:
    """Write one model per artifact under ``repo``; refuses to overwrite an existing model folder.
    Writers of one repository take turns (a lock file), and each model is staged in a private temp
    folder inside the repository and renamed into place whole."""
    repo = Path(repo)
    if names is not None and len(names) != len(artifacts):
        raise ArtifactError(
            f"{len(names)} {{names}} for {len(artifacts)} artifacts; give one per artifact",
            param="names",
        )
    entries = [model_config(a, name=names[i] if names else None, **options) for i, a in enumerate(artifacts)]
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise ArtifactError(
                f"two artifacts would be model {e.name!r}; name them apart with {{names}}",
                param="names",
            )
        seen.add(e.name)
        if repo.resolve() in e.artifact.resolve().parents:
            raise ArtifactError(
                f"{e.artifact} is inside the repository {repo}; write the repository elsewhere"
            )
    if repo.exists() and not repo.is_dir():
        raise ArtifactError(f"{repo} is a file, not a folder; choose another {{repo}}", param="repo")
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArtifactError(f"cannot create the repository {repo}: {err.strerror}") from err
    with _locked(repo):
        for e in entries:
            if (repo / e.name).exists() or (repo / e.name).is_symlink():
                taken = repo / e.name
                raise ArtifactError(
                    f"{taken} exists; choose another {{repo}} or remove it",
                    param="repo",
                )
        for e in entries:
            _write_model(repo, e)
        if any(e.notes for e in entries):
            with atomic_path(repo / "TENSORRT_PAIRING.txt") as tmp:
                tmp.write_text("\n".join(n for e in entries for n in e.notes) + "\n")
    return entries


@contextlib.contextmanager
def _locked(repo: Path) -> Iterator[None]:
    """One writer at a time per repository (fcntl lock on a file inside it)."""
    import fcntl

    lock = repo / ".resnest-deploy.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ArtifactError(
                        f"another resnest-deploy is writing {repo} ({lock.name}); try again when it is done"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def _copy_external_data(artifact: Path, version: Path, suffix: str) -> None:
    """An ONNX file's external-data files, copied beside ``model.onnx`` under the names it gives
    them (checked by ``load_onnx``: plain files inside the artifact's folder); a repository without
    them cannot load. A name that would land on one of the model's own files is refused."""
    files = external_files(load_onnx(artifact))
    ours = {f"model.{suffix}", f"model.{suffix}.json", "model.py"}
    for location in files:
        if Path(location).parts[0] in ours:
            raise ArtifactError(
                f"{artifact} keeps weights in {location!r}, a name Triton's model folder needs for "
                "itself; re-save the ONNX file with another external-data name (onnx.save(..., location=))"
            )
        dest = version / location
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact.parent / location, dest)


def _write_model(repo: Path, e: ModelEntry) -> None:
    folder = repo / e.name
    staging = Path(tempfile.mkdtemp(prefix=f".{e.name}.", suffix=".staging", dir=repo))  # private, 0700
    try:
        (staging / "1").mkdir()
        suffix = "plan" if e.artifact.suffix.lower() != ".onnx" else "onnx"
        shutil.copyfile(e.artifact, staging / "1" / f"model.{suffix}")
        if suffix == "onnx":
            _copy_external_data(e.artifact, staging / "1", suffix)
        if metadata.read_sidecar(e.artifact) is not None:  # verified: it describes these very bytes
            shutil.copyfile(metadata.sidecar_path(e.artifact), staging / "1" / f"model.{suffix}.json")
        if e.platform == "python":
            shutil.copyfile(PYTHON_MODEL, staging / "1" / "model.py")
        (staging / "labels.txt").write_text("\n".join(labels_for(e.num_classes)) + "\n")
        (staging / "config.pbtxt").write_text(e.config)
        staging.chmod(0o755)
        os.rename(staging, folder)  # fails, rather than merges, if the folder appeared meanwhile
    except OSError as err:
        raise ArtifactError(f"cannot write {folder}: {err.strerror}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
