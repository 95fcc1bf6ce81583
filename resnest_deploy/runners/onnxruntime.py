"""ONNX Runtime, on CPU or through its CUDA / TensorRT execution providers."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import numpy as np

from resnest_deploy import _deps
from resnest_deploy.errors import ArtifactError, first_line
from resnest_deploy.runners.base import Runner

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


_INPUT_DTYPES = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def _loadable(path: str) -> str | bytes:
    """ONNX Runtime takes a path only as UTF-8 text; a file whose name is not (bytes a filesystem
    allows) is handed over as its bytes, when its weights are inside it."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    from resnest_deploy._io import external_tensors, load_onnx

    if any(True for _ in external_tensors(load_onnx(path))):
        raise ArtifactError(
            f"{path.encode('utf-8', 'surrogateescape')!r} is not a UTF-8 name and keeps its weights in "
            "external files; rename it"
        )
    with open(path, "rb") as f:
        return f.read()


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file or serialized model; the input's dtype follows the graph (fp16, uint8)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        provider: str = "cpu",
        threads: int | None = None,
        name: str | None = None,
        device: int = 0,
    ) -> None:
        label = "<in-memory>" if isinstance(model, bytes) else os.fspath(model)
        super().__init__(name or f"onnxruntime-{provider}:{label}")
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        self.backend = f"onnxruntime-{provider}"
        self.model = model
        self.provider = provider
        self.threads = threads
        self.device = device  # the GPU for the cuda and tensorrt providers

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
        model = self.model if isinstance(self.model, bytes) else _loadable(os.fspath(self.model))
        ort.set_default_logger_severity(4)  # a provider that fails to load logs to the console, and
        try:  # onnxruntime print()s an "EP Error" banner: keep stdout clean for --json, report it below
            with contextlib.redirect_stdout(sys.stderr):
                providers: list[Any] = list(PROVIDERS[self.provider])
                if self.provider != "cpu":
                    providers = [
                        (p, {"device_id": self.device}) if p != "CPUExecutionProvider" else p
                        for p in providers
                    ]
                self.session = ort.InferenceSession(model, opts, providers=providers)
        except Exception as e:
            first = first_line(e)
            raise ArtifactError(f"onnxruntime cannot load {self.name.split(':', 1)[-1]}: {first}") from e
        active = self.session.get_providers()
        if active[0] != PROVIDERS[self.provider][0]:  # ONNX Runtime falls back to the CPU in silence
            del self.session
            raise ArtifactError(
                f"onnxruntime could not start {PROVIDERS[self.provider][0]} (no usable GPU, or its CUDA "
                f"libraries are missing) and would run on {active[0]}; use --provider cpu"
            )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = _INPUT_DTYPES.get(inp.type, np.float32)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[:1]
        return np.asarray(out, dtype=np.float32)

    def deactivate_impl(self) -> None:
        del self.session
