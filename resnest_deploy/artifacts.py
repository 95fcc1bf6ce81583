"""What check, bench, predict and eval share: what an artifact is, its reference model, its inputs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import data, formats, metadata
from resnest_deploy.errors import ArtifactError
from resnest_deploy.limits import check_positive, check_tensor
from resnest_deploy.models import WeightsInfo, get_spec, load_model
from resnest_deploy.runners import Runner, artifact_kind, open_runner
from resnest_deploy.runners.base import InputFormatAdapter

RANDOM_SEED = 0


@dataclass(frozen=True)
class ArtifactInfo:
    name: str  # as the user gave it: a path, or "torch[:device]"
    kind: str  # torch, onnx, engine
    arch: str | None
    precision: str
    input_size: tuple[int, int] | None
    weights: dict[str, Any] | None
    meta: dict[str, Any]  # everything the file says about itself, checked

    @classmethod
    def of(cls, artifact: str | os.PathLike[str]) -> ArtifactInfo:
        kind = artifact_kind(artifact)
        meta = {} if kind == "torch" else metadata.of_artifact(artifact)
        size = None
        shape = (meta.get("input") or {}).get("shape") or (meta.get("input") or {}).get("profile", {}).get(
            "opt"
        )
        if shape and len(shape) == 4:
            h, w = formats.InputForm.of(meta).hw(shape)
            size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        return cls(
            os.fspath(artifact),
            kind,
            meta.get("arch"),
            meta.get("precision", "fp32"),
            size,
            meta.get("weights"),
            meta,
        )


def deployable(artifact: str | os.PathLike[str], purpose: str) -> ArtifactInfo:
    """A file resnest-deploy made (an .onnx file or an engine), for ``purpose`` ("a Triton model")."""
    info = ArtifactInfo.of(artifact)
    if info.kind == "torch":
        raise ArtifactError(f"{purpose} needs a file: an .onnx file or a .plan engine")
    if not info.arch:
        raise ArtifactError(f"{artifact} has no resnest-deploy metadata; export it with resnest-deploy")
    return info


def resolve_arch(arch: str | None, infos: Sequence[ArtifactInfo]) -> str:
    """The arch the user named, or the one the artifacts record; a disagreement is an error."""
    recorded = {i.arch for i in infos if i.arch}
    if arch:
        get_spec(arch)
        for info in infos:
            if info.arch and info.arch != arch:
                raise ArtifactError(
                    f"{info.name} was made from {info.arch}, not {arch}; "
                    f"pass --arch {info.arch} or the right file"
                )
        return arch
    if len(recorded) == 1:
        return recorded.pop()
    if not recorded:
        raise ArtifactError(
            "cannot tell the arch: the artifacts carry no resnest-deploy metadata; pass --arch"
        )
    raise ArtifactError(
        f"the artifacts come from different archs ({', '.join(sorted(recorded))}); check them apart"
    )


def recorded_weights(infos: Sequence[ArtifactInfo]) -> WeightsInfo | str:
    """Weights to rebuild the PyTorch reference with, as the first artifact's metadata records them
    (untrusted: ``load_model`` checks them against their recorded sha256 and fetches no URL)."""
    for info in infos:
        w = info.weights or {}
        if w.get("kind") in ("random", "pretrained", "file", "url"):
            return WeightsInfo(str(w["kind"]), w.get("location"), w.get("sha256"))
    return "pretrained"


def input_size(arch: str, infos: Sequence[ArtifactInfo]) -> tuple[int, int]:
    sizes = {i.input_size for i in infos if i.input_size}
    if len(sizes) > 1:
        raise ArtifactError(
            f"the artifacts take different input sizes ({sorted(sizes)}); compare like with like"
        )
    return sizes.pop() if sizes else (get_spec(arch).pretrained.input_size,) * 2


def runner_for(info: ArtifactInfo, model: Any = None, provider: str = "cpu", **kwargs: Any) -> Runner:
    """A runner for ``info`` that takes normalised NCHW inputs, whatever form the file takes."""
    runner = open_runner(info.name, model=model, provider=provider, **kwargs)
    form = formats.InputForm.of(info.meta)
    return runner if form.name == "float" else InputFormatAdapter(runner, form.from_normalised)


def weights_note(artifacts: Sequence[str | os.PathLike[str]], weights: str | None = None) -> str | None:
    """``metadata.RANDOM_WEIGHTS_NOTE`` when the artifacts were made from random weights (or
    ``--weights random`` is given): every figure or prediction shown for them must say so."""
    chosen = weights or recorded_weights([ArtifactInfo.of(a) for a in artifacts])
    kind = chosen.kind if isinstance(chosen, WeightsInfo) else chosen
    return metadata.RANDOM_WEIGHTS_NOTE if kind == "random" else None


@dataclass
class Lineup:
    """Artifacts run side by side: what each is, their common arch and input size, and the PyTorch
    model (built only when ``torch`` is in the line-up or a reference is asked for)."""

    infos: list[ArtifactInfo]
    arch: str
    size: tuple[int, int]
    weights: str
    model: Any

    @classmethod
    def of(
        cls,
        artifacts: Sequence[str | os.PathLike[str]],
        arch: str | None = None,
        weights: str | None = None,
        *,
        reference: bool = False,
        build_model: bool = True,
    ) -> Lineup:
        """``weights`` defaults to what the artifacts record, so the reference is the checkpoint
        they were made from. ``build_model=False`` leaves the PyTorch model to whoever runs it (an
        executor's worker builds its own: a module does not travel)."""
        infos = [ArtifactInfo.of(a) for a in artifacts]
        arch = resolve_arch(arch, infos)
        chosen = weights or recorded_weights(infos)
        needed = reference or (build_model and any(i.kind == "torch" for i in infos))
        model = load_model(arch, chosen)[0] if needed else None
        label = chosen if isinstance(chosen, str) else chosen.location or chosen.kind
        if isinstance(chosen, WeightsInfo) and chosen.kind in ("random", "pretrained"):
            label = chosen.kind
        return cls(infos, arch, input_size(arch, infos), label, model)

    @property
    def note(self) -> str | None:
        """What every figure of this line-up must say: made from random weights."""
        return metadata.RANDOM_WEIGHTS_NOTE if self.weights == "random" else None

    @property
    def takes_frames(self) -> bool:
        """Some file in the line-up takes uint8 frames rather than normalised floats."""
        return any(formats.InputForm.of(i.meta).takes_frames for i in self.infos)

    @property
    def transform(self) -> data.Transform:
        return data.Transform.from_pretrained(get_spec(self.arch).pretrained, *self.size)

    def runner(self, info: ArtifactInfo, provider: str = "cpu", **kwargs: Any) -> Runner:
        """A runner for ``info`` that takes normalised NCHW inputs, whatever form the file takes."""
        return runner_for(info, self.model, provider, **kwargs)

    def inputs(
        self,
        images: str | os.PathLike[str] | None,
        count: int,
        seed: int = RANDOM_SEED,
        advance: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Real images preprocessed as the arch expects, or seeded random ones; and a description.

        A model that ships its own data (the digits) uses its test split rather than noise. The
        description's ``count`` is the number of inputs really returned.
        """
        check_positive(count, "count")
        check_tensor(count, self.size, "count")
        if images is None and get_spec(self.arch).pretrained.bundled:
            test, _ = data.digits("test")
            x = data.digits_batch(test[:count], self.transform)
            return x, {"kind": "bundled digits (test split)", "count": len(x)}
        if images is None and self.takes_frames:  # values a frame can hold, so every form agrees
            p = get_spec(self.arch).pretrained
            x = data.random_frames(count, self.size, p.mean, p.std, seed)
            return x, {"kind": "random frames", "count": count, "seed": seed}
        if images is None:
            x = data.random_inputs(count, self.size, seed)
            return x, {"kind": "random", "count": count, "seed": seed}
        paths = data.sample(data.find_images(images), count, seed)
        loaded = data.load_images(paths, self.transform, advance)
        if not len(loaded.array):
            raise ArtifactError(f"no decodable images under {images}; give a folder of jpg/png/webp files")
        return loaded.array, {
            "kind": "images",
            "path": str(Path(images).resolve()),
            "count": len(loaded.array),
            "skipped": [f"{p}: {why}" for p, why in loaded.skipped],
        }
