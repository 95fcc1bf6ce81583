"""Helpers the tests share (fixtures live in conftest.py). Imported as ``helpers``: the tests run with
pytest's importlib mode and only this folder on ``sys.path``, so ``resnest_deploy`` is always the
installed package, never the source tree by accident."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:  # torch is imported by the helpers that need it: the runtime tests run without it
    import torch

REFDATA = Path(__file__).parent / "refdata"
HEAVY = ("resnest200", "resnest269")  # the deepest configs: several seconds each


def unique_archs() -> list:
    """One arch per distinct architecture: official/timm twins share an ``ArchConfig`` (and so a
    graph), so sweeping both would test the same network twice. Heavy ones are marked ``slow``."""
    from resnest_deploy.models import get_spec, list_models

    first: dict = {}
    for arch in list_models():
        first.setdefault(get_spec(arch).arch, arch)
    return [pytest.param(a, marks=pytest.mark.slow) if a.startswith(HEAVY) else a for a in first.values()]


def manifest(arch: str) -> dict:
    return json.loads((REFDATA / f"{arch}.json").read_text())


def recipe_state_dict(man: dict, recipe: str) -> dict[str, torch.Tensor]:
    """The deterministic weights described in refdata/README.md (recipe "a" or "b")."""
    import torch

    sd = {}
    for i, (key, shape, dtype) in enumerate(man["state_dict"]):
        if dtype != "float32":
            sd[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        r = torch.randn(shape, generator=torch.Generator().manual_seed(i), dtype=torch.float32)
        if recipe == "a":
            t = r * 0.05
            if key.endswith("running_var"):
                t = t.abs() + 0.5
        elif len(shape) >= 2:
            t = r / math.sqrt(r.numel() // shape[0])
        elif key.endswith("running_var"):
            t = r.abs() * 0.1 + 1.0
        elif key.endswith(("running_mean", ".bias")):
            t = r * 0.05
        else:
            t = 1.0 + 0.1 * r
        sd[key] = t
    return sd


def images(n: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, *size), dtype=np.float32)


def digits_accuracy(onnx_path: Path) -> float:
    from resnest_deploy.data import Transform, digits, digits_batch
    from resnest_deploy.models import get_spec
    from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

    x, y = digits("test")
    batch = digits_batch(x, Transform.from_pretrained(get_spec("resnest14d_digits").pretrained))
    with OnnxRuntimeRunner(onnx_path) as runner:
        return float((runner.infer(batch).argmax(1) == y).mean())


def digit_folder(
    root: Path, classes: Sequence[int] = range(10), per_class: int = 6, size: int | None = None
) -> Path:
    """``root/<label>/<i>.png`` from the bundled test digits: a labelled folder as users have them."""
    from PIL import Image

    from resnest_deploy.data import digits

    images, labels = digits("test")
    for label in classes:
        folder = root / str(label)
        folder.mkdir(parents=True)
        for i, idx in enumerate(np.flatnonzero(labels == label)[:per_class]):
            image = Image.fromarray(images[idx])
            (image.resize((size, size)) if size else image).save(folder / f"{i}.png")
    return root


def as_full_tensorrt(plan: Path, dest: Path) -> Path:
    """Full TensorRT cannot be installed here: an RTX plan given full TensorRT's header and a sidecar
    recorded as a TensorRT 10.3 build, for configs that are written, never run."""
    from resnest_deploy import _io, metadata

    dest.write_bytes(b"ftrt" + plan.read_bytes()[4:])
    side = metadata.read_sidecar(plan) or {}
    side["tensorrt"] = {"flavour": "tensorrt", "version": "10.3.0"}
    side["file"] = {"sha256": _io.sha256_file(dest)}
    _io.sidecar_path(dest).write_text(json.dumps(side))
    return dest


def read_until_closed(sock, reads: int = 10_000) -> bytes:
    """What a server sends until it closes the connection or the socket's timeout passes (at most
    ``reads`` reads: the loop is bounded)."""
    out = b""
    for _ in range(reads):
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
    return out


def write_class_folders(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Images as users hand labelled ones over: ``folder/<label>/NNNN.png``."""
    from PIL import Image

    for i, (im, label) in enumerate(zip(images, labels, strict=True)):
        d = folder / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i:04d}.png")
    return folder
