"""ResNeSt architectures, their registry and checkpoint loading.

>>> from resnest_deploy.models import create_model, list_models
>>> model = create_model("resnest14d")                # seeded random init, no network
>>> model = create_model("resnest50", "pretrained")   # official weights, cached and verified
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from resnest_deploy.models.config import ArchConfig, ModelParts, WeightsInfo
from resnest_deploy.models.registry import ModelSpec, PretrainedCfg, get_spec, list_models, parts

if TYPE_CHECKING:
    from resnest_deploy.models.resnest import ResNeSt

__all__ = [
    "ArchConfig",
    "ModelParts",
    "ModelSpec",
    "PretrainedCfg",
    "ResNeSt",
    "WeightsInfo",
    "count_params",
    "create_model",
    "get_spec",
    "list_models",
    "load_model",
    "parts",
]

RANDOM_SEED = 0


def load_model(
    arch: str,
    weights: str | os.PathLike[str] | WeightsInfo | None = None,
    *,
    num_classes: int | None = None,
) -> tuple[ResNeSt, WeightsInfo]:
    """Build ``arch`` in eval mode with ``weights`` and say where they came from.

    ``weights`` may be what an artifact records (a :class:`WeightsInfo`): then the checkpoint must
    be the one recorded (sha256), and a recorded URL is never downloaded.

    The class count follows the checkpoint when not given, so a fine-tuned head loads as it is.
    """
    import torch

    from resnest_deploy.models import weights as _weights
    from resnest_deploy.models.resnest import ResNeSt

    spec = get_spec(arch)
    state_dict, info = _weights.resolve(spec, weights)
    if num_classes is None and state_dict is not None and "fc.bias" in state_dict:
        num_classes = int(state_dict["fc.bias"].shape[0])
    cfg = spec.arch if num_classes is None else dataclasses.replace(spec.arch, num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)  # "random" weights are the same on every run
        model = ResNeSt(cfg)
    if state_dict is not None:
        _weights.check_fits(model, state_dict, arch)
        model.load_state_dict(state_dict, strict=True)
    model.arch = arch
    return model.eval(), info


def create_model(
    arch: str, weights: str | os.PathLike[str] | None = None, *, num_classes: int | None = None
) -> ResNeSt:
    """A ResNeSt in eval mode; ``weights``: None/"random", "pretrained", a local file or a URL."""
    return load_model(arch, weights, num_classes=num_classes)[0]


def count_params(arch: str) -> int:
    """Parameter count from the config alone (no torch, no weights built)."""
    return get_spec(arch).arch.num_params()


def __getattr__(name: str) -> Any:
    """``ResNeSt`` needs torch: it is imported on first use, so the registry loads without it."""
    if name == "ResNeSt":
        from resnest_deploy.models.resnest import ResNeSt

        return ResNeSt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
