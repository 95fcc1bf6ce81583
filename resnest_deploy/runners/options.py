"""How to run an artifact: one small, picklable options object for every backend.

Polygraphy's runners take what they run plus a few settings; these are ours. ``backend`` says which
runtime runs the file (``provider`` is only ONNX Runtime's execution provider), and
:meth:`RunnerOptions.from_provider` is the one place where the CLI's ``--provider`` values (which
also name OpenVINO) become options. Nothing here imports a backend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from resnest_deploy.errors import ArtifactError

#: runtimes that run an artifact; "auto" follows the artifact (.onnx: ONNX Runtime, engine: TensorRT)
BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")
#: ONNX Runtime execution providers, by the short name used everywhere
ORT_PROVIDERS = ("cpu", "cuda", "tensorrt")
#: the CLI's provider values that run .onnx files in OpenVINO, and what OpenVINO computes in
OPENVINO_PROVIDERS = {"openvino": "f32", "openvino-bf16": "bf16"}
OV_PRECISIONS = ("f32", "bf16")
OV_HINTS = ("latency", "throughput")


@dataclass(frozen=True, kw_only=True)
class RunnerOptions:
    """Everything a loader needs besides the artifact; picklable, so it travels to workers.

    ``fake_quant`` runs an INT8 file's Q/DQ pairs as float ops (TensorRT's arithmetic, the same on
    every CPU) instead of ONNX Runtime's fused int8 kernels. ``cache``: hand the runtime its
    compiled-model folder from the cache registry. ``batch`` is the inference batch of a worker
    (same runner, same batch: same logits)."""

    backend: str = "auto"
    provider: str = "cpu"
    threads: int | None = None
    batch: int = 16
    device: int = 0
    cache: bool = True
    cuda_graphs: bool = False
    ov_hint: str = "latency"
    ov_precision: str = "f32"
    fake_quant: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ArtifactError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.provider not in ORT_PROVIDERS:
            raise ArtifactError(
                f"unknown provider {self.provider!r}; choose one of {', '.join(ORT_PROVIDERS)}"
            )
        if self.ov_precision not in OV_PRECISIONS:
            raise ArtifactError(f"unknown OpenVINO precision {self.ov_precision!r}; choose f32 or bf16")
        if self.fake_quant and (self.backend not in ("auto", "onnxruntime") or self.provider != "cpu"):
            raise ArtifactError(
                "TensorRT's arithmetic (Q/DQ as float ops) runs in ONNX Runtime on the CPU; use provider cpu"
            )
        if self.ov_hint not in OV_HINTS:
            raise ArtifactError(f"unknown performance hint {self.ov_hint!r}; choose {' or '.join(OV_HINTS)}")

    @classmethod
    def from_provider(cls, provider: str = "cpu", **fields: Any) -> RunnerOptions:
        """The options a CLI ``--provider`` value means: an ONNX Runtime provider, or OpenVINO."""
        if provider in OPENVINO_PROVIDERS:
            return cls(backend="openvino", ov_precision=OPENVINO_PROVIDERS[provider], **fields)
        if provider not in ORT_PROVIDERS:
            choices = ", ".join((*ORT_PROVIDERS, *OPENVINO_PROVIDERS))
            raise ArtifactError(f"unknown provider {provider!r}; choose one of {choices}")
        return cls(provider=provider, **fields)

    @property
    def provider_name(self) -> str:
        """The ``--provider`` value these options came from (what messages name)."""
        if self.backend == "openvino":
            return next(k for k, v in OPENVINO_PROVIDERS.items() if v == self.ov_precision)
        return self.provider

    def but(self, **changes: Any) -> RunnerOptions:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)
