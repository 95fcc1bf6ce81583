"""TensorRT engines on a CUDA GPU: ``execute_async_v3`` on one stream, buffers kept across calls.

CUDA streams, device memory, events and graphs come from torch (a base dependency) instead of
pycuda, which has no wheels. We call ``execute_async_v3`` directly rather than through Polygraphy's
``TrtRunner``: its per-call Python bookkeeping (shape checks, dict outputs, host copies) is what
``bench`` would otherwise time at batch 1. Optionally one CUDA graph is captured per batch size,
which removes the launch overhead of the ~300 kernels of a resnest50.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import _deps, metadata
from resnest_deploy._io import require_file
from resnest_deploy.engine.flavour import detect
from resnest_deploy.errors import ArtifactError
from resnest_deploy.runners.base import Runner


def _rebuild_hint(sidecar: dict[str, Any] | None) -> str:
    src = (sidecar or {}).get("source_onnx", {}).get("path") or "MODEL.onnx"
    return f"rebuild it here: resnest-deploy build --onnx {src}"


def check_compatible(
    sidecar: dict[str, Any] | None, installed: str, device_cc: tuple[int, int] | None
) -> None:
    """An engine only runs on the TensorRT version, and (unless JIT) the GPU, it was built for."""
    if not sidecar:
        return
    built = sidecar.get("tensorrt", {})
    if built.get("version") and built["version"] != installed:
        raise ArtifactError(
            f"engine was built with {built.get('flavour', 'TensorRT')} {built['version']} but "
            f"{installed} is installed; {_rebuild_hint(sidecar)}"
        )
    caps = sidecar.get("target", {}).get("compute_capabilities")
    if device_cc and isinstance(caps, list) and caps and f"{device_cc[0]}.{device_cc[1]}" not in caps:
        raise ArtifactError(
            f"engine targets compute capability {', '.join(caps)} but this GPU is "
            f"{device_cc[0]}.{device_cc[1]}; {_rebuild_hint(sidecar)}"
        )


class TensorRTRunner(Runner):
    def __init__(
        self,
        engine: str | os.PathLike[str],
        backend: str = "auto",
        cuda_graphs: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"tensorrt:{os.fspath(engine)}")
        self.path = Path(engine)
        self.sidecar = metadata.read_sidecar(self.path)
        flavour = (self.sidecar or {}).get("tensorrt", {}).get("flavour")
        self.requested = flavour if backend == "auto" and flavour else backend
        self.backend = self.requested if self.requested != "auto" else "tensorrt"
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple[int, ...], Any] = {}

    def activate_impl(self) -> None:
        torch = _deps.require("torch")
        if not torch.cuda.is_available():
            raise ArtifactError(
                f"{self.path.name} needs a CUDA GPU and a CUDA build of torch to run; "
                "inspect it with `resnest-deploy inspect`, or check the ONNX with onnxruntime instead"
            )
        flavour = detect(self.requested)
        self.backend = flavour.backend
        check_compatible(self.sidecar, flavour.version, torch.cuda.get_device_capability())
        self.trt = trt = flavour.module
        logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(require_file(self.path, "engine").read_bytes())
        if self.engine is None:
            raise ArtifactError(
                f"{flavour.backend} {flavour.version} cannot load {self.path.name} (built for another "
                f"version, GPU or platform?); {_rebuild_hint(self.sidecar)}"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if n != self.input_name)
        self.stream = torch.cuda.Stream()
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self._buffers: dict[tuple[int, ...], tuple[Any, Any]] = {}

    def _buffers_for(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """Device input/output per batch shape, allocated once (CUDA graphs need fixed addresses)."""
        if shape not in self._buffers:
            import torch

            self.context.set_input_shape(self.input_name, shape)
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            self._buffers[shape] = (
                torch.empty(shape, dtype=self._dtype(self.input_name), device="cuda"),
                torch.empty(out_shape, dtype=self._dtype(self.output_name), device="cuda"),
            )
        return self._buffers[shape]

    def _dtype(self, tensor: str) -> Any:
        """FP32 unless the engine says FP16 (our conversions keep FP32 I/O, hand-made files may not)."""
        import torch

        fp16 = self.engine.get_tensor_dtype(tensor) == self.trt.DataType.HALF
        return torch.float16 if fp16 else torch.float32

    def _enqueue(self, shape: tuple[int, ...]) -> None:
        d_in, d_out = self._buffers_for(shape)
        self.context.set_input_shape(self.input_name, shape)
        self.context.set_tensor_address(self.input_name, d_in.data_ptr())
        self.context.set_tensor_address(self.output_name, d_out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ArtifactError(f"TensorRT failed to run {self.path.name} at input shape {shape}")

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        import torch

        shape = tuple(x.shape)
        d_in, d_out = self._buffers_for(shape)
        with torch.cuda.stream(self.stream):
            d_in.copy_(torch.from_numpy(x))  # casts to the engine's input dtype
            self.start.record(self.stream)
            if self.cuda_graphs:
                self._graph_for(shape).replay()
            else:
                self._enqueue(shape)
            self.end.record(self.stream)
            out = d_out.cpu()
        return out.float().numpy()

    def _graph_for(self, shape: tuple[int, ...]) -> Any:
        import torch

        if shape not in self._graphs:
            self._enqueue(shape)  # TensorRT allocates lazily on the first run; never inside a capture
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self._enqueue(shape)
            self._graphs[shape] = graph
        return self._graphs[shape]

    def device_time_ms(self) -> float | None:
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))

    def deactivate_impl(self) -> None:
        self._graphs.clear()
        self._buffers.clear()
        del self.context, self.engine, self.runtime
