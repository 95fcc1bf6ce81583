"""OpenVINO on the CPU, reading our ONNX files directly, with the precision that executes stated.

OpenVINO's default on a CPU with AVX-512-BF16 or AMX is to run an FP32 model in BF16
(``INFERENCE_PRECISION_HINT``), which is where a silent 2x comes from. Here FP32 means f32
execution, and BF16 is its own choice (``--provider openvino-bf16``), refused by the loader on a CPU
without it; the compiled model is asked what it will execute in, and a mismatch is an error.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from resnest_deploy import _deps
from resnest_deploy.errors import ArtifactError, first_line
from resnest_deploy.runners.base import Runner
from resnest_deploy.runners.options import RunnerOptions

if TYPE_CHECKING:
    from resnest_deploy.cache import CacheFolder

PRECISIONS = {"f32": "fp32", "bf16": "bf16"}
_OV_TYPE_NAMES = {"f32": "float32", "bf16": "bfloat16"}


def _cause(e: BaseException) -> str:
    """OpenVINO's errors start with where they were raised ("Exception from src/..."); the line that
    names the op or the problem comes later."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    telling = [
        ln
        for ln in lines
        if not ln.startswith(("Exception from", "Check '"))
        and any(
            w in ln.lower()
            for w in ("not supported", "unsupported", "cannot", "can't", "no ", "failed", "error")
        )
    ]
    return (telling or lines or [type(e).__name__])[0][:240] if lines else first_line(e)


class OpenVINORunner(Runner):
    def __init__(
        self,
        model: str | os.PathLike[str],
        options: RunnerOptions | None = None,
        *,
        name: str | None = None,
        cache: CacheFolder | None = None,
    ) -> None:
        """``options``: precision (``ov_precision``), hint and threads; the loader checked that this
        CPU computes in that precision. ``cache``: the compiled-model folder, or None."""
        options = options or RunnerOptions(backend="openvino")
        super().__init__(name or f"openvino:{os.fspath(model)}")
        self.path, self.ov_precision, self.hint = os.fspath(model), options.ov_precision, options.ov_hint
        self.threads = options.threads
        self.backend = f"openvino-cpu-{self.ov_precision}"
        #: what the backend computes in when it differs from the file (BF16 for an FP32 file)
        self.computes_in = PRECISIONS[self.ov_precision] if self.ov_precision != "f32" else None
        self._compiled: dict[tuple[int, ...], tuple[Any, Any]] = {}
        #: the compiled-model cache folder this runner was handed, or None
        self.cache_folder = cache
        self.model: Any = None
        #: shapes whose compiled model came from the cache in this process (tests and bench ask)
        self.loaded_from_cache: set[tuple[int, ...]] = set()

    def activate_impl(self) -> None:
        ov = _deps.require("openvino")
        self.core = ov.Core()
        if self.cache_folder is None or not self.cache_folder.verified:
            self._read()  # read now, so that a bad file fails here; a cache hit may never need it

    def _read(self) -> Any:
        if self.model is None:
            try:
                self.model = self.core.read_model(self.path)
            except Exception as e:
                raise ArtifactError(f"OpenVINO cannot read {self.path}: {_cause(e)}") from e
        return self.model

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": self.ov_precision,
            "PERFORMANCE_HINT": self.hint.upper(),
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config

    def _blob(self, shape: tuple[int, ...]) -> str:
        """The cache file of one compiled model: what it was compiled for is in its name (the file,
        the runtime and the CPU are in the cache folder's key)."""
        return f"{self.ov_precision}-{self.hint}-t{self.threads or 0}-{'x'.join(map(str, shape))}.blob"

    def _from_cache(self, shape: tuple[int, ...], config: dict[str, Any]) -> Any:
        """The compiled model from a blob the cache verified when it was opened, or None. OpenVINO's
        own CACHE_DIR would read and hash the whole model first; importing our blob skips both."""
        if self.cache_folder is None or self._blob(shape) not in self.cache_folder.verified:
            return None
        try:
            compiled = self.core.import_model(
                (self.cache_folder.path / self._blob(shape)).read_bytes(), "CPU", config
            )
        except Exception:  # a blob this OpenVINO cannot import after all: compile afresh
            return None
        self.loaded_from_cache.add(shape)
        return compiled

    def _compile(self, shape: tuple[int, ...], config: dict[str, Any]) -> Any:
        model = self._read()
        model.reshape({model.inputs[0].get_any_name(): list(shape)})
        try:
            compiled = self.core.compile_model(model, "CPU", config)
        except Exception as e:
            raise ArtifactError(
                f"OpenVINO cannot compile {self.path} for the CPU: {_cause(e)}; use {{provider=cpu}}",
                param="provider",
            ) from e
        if self.cache_folder is not None:
            import contextlib

            from resnest_deploy._io import atomic_path

            with contextlib.suppress(Exception):  # caching never fails a run
                with atomic_path(self.cache_folder.path / self._blob(shape)) as tmp:
                    tmp.write_bytes(compiled.export_model().getvalue())
                self.cache_folder.seal()
        return compiled

    def _compiled_for(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """One compiled model and infer request per input shape (OpenVINO specialises on it)."""
        if shape not in self._compiled:
            config = self._config()
            compiled = self._from_cache(shape, config) or self._compile(shape, config)
            executes = str(compiled.get_property("INFERENCE_PRECISION_HINT"))  # <Type: 'float32'>
            if _OV_TYPE_NAMES[self.ov_precision] not in executes:
                raise ArtifactError(
                    f"OpenVINO compiled {self.path} for {executes}, not the {self.ov_precision} asked for"
                )
            self._compiled[shape] = (compiled, compiled.create_infer_request())
        return self._compiled[shape]

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        compiled, request = self._compiled_for(tuple(x.shape))
        result = request.infer({0: x})
        return np.asarray(result[compiled.output(0)], dtype=np.float32)

    def deactivate_impl(self) -> None:
        self._compiled.clear()
        self.model = None
        del self.core
