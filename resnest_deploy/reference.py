"""Reference outputs recorded at export, so an artifact can be checked where PyTorch is not installed.

``export`` runs the PyTorch FP32 model on a small fixed probe batch (the bundled model's first test
digits, else seeded random inputs) and stores the logits, with a sha256 of the inputs, in the file's
metadata; conversions and engine builds carry the record along. ``check`` on an edge device
regenerates the probe inputs, verifies they are the recorded ones, and compares the artifact's
outputs with the recorded logits, against PyTorch without PyTorch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import data
from resnest_deploy.errors import ArtifactError, first_line
from resnest_deploy.models.registry import get_spec

PROBE_COUNT = 8
MAX_PROBE = 2 * PROBE_COUNT
PROBE_SEED = 1234
RUNTIME = "pytorch fp32 cpu"


def _sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()


def probe_inputs(arch: str, size: tuple[int, int], frames: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """The fixed inputs every reference is recorded on, and their description (with a sha256).
    ``frames``: normalised random uint8 pixels, for files whose input form is a frame."""
    spec = get_spec(arch)
    if spec.pretrained.bundled and size == (spec.pretrained.input_size,) * 2:
        images, _ = data.digits("test")
        transform = data.Transform.from_pretrained(spec.pretrained, *size)
        x = data.digits_batch(images[: 2 * PROBE_COUNT], transform)
        described: dict[str, Any] = {"kind": "bundled digits (test split)", "count": len(x)}
    elif frames:
        x = data.random_frames(PROBE_COUNT, size, spec.pretrained.mean, spec.pretrained.std, PROBE_SEED)
        described = {"kind": "random frames", "count": len(x), "seed": PROBE_SEED}
    else:
        x = data.random_inputs(PROBE_COUNT, size, PROBE_SEED)
        described = {"kind": "random", "count": len(x), "seed": PROBE_SEED}
    return x, described | {"shape": list(x.shape), "sha256": _sha256(x)}


def record(logits: np.ndarray, inputs: dict[str, Any]) -> dict[str, Any]:
    """The ``reference`` entry of an artifact's metadata."""
    logits = np.ascontiguousarray(logits, np.float32)
    return {
        "runtime": RUNTIME,
        "inputs": inputs,
        "logits_shape": list(logits.shape),
        "logits": base64.b64encode(logits.tobytes()).decode(),
    }


def recorded(
    meta: dict[str, Any], name: str, input_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(inputs, expected logits, inputs' description) from an artifact's checked metadata, whose
    probe must be of the file's own ``input_size``."""
    ref = meta.get("reference")
    fix = "re-export it with this version, or check it where PyTorch is installed (resnest-deploy[export])"
    if not isinstance(ref, dict):
        raise ArtifactError(f"{name} carries no recorded reference outputs; {fix}")
    try:  # every number bounded and checked before anything is allocated from it
        shape = [int(v) for v in ref["logits_shape"]]
        probe = [int(v) for v in ref["inputs"]["shape"]]
        arch = str(meta["arch"])
        if len(shape) != 2 or not 1 <= shape[0] <= MAX_PROBE or not 1 <= shape[1] <= 100_000:
            raise ValueError(f"logits shape {shape}")
        if len(probe) != 4 or probe[0] != shape[0] or probe[1] != 3:
            raise ValueError(f"probe shape {probe}")
        size = (probe[2], probe[3])
        if input_size is not None and size != tuple(input_size):
            raise ValueError(
                f"probe of {size[0]}x{size[1]} for a file that takes {input_size[0]}x{input_size[1]}"
            )
        if not all(1 <= v <= 4096 for v in size):
            raise ValueError(f"probe size {size}")
        raw = base64.b64decode(ref["logits"], validate=True)
        if len(raw) != 4 * shape[0] * shape[1]:
            raise ValueError(f"{len(raw)} bytes of logits for shape {shape}")
        expected = np.frombuffer(raw, np.float32).reshape(shape)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{name}'s recorded reference is malformed ({first_line(e, 120)}); {fix}") from e
    if not np.isfinite(expected).all():
        raise ArtifactError(f"{name}'s recorded reference holds NaN or Inf; {fix}")
    frames = ref["inputs"].get("kind") == "random frames"
    x, described = probe_inputs(arch, (size[0], size[1]), frames=frames)
    if described["sha256"] != ref["inputs"].get("sha256") or len(x) != shape[0]:
        raise ArtifactError(
            f"the probe inputs regenerated here differ from those {name} was recorded on (another "
            f"NumPy or data version); {fix}"
        )
    return x, expected, described


#: what a recorded check proves, said wherever one is made
RECORDED_CAVEAT = (
    "a recorded reference lives in the file it checks: this proves the runtime reproduces the file's own "
    "record, not that the file still matches its weights (keep one apart: export --reference-out ref.npz, "
    "check --reference ref.npz)"
)
MAX_REFERENCE_BYTES = 64 * 2**20


def save(path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """The reference an export recorded, as a file to keep apart from the artifact (``.npz``: the
    logits and a JSON description; no pickles)."""
    from resnest_deploy._io import atomic_path

    ref = meta.get("reference")
    if not isinstance(ref, dict):
        raise ArtifactError("this export recorded no reference outputs to save")
    logits = np.frombuffer(base64.b64decode(ref["logits"]), np.float32).reshape(ref["logits_shape"])
    described = {"arch": meta.get("arch"), "runtime": ref["runtime"], "inputs": ref["inputs"]}
    path = Path(path)
    if path.suffix != ".npz":
        raise ArtifactError(f"{path} must end in .npz")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, logits=logits, meta=np.array(json.dumps(described)))
    return path


def load(
    path: str | os.PathLike[str], input_size: tuple[int, int] | None = None, arch: str | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(inputs, expected logits, description) from a reference file saved by :func:`save`; the file is
    untrusted: no pickles, bounded, and checked as strictly as a recorded reference."""
    path = Path(path)
    fix = "save it again with export --reference-out"
    try:
        if path.stat().st_size > MAX_REFERENCE_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes")
        with np.load(path, allow_pickle=False) as npz:
            logits = np.asarray(npz["logits"], np.float32)
            described = json.loads(str(npz["meta"][()]))
    except FileNotFoundError:
        raise ArtifactError(f"reference file not found: {path}; check the path") from None
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ArtifactError(f"{path} is not a reference file ({first_line(e, 100)}); {fix}") from e
    if not isinstance(described, dict) or not isinstance(described.get("inputs"), dict):
        raise ArtifactError(f"{path} describes no probe inputs; {fix}")
    if arch is not None and described.get("arch") != arch:
        raise ArtifactError(
            f"{path} holds the reference of {described.get('arch')!r}, not {arch}; give the right file"
        )
    meta = {
        "arch": described.get("arch"),
        "reference": {
            "runtime": described.get("runtime"),
            "inputs": described["inputs"],
            "logits_shape": list(logits.shape),
            "logits": base64.b64encode(logits.tobytes()).decode(),
        },
    }
    return recorded(meta, str(path), input_size)
