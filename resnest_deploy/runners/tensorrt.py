"""TensorRT engines on a CUDA GPU, without PyTorch: cuda-python streams, buffers, events and graphs.

An edge device runs engines, not PyTorch, so the CUDA side comes from ``cuda-python``
(``cuda-bindings``: wheels for x86_64 and aarch64, Python 3.10+). We call ``execute_async_v3``
directly rather than through Polygraphy's ``TrtRunner``, whose per-call Python bookkeeping is what
``bench`` would otherwise time at batch 1; but like Polygraphy we check what TensorRT returns:
``set_input_shape`` and ``set_tensor_address`` give ``bool``, and a shape outside the optimization
profile is split into batches the profile allows (or refused) instead of silently running the last
shape. CUDA graphs: full TensorRT engines are captured on our stream, one graph per input shape
(after a warm-up run, since TensorRT allocates lazily); TensorRT-RTX engines capture themselves when
their ``IRuntimeConfig`` asks for it, which is NVIDIA's documented route for RTX.

Nothing here has run on a GPU yet (no GPU with TensorRT was lent to this project); the CPU-side
logic (profile splitting, dtype mapping, compatibility checks) is unit-tested.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import metadata
from resnest_deploy.engine.flavour import detect, engine_flavour
from resnest_deploy.errors import ArtifactError, MissingDependencyError
from resnest_deploy.runners.base import Runner

#: TensorRT I/O types we can feed and read from NumPy, by ``trt.DataType`` name
NUMPY_DTYPES: dict[str, type] = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


def numpy_dtype(trt_dtype: Any, tensor: str) -> type:
    """The NumPy type of a TensorRT I/O tensor; types NumPy cannot hold (BF16, FP8, INT4) are refused."""
    name = str(trt_dtype).rsplit(".", 1)[-1]
    if name not in NUMPY_DTYPES:
        raise ArtifactError(
            f"engine tensor {tensor!r} is {name}, which NumPy cannot hold; build the engine from an "
            "ONNX file with FP32/FP16 inputs and outputs (resnest-deploy keeps FP32 I/O)"
        )
    return NUMPY_DTYPES[name]


@dataclass(frozen=True)
class Profile:
    """The optimization profile of one input: min, opt and max shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def check(self, shape: tuple[int, ...], tensor: str) -> None:
        if len(shape) != len(self.min) or any(
            not lo <= s <= hi for s, lo, hi in zip(shape[1:], self.min[1:], self.max[1:], strict=True)
        ):
            raise ArtifactError(
                f"input {tensor!r} of shape {list(shape)} is outside the engine's profile "
                f"(min {list(self.min)}, max {list(self.max)}); rebuild with another --batch-profile or size"
            )

    def chunks(self, batch: int) -> list[slice]:
        """Split ``batch`` into slices the profile accepts: at most ``max[0]`` each; a batch below
        ``min[0]`` cannot be run (padding would time work that was not asked for)."""
        lo, hi = self.min[0], self.max[0]
        if batch < lo:
            raise ArtifactError(
                f"batch {batch} is below the engine's minimum batch {lo}; rebuild with --batch-profile 1,..."
            )
        cuts = list(range(0, batch, hi))
        out = [slice(c, min(c + hi, batch)) for c in cuts]
        if out and out[-1].stop - out[-1].start < lo:  # a remainder the profile cannot run
            raise ArtifactError(
                f"batch {batch} does not split into runs of {lo}..{hi}; use a multiple of {hi} or rebuild "
                "the engine with a smaller minimum batch"
            )
        return out


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


def cudart() -> Any:
    """cuda-python's runtime API (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        try:
            from cuda import cudart as runtime

            return runtime
        except ImportError as e:
            raise MissingDependencyError(
                f"cuda-python moves data to and from the GPU but is not installed ({e}); "
                "run: pip install 'resnest-deploy[tensorrt]'"
            ) from e


class _Cuda:
    """cuda-python calls return ``(error, *values)``: every one is checked here."""

    def __init__(self) -> None:
        self.rt = cudart()

    def __call__(self, fn: str, *args: Any) -> Any:
        err, *values = getattr(self.rt, fn)(*args)
        if int(err) != 0:
            raise ArtifactError(f"CUDA {fn} failed: {err}; is a CUDA GPU visible to this process?")
        return values[0] if len(values) == 1 else tuple(values) or None


@dataclass
class _Buffers:
    inputs: dict[str, tuple[int, np.ndarray]]  # device pointer, pinned host staging array
    outputs: dict[str, tuple[int, np.ndarray]]


class TensorRTRunner(Runner):
    def __init__(
        self,
        engine: str | os.PathLike[str],
        backend: str = "auto",
        cuda_graphs: bool = False,
        name: str | None = None,
        device: int = 0,
    ) -> None:
        super().__init__(name or f"tensorrt:{os.fspath(engine)}")
        self.device = device  # a Triton instance's model_instance_device_id
        self.path = Path(engine)
        self.sidecar = metadata.read_sidecar(self.path)
        self.requested = engine_flavour(self.path) if backend == "auto" else backend  # the header decides
        self.backend = self.requested
        self.cuda_graphs = cuda_graphs

    # -- set-up -------------------------------------------------------------------------------------

    def activate_impl(self) -> None:
        cuda = self.cuda = _Cuda()
        if cuda("cudaGetDeviceCount") < 1:
            raise ArtifactError(f"{self.path.name} needs a CUDA GPU to run; none is visible")
        cuda("cudaSetDevice", self.device)
        props = cuda("cudaGetDeviceProperties", self.device)
        flavour = detect(self.requested)
        self.backend = flavour.backend
        check_compatible(self.sidecar, flavour.version, (props.major, props.minor))
        self.trt = trt = flavour.module
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ArtifactError(
                f"{flavour.backend} {flavour.version} cannot load {self.path.name} (built for another "
                f"version, GPU or platform?); {_rebuild_hint(self.sidecar)}"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        if len(self.inputs) != 1:
            raise ArtifactError(
                f"{self.path.name} has {len(self.inputs)} inputs ({', '.join(self.inputs)}); runners feed "
                "one image tensor"
            )
        self.dtypes = {n: numpy_dtype(self.engine.get_tensor_dtype(n), n) for n in names}
        self.profile = Profile(*(tuple(s) for s in self.engine.get_tensor_profile_shape(self.inputs[0], 0)))
        self.context = self._context()
        if self.context is None:
            raise ArtifactError(f"TensorRT could not create an execution context for {self.path.name}")
        self.stream = cuda("cudaStreamCreate")
        self.start, self.end = cuda("cudaEventCreate"), cuda("cudaEventCreate")
        self._buffers: dict[tuple[int, ...], _Buffers] = {}
        self._graphs: dict[tuple[int, ...], Any] = {}

    def _context(self) -> Any:
        """TensorRT-RTX captures CUDA graphs itself when its runtime config asks for it."""
        if self.backend == "tensorrt-rtx" and hasattr(self.engine, "create_runtime_config"):
            config = self.engine.create_runtime_config()
            if self.cuda_graphs and hasattr(config, "cuda_graph_strategy"):
                config.cuda_graph_strategy = self.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            return self.engine.create_execution_context(config)
        return self.engine.create_execution_context()

    def _buffers_for(self, shape: tuple[int, ...]) -> _Buffers:
        """Device and pinned host buffers per input shape, allocated once (graphs need fixed addresses)."""
        if shape in self._buffers:
            return self._buffers[shape]
        cuda, name = self.cuda, self.inputs[0]
        self.profile.check(shape, name)
        if not self.context.set_input_shape(name, shape):
            raise ArtifactError(f"TensorRT refused input shape {list(shape)} for {name!r}")

        def alloc(tensor: str, dims: tuple[int, ...]) -> tuple[int, np.ndarray]:
            dtype = np.dtype(self.dtypes[tensor])
            nbytes = max(1, int(np.prod(dims)) * dtype.itemsize)
            device = cuda("cudaMalloc", nbytes)
            pinned = (ctypes.c_byte * nbytes).from_address(cuda("cudaMallocHost", nbytes))
            host = np.frombuffer(memoryview(pinned), dtype=dtype, count=int(np.prod(dims)))
            if not self.context.set_tensor_address(tensor, device):
                raise ArtifactError(f"TensorRT refused the buffer of {tensor!r}")
            return device, host.reshape(dims)

        inputs = {name: alloc(name, shape)}
        outputs = {o: alloc(o, tuple(self.context.get_tensor_shape(o))) for o in self.outputs}
        self._buffers[shape] = _Buffers(inputs, outputs)
        return self._buffers[shape]

    # -- running ------------------------------------------------------------------------------------

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        """Batches above the profile's maximum run in profile-sized pieces, timed together."""
        pieces = [self._run(x[s]) for s in self.profile.chunks(len(x))]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _run(self, x: np.ndarray) -> np.ndarray:
        cuda, stream = self.cuda, self.stream
        shape = tuple(x.shape)
        bufs = self._buffers_for(shape)
        for device, host in bufs.inputs.values():  # one input (checked on activation)
            np.copyto(host, x, casting="same_kind")
            cuda("cudaMemcpyAsync", device, host.ctypes.data, host.nbytes, _H2D(cuda), stream)
        cuda("cudaEventRecord", self.start, stream)
        if self.cuda_graphs and self.backend == "tensorrt":
            cuda("cudaGraphLaunch", self._graph_for(shape), stream)
        else:
            self._enqueue(shape)
        cuda("cudaEventRecord", self.end, stream)
        for device, host in bufs.outputs.values():
            cuda("cudaMemcpyAsync", host.ctypes.data, device, host.nbytes, _D2H(cuda), stream)
        cuda("cudaStreamSynchronize", stream)
        logits = bufs.outputs.get("logits", next(iter(bufs.outputs.values())))[1]
        return np.array(logits, dtype=np.float32)

    def _enqueue(self, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(self.inputs[0], shape):
            raise ArtifactError(f"TensorRT refused input shape {list(shape)}")
        for tensor, (device, _) in {**self._buffers[shape].inputs, **self._buffers[shape].outputs}.items():
            if not self.context.set_tensor_address(tensor, device):
                raise ArtifactError(f"TensorRT refused the buffer of {tensor!r}")
        if not self.context.execute_async_v3(int(self.stream)):
            raise ArtifactError(f"TensorRT failed to run {self.path.name} at input shape {list(shape)}")

    def _graph_for(self, shape: tuple[int, ...]) -> Any:
        """One CUDA graph per shape, captured after a plain run (TensorRT allocates on first use)."""
        if shape not in self._graphs:
            cuda = self.cuda
            self._enqueue(shape)
            cuda("cudaStreamSynchronize", self.stream)
            mode = cuda.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            cuda("cudaStreamBeginCapture", self.stream, mode)
            self._enqueue(shape)
            graph = cuda("cudaStreamEndCapture", self.stream)
            self._graphs[shape] = cuda("cudaGraphInstantiate", graph, 0)
            cuda("cudaGraphDestroy", graph)  # the executable graph keeps what it needs
        return self._graphs[shape]

    def device_time_ms(self) -> float | None:
        return float(self.cuda("cudaEventElapsedTime", self.start, self.end))

    def deactivate_impl(self) -> None:
        cuda = self.cuda
        for exe in self._graphs.values():
            cuda("cudaGraphExecDestroy", exe)
        for bufs in self._buffers.values():
            for device, host in (*bufs.inputs.values(), *bufs.outputs.values()):
                cuda("cudaFree", device)
                cuda("cudaFreeHost", host.ctypes.data)
        self._graphs.clear()
        self._buffers.clear()
        cuda("cudaEventDestroy", self.start)
        cuda("cudaEventDestroy", self.end)
        cuda("cudaStreamDestroy", self.stream)
        del self.context, self.engine, self.runtime


def _H2D(cuda: _Cuda) -> Any:
    return cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice


def _D2H(cuda: _Cuda) -> Any:
    return cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
