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
from typing import Any

import numpy as np

from resnest_deploy import data
from resnest_deploy.errors import ArtifactError
from resnest_deploy.models.registry import get_spec

PROBE_COUNT = 8
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
        transform = data.Transform.from_pretrained(spec.pretrained, size[0])
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


def recorded(meta: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(inputs, expected logits, inputs' description) from an artifact's checked metadata."""
    ref = meta.get("reference")
    fix = "re-export it with this version, or check it where PyTorch is installed (resnest-deploy[export])"
    if not isinstance(ref, dict):
        raise ArtifactError(f"{name} carries no recorded reference outputs; {fix}")
    try:
        shape = [int(v) for v in ref["logits_shape"]]
        expected = np.frombuffer(base64.b64decode(ref["logits"], validate=True), np.float32)
        expected = expected.reshape(shape)
        size = tuple(int(v) for v in ref["inputs"]["shape"][2:])
        arch = str(meta["arch"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{name}'s recorded reference is malformed ({e}); {fix}") from e
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
