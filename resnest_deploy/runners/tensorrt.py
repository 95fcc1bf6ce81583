"""TensorRT engines on a CUDA GPU, without PyTorch: cuda-python streams, buffers, events and graphs.

An edge device runs engines, not PyTorch, so the CUDA side comes from ``cuda-python``
(``cuda-bindings``: wheels for x86_64 and aarch64, Python 3.10+). We call ``execute_async_v3``
directly rather than through Polygraphy's ``TrtRunner``, whose per-call Python bookkeeping is what
``bench`` would otherwise time at batch 1; but like Polygraphy we check what TensorRT returns
(``set_input_shape`` and ``set_tensor_address`` give ``bool``) and keep one device buffer and one
pinned host buffer per I/O tensor, sized to the profile's maximum and made at activation, so dynamic
batching never allocates. A batch above the profile's maximum runs in pieces that each lie within
[min, max], timed together.

CUDA graphs follow TensorRT's rules (TensorRT 10 Developer Guide, "CUDA Graphs"): a graph captures
the execution context's state at capture time, and changing that context's input shapes or tensor
addresses afterwards is undefined; so each captured shape gets its own execution context, all of them
sharing one scratch allocation (``ExecutionContextAllocationStrategy.USER_MANAGED``; they run one at a
time on one stream). A capture that fails is ended, and that shape runs by plain enqueue with a
warning, as trtexec does. TensorRT-RTX engines capture themselves when their ``IRuntimeConfig`` asks
for it, which is NVIDIA's documented route for RTX.

Timing: ``last_inference_ms`` is the whole call, host staging and copies included, as every other
backend is timed; ``device_time_ms`` is the GPU time of the engine's work alone (CUDA events around
each piece's enqueue, summed), a labelled second figure.

The loader (``loaders.tensorrt``) checks what the engine was built for (TensorRT version, GPU), and
deserializes it; this runner is handed that loader. Run on a GPU only by ``scripts/gpu_check.py``;
the CPU-side logic (pieces, dtypes, compatibility, input forms) is unit-tested.
"""

from __future__ import annotations

import contextlib
import ctypes
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from resnest_deploy._cuda import Cuda, driver_problem
from resnest_deploy._io import atomic_path
from resnest_deploy.errors import ArtifactError
from resnest_deploy.runners._engine_io import NUMPY_DTYPES, Profile, numpy_dtype
from resnest_deploy.runners.base import Runner
from resnest_deploy.runners.options import RunnerOptions

if TYPE_CHECKING:
    from resnest_deploy.cache import CacheFolder

__all__ = ["NUMPY_DTYPES", "EngineSource", "Profile", "TensorRTRunner", "numpy_dtype"]

#: the file of TensorRT-RTX's runtime cache in its registry folder
RTX_RUNTIME_CACHE = "runtime.cache"


class EngineSource(Protocol):
    """What a loader hands the runner (``loaders.tensorrt.EngineLoader``): the engine's path and
    flavour, the message for a machine without a GPU, and the call that checks and deserializes it
    for a GPU's compute capability."""

    @property
    def path(self) -> Path: ...

    @property
    def flavour(self) -> str: ...

    def without_gpu(self, problem: str) -> str: ...

    def __call__(self, device_cc: tuple[int, int]) -> Any: ...


class TensorRTRunner(Runner):
    def __init__(
        self,
        engine: EngineSource,
        options: RunnerOptions | None = None,
        *,
        name: str | None = None,
        runtime_cache: Callable[[str, str], CacheFolder | None] | None = None,
    ) -> None:
        """``runtime_cache(runtime, gpu)``: the registry's folder for TensorRT-RTX's runtime cache
        (kernels it compiles at run time), opened once the GPU and the version are known."""
        options = options or RunnerOptions()
        super().__init__(name or f"tensorrt:{engine.path}")
        self.load = engine
        self.runtime_cache = runtime_cache
        self._rtx_cache: tuple[Any, CacheFolder] | None = None
        self.device = options.device  # a Triton instance's model_instance_device_id
        self.path = engine.path
        self.backend = engine.flavour  # the header decides
        self.cuda_graphs = options.cuda_graphs

    # -- set-up -------------------------------------------------------------------------------------

    def activate_impl(self) -> None:
        problem = driver_problem()  # before anything asks for cuda-python or TensorRT to be installed
        if problem:
            raise ArtifactError(self.load.without_gpu(problem))
        cuda = self.cuda = Cuda()
        self._held: list[tuple[str, Any]] = []  # (free function, handle): everything to release
        try:
            self._activate(cuda)
        except BaseException:
            self._release()
            raise

    def _activate(self, cuda: Cuda) -> None:
        if cuda("cudaGetDeviceCount") < 1:
            raise ArtifactError(f"{self.path.name} needs a CUDA GPU to run; none is visible")
        cuda("cudaSetDevice", self.device)
        props = cuda("cudaGetDeviceProperties", self.device)
        loaded = self.load((props.major, props.minor))
        flavour = loaded.flavour
        self.backend = flavour.backend
        self.trt = trt = loaded.module
        self.runtime, self.engine = loaded.runtime, loaded.engine
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
        self.stream = self._hold("cudaStreamDestroy", cuda("cudaStreamCreate"))
        self.events = [self._hold("cudaEventDestroy", cuda("cudaEventCreate")) for _ in range(2)]
        self._scratch = self._scratch_memory()
        self._cc = f"gpu:sm_{props.major}{props.minor}"
        self._version = f"{flavour.backend} {flavour.version}"
        self.context = self._context()
        # one device and one pinned host buffer per tensor, for the largest shape the profile allows
        if not self.context.set_input_shape(self.inputs[0], self.profile.max):
            raise ArtifactError(f"TensorRT refused the profile's own maximum shape {list(self.profile.max)}")
        self.buffers: dict[str, tuple[int, np.ndarray]] = {}
        for tensor in names:
            dims = self.profile.max if tensor in self.inputs else tuple(self.context.get_tensor_shape(tensor))
            self.buffers[tensor] = self._alloc(tensor, int(np.prod(dims)))
        self._graphs: dict[tuple[int, ...], Any] = {}  # shape -> (context, graph exec), or None: no graph
        self._device_ms: float | None = None

    def _hold(self, free: str, handle: Any) -> Any:
        self._held.append((free, handle))
        return handle

    def _alloc(self, tensor: str, count: int) -> tuple[int, np.ndarray]:
        dtype = np.dtype(self.dtypes[tensor])
        nbytes = max(1, count * dtype.itemsize)
        device = self._hold("cudaFree", self.cuda("cudaMalloc", nbytes))
        address = self._hold("cudaFreeHost", self.cuda("cudaMallocHost", nbytes))
        pinned = (ctypes.c_byte * nbytes).from_address(address)
        return device, np.frombuffer(memoryview(pinned), dtype=dtype, count=count)

    def _scratch_memory(self) -> int | None:
        """One scratch allocation that every execution context of this runner shares (None: let
        TensorRT give each context its own, on versions without user-managed memory)."""
        strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
        size = getattr(self.engine, "device_memory_size_v2", None) or getattr(
            self.engine, "device_memory_size", None
        )
        if strategy is None or not size or self.backend == "tensorrt-rtx":
            return None
        return int(self._hold("cudaFree", self.cuda("cudaMalloc", int(size))))

    def _context(self) -> Any:
        """TensorRT-RTX captures CUDA graphs itself when its runtime config asks for it."""
        if self.backend == "tensorrt-rtx" and hasattr(self.engine, "create_runtime_config"):
            config = self.engine.create_runtime_config()
            if self.cuda_graphs and hasattr(config, "cuda_graph_strategy"):
                config.cuda_graph_strategy = self.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self._attach_runtime_cache(config)
            context = self.engine.create_execution_context(config)
        elif self._scratch is not None:
            context = self.engine.create_execution_context(
                self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
            )
            if context is not None and hasattr(context, "set_device_memory"):
                size = getattr(self.engine, "device_memory_size_v2", None) or self.engine.device_memory_size
                context.set_device_memory(self._scratch, size)
            elif context is not None:
                context.device_memory = self._scratch
        else:
            context = self.engine.create_execution_context()
        if context is None:
            raise ArtifactError(f"TensorRT could not create an execution context for {self.path.name}")
        return context

    def _attach_runtime_cache(self, config: Any) -> None:
        """TensorRT-RTX compiles kernels when a shape first runs; its runtime cache keeps them for the
        next process. Read back only what the registry verified (engine sha256, GPU and version in
        its key); a cache TensorRT-RTX refuses is a miss, never an error."""
        if self.runtime_cache is None or not hasattr(config, "create_runtime_cache"):
            return
        folder = self.runtime_cache(self._version, self._cc)
        if folder is None:
            return
        kept = config.create_runtime_cache()
        if RTX_RUNTIME_CACHE in folder.verified:
            blob = (folder.path / RTX_RUNTIME_CACHE).read_bytes()
            if not kept.deserialize(blob):
                kept.reset()
        config.set_runtime_cache(kept)
        self._rtx_cache = (kept, folder)

    def _save_runtime_cache(self) -> None:
        """What TensorRT-RTX compiled in this process, written atomically and sealed; caching never
        fails a run."""
        if self._rtx_cache is None:
            return
        kept, folder = self._rtx_cache
        self._rtx_cache = None
        with contextlib.suppress(Exception):
            blob = bytes(kept.serialize())
            if blob:
                with atomic_path(folder.path / RTX_RUNTIME_CACHE) as tmp:
                    tmp.write_bytes(blob)
                folder.seal()

    def _bind(self, context: Any, shape: tuple[int, ...]) -> None:
        """Input shape and every tensor's address on ``context``; TensorRT's answers checked."""
        name = self.inputs[0]
        self.profile.check(shape, name)
        if not context.set_input_shape(name, shape):
            raise ArtifactError(f"TensorRT refused input shape {list(shape)} for {name!r}")
        for tensor, (device, _) in self.buffers.items():
            if not context.set_tensor_address(tensor, device):
                raise ArtifactError(f"TensorRT refused the buffer of {tensor!r}")

    # -- running ------------------------------------------------------------------------------------

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        """Batches above the profile's maximum run in pieces within [min, max]; the call is timed
        whole by ``Runner.infer``, the engine's GPU time summed over the pieces here."""
        self._device_ms = 0.0
        pieces = [self._run(x[s]) for s in self.profile.pieces(len(x))]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _run(self, x: np.ndarray) -> np.ndarray:
        cuda, stream = self.cuda, self.stream
        shape = tuple(x.shape)
        graph = self._graph_for(shape) if self.cuda_graphs and self.backend == "tensorrt" else None
        if graph is None:
            self._bind(self.context, shape)
        device, host = self.buffers[self.inputs[0]]
        staged = host[: x.size].reshape(shape)
        np.copyto(staged, x, casting="same_kind")
        cuda("cudaMemcpyAsync", device, staged.ctypes.data, staged.nbytes, _H2D(cuda), stream)
        start, end = self.events
        cuda("cudaEventRecord", start, stream)
        if graph is not None:
            cuda("cudaGraphLaunch", graph[1], stream)
        elif not self.context.execute_async_v3(int(stream)):
            raise ArtifactError(f"TensorRT failed to run {self.path.name} at input shape {list(shape)}")
        cuda("cudaEventRecord", end, stream)
        context = graph[0] if graph is not None else self.context
        results = {}
        for tensor in self.outputs:
            out_shape = tuple(context.get_tensor_shape(tensor))
            out_device, out_host = self.buffers[tensor]
            view = out_host[: int(np.prod(out_shape))].reshape(out_shape)
            cuda("cudaMemcpyAsync", view.ctypes.data, out_device, view.nbytes, _D2H(cuda), stream)
            results[tensor] = view
        cuda("cudaStreamSynchronize", stream)
        self._device_ms = (self._device_ms or 0.0) + float(cuda("cudaEventElapsedTime", start, end))
        logits = results.get("logits", next(iter(results.values())))
        return np.array(logits, dtype=np.float32)

    def _graph_for(self, shape: tuple[int, ...]) -> tuple[Any, Any] | None:
        """(context, graph exec) for ``shape``, captured once on a context of its own; None when the
        capture failed (that shape then runs by plain enqueue)."""
        if shape in self._graphs:
            return self._graphs[shape]
        cuda = self.cuda
        context = self._context()
        self._bind(context, shape)
        if not context.execute_async_v3(int(self.stream)):  # TensorRT allocates on first use
            raise ArtifactError(f"TensorRT failed to run {self.path.name} at input shape {list(shape)}")
        cuda("cudaStreamSynchronize", self.stream)
        mode = cuda.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda("cudaStreamBeginCapture", self.stream, mode)
        graph, problem = None, None
        try:
            if not context.execute_async_v3(int(self.stream)):
                problem = "execute_async_v3 returned false during capture"
        except Exception as e:
            problem = str(e)
        finally:
            try:  # always end the capture, or the stream stays in capture mode
                graph = cuda("cudaStreamEndCapture", self.stream)
            except ArtifactError as e:
                problem = problem or str(e)
        captured = None
        if problem is None and graph is not None:
            try:
                captured = (
                    context,
                    self._hold("cudaGraphExecDestroy", cuda("cudaGraphInstantiate", graph, 0)),
                )
            except ArtifactError as e:
                problem = str(e)
        if graph is not None:
            cuda("cudaGraphDestroy", graph)  # the executable graph keeps what it needs
        if captured is None:
            warnings.warn(
                f"CUDA graph capture failed for input shape {list(shape)} ({problem}); running it without "
                "a graph",
                RuntimeWarning,
                stacklevel=2,
            )
        self._graphs[shape] = captured
        return captured

    def device_time_ms(self) -> float | None:
        return self._device_ms

    def deactivate_impl(self) -> None:
        self._save_runtime_cache()
        self._release()

    def _release(self) -> None:
        """Free everything, in reverse order of allocation, whatever fails on the way; the first
        error is raised once all is freed."""
        first: Exception | None = None
        self._graphs = {}
        for attr in ("context", "engine", "runtime"):
            self.__dict__.pop(attr, None)
        for free, handle in reversed(getattr(self, "_held", [])):
            try:
                self.cuda(free, handle)
            except Exception as e:
                first = first or e
        self._held = []
        if first is not None:
            raise first


def _H2D(cuda: Cuda) -> Any:
    return cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice


def _D2H(cuda: Cuda) -> Any:
    return cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
