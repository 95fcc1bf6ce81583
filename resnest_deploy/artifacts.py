"""What check, bench, predict and eval share: what an artifact is, its reference model, its inputs.

:class:`Artifact` (``describe``) is the one description of an artifact; ``interface.Io`` is its
inputs and outputs, ``inspection`` adds what only ``inspect`` shows. No torch and no backend is
imported here: runners are opened through ``loaders`` when asked for.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnest_deploy import data, formats, interface, metadata
from resnest_deploy.errors import ArtifactError
from resnest_deploy.limits import check_positive, check_tensor
from resnest_deploy.models import WeightsInfo, get_spec, load_model

if TYPE_CHECKING:
    from resnest_deploy.runners.base import Runner
    from resnest_deploy.runners.options import RunnerOptions

RANDOM_SEED = 0
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
TORCH_NAMES = ("torch", "pytorch", "torch:cpu", "torch:cuda")


def artifact_kind(artifact: str | os.PathLike[str]) -> str:
    """'torch', 'onnx' or 'engine'; anything else is refused with the accepted forms."""
    text = os.fspath(artifact)
    if text in TORCH_NAMES:
        return "torch"
    suffix = Path(text).suffix.lower()
    if suffix == ".onnx":
        kind = "onnx"
    elif suffix in ENGINE_SUFFIXES:
        kind = "engine"
    else:
        raise ArtifactError(
            f"cannot tell what {text!r} is; give a .onnx file, a .plan/.engine file, "
            "or 'torch' / 'torch:cuda'"
        )
    if not Path(text).is_file():
        raise ArtifactError(f"{kind} file not found: {text}; check the path")
    return kind


@dataclass(frozen=True)
class Artifact:
    """The one answer to "what is this artifact?": its kind, what it says about itself (checked),
    its sidecar, its inputs and outputs. Each part is read when first asked for, once; use
    :func:`describe` for a description whose metadata is checked up front."""

    name: str  # as the user gave it: a path, or "torch[:device]"
    kind: str  # torch, onnx, engine

    @classmethod
    def at(cls, artifact: str | os.PathLike[str]) -> Artifact:
        """The artifact at ``artifact``, nothing read yet but its kind (the file must exist)."""
        return cls(os.fspath(artifact), artifact_kind(artifact))

    @classmethod
    def of(cls, artifact: str | os.PathLike[str]) -> Artifact:
        return describe(artifact)

    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        """Everything the file says about itself, checked: the ONNX file's embedded metadata (its
        precision label must agree with the graph), else its sidecar; ``{}`` for torch."""
        if self.kind == "torch":
            return {}
        if self.kind == "engine":
            return self.sidecar or {}
        return metadata.checked_onnx_meta(Path(self.name), lambda: self.sidecar)

    @functools.cached_property
    def sidecar(self) -> dict[str, Any] | None:
        """The sidecar ``FILE.json``, checked to describe these very bytes; None when there is none."""
        return None if self.kind == "torch" else metadata.read_sidecar(self.name)

    @property
    def verified(self) -> bool:
        """Whether a sidecar vouches for these very bytes (it records their sha256, which matched)."""
        return bool(((self.sidecar or {}).get("file") or {}).get("sha256"))

    @functools.cached_property
    def sha256(self) -> str:
        from resnest_deploy._io import sha256_file

        return sha256_file(self.name)

    @functools.cached_property
    def io(self) -> interface.Io:
        """The input and output as the file defines them (graph, or an engine's verified sidecar)."""
        return interface.of(Path(self.name), self.kind, self.meta)

    @property
    def arch(self) -> str | None:
        return self.meta.get("arch")

    @property
    def precision(self) -> str:
        return str(self.meta.get("precision", "fp32"))

    @property
    def weights(self) -> dict[str, Any] | None:
        return self.meta.get("weights")

    @property
    def form(self) -> formats.InputForm:
        return formats.InputForm.of(self.meta)

    @property
    def input_size(self) -> tuple[int, int] | None:
        inp = self.meta.get("input") or {}
        shape = inp.get("shape") or inp.get("profile", {}).get("opt")
        if not shape or len(shape) != 4:
            return None
        h, w = self.form.hw(shape)
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None


#: the name the description had before it was one (imports in serving, deepstream and tests)
ArtifactInfo = Artifact


def describe(artifact: str | os.PathLike[str]) -> Artifact:
    """What ``artifact`` is, its metadata checked now (a lying or malformed file is refused here)."""
    found = Artifact.at(artifact)
    _ = found.meta
    return found


def deployable(artifact: str | os.PathLike[str], purpose: str) -> Artifact:
    """A file resnest-deploy made (an .onnx file or an engine), for ``purpose`` ("a Triton model")."""
    info = describe(artifact)
    if info.kind == "torch":
        raise ArtifactError(f"{purpose} needs a file: an .onnx file or a .plan engine")
    if not info.arch:
        raise ArtifactError(f"{artifact} has no resnest-deploy metadata; export it with resnest-deploy")
    return info


def resolve_arch(arch: str | None, infos: Sequence[Artifact]) -> str:
    """The arch the user named, or the one the artifacts record; a disagreement is an error."""
    recorded = {i.arch for i in infos if i.arch}
    if arch:
        get_spec(arch)
        for info in infos:
            if info.arch and info.arch != arch:
                raise ArtifactError(
                    f"{info.name} was made from {info.arch}, not {arch}; "
                    f"pass {{arch={info.arch}}} or the right file",
                    param="arch",
                )
        return arch
    if len(recorded) == 1:
        return recorded.pop()
    if not recorded:
        raise ArtifactError(
            "cannot tell the arch: the artifacts carry no resnest-deploy metadata; pass {arch}", param="arch"
        )
    raise ArtifactError(
        f"the artifacts come from different archs ({', '.join(sorted(recorded))}); check them apart"
    )


def recorded_weights(infos: Sequence[Artifact]) -> WeightsInfo | str:
    """Weights to rebuild the PyTorch reference with, as the first artifact's metadata records them
    (untrusted: ``load_model`` checks them against their recorded sha256 and fetches no URL)."""
    for info in infos:
        w = info.weights or {}
        if w.get("kind") in ("random", "pretrained", "file", "url"):
            return WeightsInfo(str(w["kind"]), w.get("location"), w.get("sha256"))
    return "pretrained"


def input_size(arch: str, infos: Sequence[Artifact]) -> tuple[int, int]:
    sizes = {i.input_size for i in infos if i.input_size}
    if len(sizes) > 1:
        raise ArtifactError(
            f"the artifacts take different input sizes ({sorted(sizes)}); compare like with like"
        )
    return sizes.pop() if sizes else (get_spec(arch).pretrained.input_size,) * 2


def runner_for(info: Artifact, model: Any = None, options: RunnerOptions | None = None) -> Runner:
    """A runner for ``info`` that takes normalised NCHW inputs, whatever form the file takes."""
    from resnest_deploy.loaders import open_runner
    from resnest_deploy.runners.base import InputFormatAdapter

    runner = open_runner(info.name, options, model=model)
    form = info.form
    return runner if form.name == "float" else InputFormatAdapter(runner, form.from_normalised)


def weights_note(artifacts: Sequence[str | os.PathLike[str]], weights: str | None = None) -> str | None:
    """``metadata.RANDOM_WEIGHTS_NOTE`` when the artifacts were made from random weights (or
    ``--weights random`` is given): every figure or prediction shown for them must say so."""
    chosen = weights or recorded_weights([describe(a) for a in artifacts])
    kind = chosen.kind if isinstance(chosen, WeightsInfo) else chosen
    return metadata.RANDOM_WEIGHTS_NOTE if kind == "random" else None


@dataclass
class Lineup:
    """Artifacts run side by side: what each is, their common arch and input size, and the PyTorch
    model (built only when ``torch`` is in the line-up or a reference is asked for)."""

    infos: list[Artifact]
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
        infos = [describe(a) for a in artifacts]
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
        return any(i.form.takes_frames for i in self.infos)

    @property
    def transform(self) -> data.Transform:
        return data.Transform.from_pretrained(get_spec(self.arch).pretrained, *self.size)

    def runner(self, info: Artifact, options: RunnerOptions | None = None) -> Runner:
        """A runner for ``info`` that takes normalised NCHW inputs, whatever form the file takes."""
        return runner_for(info, self.model, options)

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
