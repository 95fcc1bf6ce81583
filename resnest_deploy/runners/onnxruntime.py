"""ONNX Runtime, on CPU or through its CUDA / TensorRT execution providers."""

from __future__ import annotations

import os

import numpy as np

from resnest_deploy import _deps
from resnest_deploy.errors import ArtifactError, first_line
from resnest_deploy.runners.base import Runner

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file or serialized model; the input's dtype follows the graph (fp16 I/O works)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        provider: str = "cpu",
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        label = "<in-memory>" if isinstance(model, bytes) else os.fspath(model)
        super().__init__(name or f"onnxruntime-{provider}:{label}")
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        self.backend = f"onnxruntime-{provider}"
        self.model = model
        self.provider = provider
        self.threads = threads

    def activate_impl(self) -> None:
        ort = _deps.require("onnxruntime")
        available = ort.get_available_providers()
        if PROVIDERS[self.provider][0] not in available:
            raise ArtifactError(
                f"onnxruntime has no {PROVIDERS[self.provider][0]} here (available: {', '.join(available)}); "
                "use --provider cpu or install onnxruntime-gpu with CUDA"
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        model = self.model if isinstance(self.model, bytes) else os.fspath(self.model)
        try:
            self.session = ort.InferenceSession(model, opts, providers=PROVIDERS[self.provider])
        except Exception as e:
            first = first_line(e)
            raise ArtifactError(f"onnxruntime cannot load {self.name.split(':', 1)[-1]}: {first}") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[:1]
        return np.asarray(out, dtype=np.float32)

    def deactivate_impl(self) -> None:
        del self.session
