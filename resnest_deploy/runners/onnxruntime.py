"""ONNX Runtime, on CPU or through its CUDA / TensorRT execution providers."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnest_deploy import _deps
from resnest_deploy._cuda import driver_problem
from resnest_deploy._verbosity import ort_severity
from resnest_deploy.errors import ArtifactError, first_line
from resnest_deploy.runners.base import Runner

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


#: the batch range TensorRT builds for when the file's batch is dynamic (as `build` does by default)
TRT_BATCH = (1, 8, 32)


def tensorrt_options(path: str, device: int = 0) -> dict[str, str]:
    """ONNX Runtime's TensorRT provider, set up the way `build` builds: an engine cache and a timing
    cache under the cache root, keyed by the file's sha256 (a changed file never reuses an engine;
    the second session starts in seconds), an optimization profile over the file's batch range, and
    the precision flags the file's own graph asks for."""
    from resnest_deploy import metadata
    from resnest_deploy._io import sha256_file
    from resnest_deploy.cache import cache_root
    from resnest_deploy.onnx_files import load_onnx

    model = load_onnx(path)
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    precision = metadata.graph_precision(model)
    batches = (dims[0],) * 3 if dims[0] else TRT_BATCH
    rest = [d or 0 for d in dims[1:]]
    options = {
        "device_id": str(device),
        "trt_engine_cache_enable": "True",
        "trt_timing_cache_enable": "True",
        "trt_fp16_enable": str(precision == "fp16"),
        "trt_int8_enable": str(precision == "int8"),  # explicit Q/DQ: TensorRT needs INT8 allowed
    }
    cache = cache_root() / "ort-tensorrt" / sha256_file(path)[:16]
    cache.mkdir(parents=True, exist_ok=True)
    options["trt_engine_cache_path"] = options["trt_timing_cache_path"] = str(cache)
    if all(rest):  # a fixed image size: one profile over the batch range
        for key, b in zip(("min", "opt", "max"), batches, strict=True):
            options[f"trt_profile_{key}_shapes"] = f"{inp.name}:{'x'.join(map(str, [b, *rest]))}"
    return options


def has_8bit_weights(meta: Any) -> bool:
    """Whether a CPU-target INT8 file's metadata (untrusted) says its weights use all 8 bits."""
    conversion = meta.get("conversion") if isinstance(meta, dict) else None
    scheme = conversion.get("scheme") if isinstance(conversion, dict) else None
    return isinstance(scheme, dict) and scheme.get("reduce_range") is False


@functools.cache
def int8_kernels_saturate() -> bool:
    """Whether ONNX Runtime's U8S8 kernels on this CPU saturate products of 8-bit weights: x86
    without VNNI adds pairs of uint8 x int8 products in int16 (``vpmaddubsw``). Asked of the kernels
    themselves (255 x 127 summed 64 times), which also answers right under an emulated CPU, where
    /proc/cpuinfo describes the host."""
    ort = _deps.require("onnxruntime")
    onnx = _deps.require("onnx")
    helper, k = onnx.helper, 64
    weights = onnx.numpy_helper.from_array(np.full((k, 1), 127, np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "saturation-probe",
        [helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [1, 1])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"a": np.full((1, k), 255, np.uint8)})
    return int(y[0, 0]) != k * 255 * 127


def _loadable(path: str) -> str | bytes:
    """ONNX Runtime takes a path only as UTF-8 text; a file whose name is not (bytes a filesystem
    allows) is handed over as its bytes, when its weights are inside it."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    from resnest_deploy.onnx_files import external_tensors, load_onnx

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
        fake_quant: bool = False,
        cache: CacheFolder | None = None,
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
        #: run Q/DQ pairs as separate float ops instead of fusing them into the CPU's int8 kernels:
        #: TensorRT's fake-quant arithmetic, the same on every CPU (AVX2 without VNNI can saturate)
        self.fake_quant = fake_quant
        #: where the optimized graph is kept between processes (CPU provider, files only), or None
        self.cache = cache if provider == "cpu" and not isinstance(model, bytes) else None
        self._partial: Path | None = None

    def activate_impl(self) -> None:
        ort = _deps.require("onnxruntime")
        available = ort.get_available_providers()
        gpu = self.provider in ("cuda", "tensorrt")
        problem = driver_problem() if gpu else None
        if problem:  # said first: no package makes a GPU appear
            raise ArtifactError(
                f"--provider {self.provider} needs an NVIDIA GPU, and {problem}; use --provider cpu"
            )
        if PROVIDERS[self.provider][0] not in available:
            raise ArtifactError(
                f"onnxruntime has no {PROVIDERS[self.provider][0]} here (available: {', '.join(available)}); "
                "use --provider cpu or install onnxruntime-gpu with CUDA"
            )
        ort.set_default_logger_severity(ort_severity())  # the provider bridge logs through it
        opts = ort.SessionOptions()
        opts.log_severity_level = ort_severity()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if self.fake_quant:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        model = self.model if isinstance(self.model, bytes) else _loadable(os.fspath(self.model))
        try:  # onnxruntime print()s an "EP Error" banner: keep stdout clean for --json, report it below
            with contextlib.redirect_stdout(sys.stderr):
                self.session = self._cached_session(ort, opts) or ort.InferenceSession(
                    model, opts, providers=self._providers()
                )
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
        self._keep_optimized()
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = _INPUT_DTYPES.get(inp.type, np.float32)
        if self.provider == "cpu" and not self.fake_quant:
            self._warn_if_saturating()

    def _cached_session(self, ort: Any, opts: Any) -> Any:
        """A session from the optimized graph in the cache folder, or ``None`` (then ``opts`` asks
        ONNX Runtime to write that graph while it optimizes, and it is kept once the session works).

        The graph is read back only from a verified entry, and with every optimization off: it was
        optimized for this CPU and this version (both in the entry's key; NCHWc layouts and fused
        kernels do not carry over), and optimizing it again is what the cache saves."""
        if self.cache is None:
            return None
        target = self.cache.path / OPTIMIZED
        if OPTIMIZED in self.cache.verified:
            cached = ort.SessionOptions()
            cached.log_severity_level = opts.log_severity_level
            cached.intra_op_num_threads = opts.intra_op_num_threads
            cached.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            with contextlib.suppress(Exception):  # a graph it cannot load again: optimize afresh
                return ort.InferenceSession(str(target), cached, providers=self._providers())
        partial = target.with_name(f".{OPTIMIZED}.{os.getpid()}.partial")
        opts.optimized_model_filepath = str(partial)
        self._partial = partial
        return None

    def _keep_optimized(self) -> None:
        partial = self._partial
        if self.cache is None or partial is None:
            return
        self._partial = None
        with contextlib.suppress(OSError):
            if partial.is_file():
                os.replace(partial, self.cache.path / OPTIMIZED)
                self.cache.seal()
            partial.unlink(missing_ok=True)

    def _warn_if_saturating(self) -> None:
        from resnest_deploy.metadata import METADATA_KEY

        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            meta = json.loads(raw) if raw else None
        except ValueError:  # unreadable metadata is checked where it is used, not here
            return
        if has_8bit_weights(meta) and int8_kernels_saturate():
            warnings.warn(
                f"{self.name.split(':', 1)[-1]} has 8-bit INT8 weights (made with --cpu-isa vnni), which "
                "ONNX Runtime's int8 kernels on this CPU (x86 without VNNI) saturate, losing accuracy; "
                "re-quantize it with --cpu-isa any",
                RuntimeWarning,
                stacklevel=2,
            )

    def _providers(self) -> list[Any]:
        """The provider list; GPU providers on this runner's device, TensorRT's with caches and the
        file's own batch range and precision (FP16 only for an FP16 file: no silent precision)."""
        chain: list[Any] = []
        for name in PROVIDERS[self.provider]:
            if name == "CPUExecutionProvider":
                chain.append(name)
            elif name == "TensorrtExecutionProvider" and not isinstance(self.model, bytes):
                chain.append((name, tensorrt_options(os.fspath(self.model), self.device)))
            else:
                chain.append((name, {"device_id": str(self.device)}))
        return chain

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[:1]
        return np.asarray(out, dtype=np.float32)

    def deactivate_impl(self) -> None:
        del self.session
