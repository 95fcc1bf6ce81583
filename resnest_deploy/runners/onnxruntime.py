"""ONNX Runtime, on CPU or through its CUDA / TensorRT execution providers.

The runner is handed what it runs: a path the loader checked (or serialized bytes), its options, the
provider chain the loader set up (TensorRT's engine cache, profiles, precision flags) and the
compiled-model folder to keep the optimized graph in. It reads no metadata and probes no CPU.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnest_deploy import _deps
from resnest_deploy._cuda import driver_problem
from resnest_deploy._verbosity import ort_severity
from resnest_deploy.errors import ArtifactError, first_line
from resnest_deploy.runners.base import Runner
from resnest_deploy.runners.options import RunnerOptions

if TYPE_CHECKING:
    from resnest_deploy.cache import CacheFolder

#: the graph ONNX Runtime optimized for this CPU, kept in the runner's cache folder
OPTIMIZED = "optimized.onnx"

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


_INPUT_DTYPES = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def plain_providers(provider: str, device: int = 0) -> list[Any]:
    """ONNX Runtime's provider chain for ``provider``, GPU providers on ``device``, no options else."""
    return [
        name if name == "CPUExecutionProvider" else (name, {"device_id": str(device)})
        for name in PROVIDERS[provider]
    ]


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file or serialized model; the input's dtype follows the graph (fp16, uint8)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        options: RunnerOptions | None = None,
        *,
        name: str | None = None,
        cache: CacheFolder | None = None,
        providers: list[Any] | None = None,
    ) -> None:
        """``providers``: the provider chain a loader set up (None: the plain chain of
        ``options.provider`` on ``options.device``); ``cache``: the folder the optimized graph is kept
        in between processes (CPU provider only)."""
        options = options or RunnerOptions()
        label = "<in-memory>" if isinstance(model, bytes) else os.fspath(model)
        super().__init__(name or f"onnxruntime-{options.provider}:{label}")
        #: an INT8 file computed in TensorRT's arithmetic says so wherever its backend is shown
        self.backend = f"onnxruntime-{options.provider}" + ("-qdq-float" if options.fake_quant else "")
        self.model = model
        self.options = options
        self.provider = options.provider
        self.chain = providers or plain_providers(options.provider, options.device)
        #: where the optimized graph is kept between processes (CPU provider), or None
        self.cache_folder = cache if options.provider == "cpu" else None
        self._partial: Path | None = None

    def activate_impl(self) -> None:
        ort = _deps.require("onnxruntime")
        available = ort.get_available_providers()
        gpu = self.provider in ("cuda", "tensorrt")
        problem = driver_problem() if gpu else None
        if problem:  # said first: no package makes a GPU appear
            raise ArtifactError(
                f"{{provider={self.provider}}} needs an NVIDIA GPU, and {problem}; use {{provider=cpu}}",
                param="provider",
            )
        if PROVIDERS[self.provider][0] not in available:
            raise ArtifactError(
                f"onnxruntime has no {PROVIDERS[self.provider][0]} here (available: {', '.join(available)}); "
                "use {provider=cpu} or install onnxruntime-gpu with CUDA",
                param="provider",
            )
        ort.set_default_logger_severity(ort_severity())  # the provider bridge logs through it
        opts = ort.SessionOptions()
        opts.log_severity_level = ort_severity()
        if self.options.threads:
            opts.intra_op_num_threads = self.options.threads
        if self.options.fake_quant:  # Q/DQ pairs as float ops: TensorRT's arithmetic on every CPU
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        model = self.model if isinstance(self.model, bytes) else os.fspath(self.model)
        try:  # onnxruntime print()s an "EP Error" banner: keep stdout clean for --json, report it below
            with contextlib.redirect_stdout(sys.stderr):
                self.session = self._cached_session(ort, opts) or ort.InferenceSession(
                    model, opts, providers=self.chain
                )
        except Exception as e:
            first = first_line(e)
            raise ArtifactError(f"onnxruntime cannot load {self.name.split(':', 1)[-1]}: {first}") from e
        active = self.session.get_providers()
        if active[0] != PROVIDERS[self.provider][0]:  # ONNX Runtime falls back to the CPU in silence
            del self.session
            raise ArtifactError(
                f"onnxruntime could not start {PROVIDERS[self.provider][0]} (no usable GPU, or its CUDA "
                f"libraries are missing) and would run on {active[0]}; use {{provider=cpu}}",
                param="provider",
            )
        self._keep_optimized()
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = _INPUT_DTYPES.get(inp.type, np.float32)

    def _cached_session(self, ort: Any, opts: Any) -> Any:
        """A session from the optimized graph in the cache folder, or ``None`` (then ``opts`` asks
        ONNX Runtime to write that graph while it optimizes, and it is kept once the session works).

        The graph is read back only from a verified entry, and with every optimization off: it was
        optimized for this CPU and this version (both in the entry's key; NCHWc layouts and fused
        kernels do not carry over), and optimizing it again is what the cache saves."""
        if self.cache_folder is None:
            return None
        target = self.cache_folder.path / OPTIMIZED
        if OPTIMIZED in self.cache_folder.verified:
            cached = ort.SessionOptions()
            cached.log_severity_level = opts.log_severity_level
            cached.intra_op_num_threads = opts.intra_op_num_threads
            cached.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            with contextlib.suppress(Exception):  # a graph it cannot load again: optimize afresh
                return ort.InferenceSession(str(target), cached, providers=self.chain)
        partial = target.with_name(f".{OPTIMIZED}.{os.getpid()}.partial")
        opts.optimized_model_filepath = str(partial)
        self._partial = partial
        return None

    def _keep_optimized(self) -> None:
        partial = self._partial
        if self.cache_folder is None or partial is None:
            return
        self._partial = None
        with contextlib.suppress(OSError):
            if partial.is_file():
                os.replace(partial, self.cache_folder.path / OPTIMIZED)
                self.cache_folder.seal()
            partial.unlink(missing_ok=True)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[:1]
        return np.asarray(out, dtype=np.float32)

    def deactivate_impl(self) -> None:
        del self.session
