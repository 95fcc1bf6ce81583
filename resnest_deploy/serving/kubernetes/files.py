"""The manifests written as YAML files: all of them or none, never over an existing file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from resnest_deploy._io import check_destination, new_temp
from resnest_deploy.errors import ArtifactError
from resnest_deploy.serving.kubernetes.policy import require


def write(docs: dict[str, dict[str, Any]], out: str | os.PathLike[str]) -> list[Path]:
    """YAML files in ``out`` (created; existing files are not overwritten): all of them or none.

    Every file is rendered and written to a temp file first; each is then linked into place (a link
    never replaces a file that appeared meanwhile); if any step fails, the files placed so far are
    removed, so a failed write never leaves half a set of manifests."""
    yaml = require("yaml")

    class Plain(yaml.SafeDumper):  # type: ignore[name-defined]
        def ignore_aliases(self, data: Any) -> bool:  # shared label dicts written out, not as &anchors
            return True

    out = Path(out)
    taken = [out / file for file in docs if (out / file).exists() or (out / file).is_symlink()]
    if taken:  # refused before anything is written: never half a set of manifests
        raise ArtifactError(f"{taken[0]} exists; choose another -o or remove it")
    temps: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for file, doc in docs.items():
            dest = check_destination(out / file)
            temps.append((new_temp(dest), dest))
            try:
                text = yaml.dump(doc, Dumper=Plain, sort_keys=False)
            except yaml.YAMLError as e:
                raise ArtifactError(f"{file} cannot be written as YAML ({e}); nothing was written") from e
            temps[-1][0].write_text(text)
        for tmp, dest in temps:
            try:
                os.link(tmp, dest)
            except OSError as e:
                raise ArtifactError(
                    f"cannot write {dest}: {e.strerror}; nothing was written (choose another -o)"
                ) from e
            placed.append(dest)
    except BaseException:
        for dest in placed:
            dest.unlink(missing_ok=True)
        raise
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    return placed
