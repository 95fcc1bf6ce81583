"""What a network is and where its weights came from, as plain data: no torch needed to read them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchConfig:
    """Everything that shapes the network; a variant is just one of these."""

    layers: tuple[int, int, int, int]
    stem_width: int = 32
    radix: int = 2
    cardinality: int = 1
    base_width: int = 64
    avd_first: bool = False
    num_classes: int = 1000
    #: planes per stage (x4 out); narrower than ResNet's only for the small digits model
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)


@dataclass(frozen=True)
class WeightsInfo:
    """Provenance recorded in every artifact's sidecar."""

    kind: str  # "random", "pretrained", "file" or "url"
    location: str | None = None  # URL or path the tensors came from
    sha256: str | None = None

    def describe(self) -> str:
        return self.kind if self.location is None else f"{self.kind}:{self.location}"
