"""The 19 published ResNeSt variants, and a small bundled one, as data: arch, weights, eval transform."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from resnest_deploy.errors import UnknownArchError
from resnest_deploy.models.config import RESNEST_PARTS, ArchConfig, ModelParts

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_RELEASES = "https://github.com/zhanghang1989/ResNeSt/releases/download/weights_step1"


@dataclass(frozen=True)
class PretrainedCfg:
    """Where the published weights live and how their authors evaluated them."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    file: str | None = None  # official release file name, `<arch>-<sha256[:8]>.pth`
    hf_hub_id: str | None = None  # timm's Hugging Face repo
    bundled: str | None = None  # a file in resnest_deploy/data, shipped with the package

    @property
    def source(self) -> str:
        if self.bundled:
            return "bundled"
        return "official" if self.file else "timm"

    @property
    def url(self) -> str:
        if self.bundled:
            return f"resnest_deploy/data/{self.bundled}"
        if self.file:
            return f"{OFFICIAL_RELEASES}/{self.file}"
        return f"https://huggingface.co/{self.hf_hub_id}"

    @property
    def resize_size(self) -> int:
        """Shorter side before the centre crop, as timm computes it."""
        return int(self.input_size / self.crop_pct)


#: The sklearn digits, 8x8 grey upsampled to 32x32 RGB; see scripts/train_digits.py.
DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: ArchConfig
    pretrained: PretrainedCfg
    description: str = field(default="", compare=False)


_R50 = (3, 4, 6, 3)
_R101 = (3, 4, 23, 3)
_R200 = (3, 24, 36, 3)
_R269 = (3, 30, 48, 8)


def _official(name: str, sha8: str, arch: ArchConfig, input_size: int = 224) -> ModelSpec:
    cfg = PretrainedCfg(input_size=input_size, file=f"{name}-{sha8}.pth")
    return ModelSpec(name, arch, cfg, "official ResNeSt (zhanghang1989/ResNeSt)")


def _fast(radix: int, cardinality: int, width: int, sha8: str) -> ModelSpec:
    name = f"resnest50_fast_{radix}s{cardinality}x{width}d"
    arch = ArchConfig(_R50, 32, radix, cardinality, width, avd_first=True)
    return _official(name, sha8, arch)


def _timm(
    name: str,
    tag: str,
    arch: ArchConfig,
    input_size: int = 224,
    crop_pct: float = 0.875,
    interpolation: str = "bilinear",
) -> ModelSpec:
    cfg = PretrainedCfg(
        input_size=input_size,
        crop_pct=crop_pct,
        interpolation=interpolation,
        hf_hub_id=f"timm/{name}.{tag}",
    )
    return ModelSpec(name, arch, cfg, "timm port")


_SPECS = [
    _official("resnest50", "528c19ca", ArchConfig(_R50, 32)),
    _official("resnest101", "22405ba7", ArchConfig(_R101, 64), 256),
    _official("resnest200", "75117900", ArchConfig(_R200, 64), 320),
    _official("resnest269", "0cc87c48", ArchConfig(_R269, 64), 416),
    _fast(1, 1, 64, "d8fbf808"),
    _fast(1, 2, 40, "32830b84"),
    _fast(1, 4, 24, "d4a4f76f"),
    _fast(2, 1, 64, "44938639"),
    _fast(2, 2, 40, "9d126481"),
    _fast(4, 1, 64, "f74f3fc3"),
    _fast(4, 2, 40, "41d14ed0"),
    _timm("resnest14d", "gluon_in1k", ArchConfig((1, 1, 1, 1), 32)),
    _timm("resnest26d", "gluon_in1k", ArchConfig((2, 2, 2, 2), 32)),
    _timm("resnest50d", "in1k", ArchConfig(_R50, 32)),
    _timm("resnest101e", "in1k", ArchConfig(_R101, 64), 256),
    _timm("resnest200e", "in1k", ArchConfig(_R200, 64), 320, 0.909, "bicubic"),
    _timm("resnest269e", "in1k", ArchConfig(_R269, 64), 416, 0.928, "bicubic"),
    _timm("resnest50d_1s4x24d", "in1k", ArchConfig(_R50, 32, 1, 4, 24, True), interpolation="bicubic"),
    _timm("resnest50d_4s2x40d", "in1k", ArchConfig(_R50, 32, 4, 2, 40, True), interpolation="bicubic"),
    ModelSpec(
        "resnest14d_digits",
        ArchConfig((1, 1, 1, 1), 16, num_classes=10, widths=(16, 32, 64, 128)),
        PretrainedCfg(
            input_size=32,
            crop_pct=1.0,
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            num_classes=10,
            bundled="resnest14d_digits.safetensors",
        ),
        "resnest14d at 1/4 width trained on sklearn's digits; ships with the package, for offline demos",
    ),
]


def _build_registry(specs: list[ModelSpec]) -> dict[str, ModelSpec]:
    registry: dict[str, ModelSpec] = {}
    for spec in specs:
        if spec.name in registry:
            raise ValueError(f"duplicate model name {spec.name!r} in the registry")
        registry[spec.name] = spec
    return registry


_REGISTRY = _build_registry(_SPECS)


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_spec(arch: str) -> ModelSpec:
    try:
        return _REGISTRY[arch]
    except KeyError:
        close = difflib.get_close_matches(arch, _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `resnest-deploy models`."
        raise UnknownArchError(f"unknown arch {arch!r}; {hint}") from None


def parts(arch: str | None = None) -> ModelParts:
    """The names of ``arch``'s parts; the ResNeSt family's for an arch this registry does not know
    (a file exported elsewhere, or one that records no arch): node names are all they go by."""
    spec = _REGISTRY.get(arch) if arch else None
    return spec.arch.parts if spec is not None else RESNEST_PARTS
