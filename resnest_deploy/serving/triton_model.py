"""Triton python-backend model: serves one artifact through resnest-deploy's runners.

Copied into a model's version folder as ``model.py`` next to ``model.onnx`` (or ``model.plan``).
Triton batches requests (dynamic batching) and hands them to ``execute`` together; they run as one
batch and are split back, in order. A request that cannot be answered (NaN/Inf in or out, an empty
batch) gets its own INVALID_ARG error (HTTP 400); the others in the batch are still answered.

The stub's embedded Python ignores ``PYTHONPATH``; when ``serve`` started it, the file named by
``RESNEST_DEPLOY_PYTHON_ENV`` lists the serving interpreter's ``sys.path`` and site folders, which are
adopted before anything outside the standard library is imported.
"""

from __future__ import annotations

import ctypes
import json
import os
import site
import sys
from pathlib import Path
from typing import Any


def _adopt_environment() -> None:
    described = os.environ.get("RESNEST_DEPLOY_PYTHON_ENV")
    if not described:
        return
    env = json.loads(Path(described).read_text())
    known = set(sys.path)
    sys.path[:0] = [p for p in env["sys_path"] if p not in known]
    for folder in env["site_dirs"]:  # .pth files: editable installs' finders, namespace packages
        if folder not in known:
            site.addsitedir(folder)


_adopt_environment()


def _exit_with_triton() -> None:
    """A stub reparented before this ran (its tritonserver was killed while starting it) exits at
    once. Later orphans are killed by ``serve``, which finds them by its run folder: neither a
    Python thread watching the parent (the stub's main loop keeps the GIL) nor PR_SET_PDEATHSIG
    (it fires when the thread that forked the stub ends, and killed healthy stubs) works here."""
    if os.getppid() == 1:
        os._exit(1)


_exit_with_triton()

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402  # provided by Triton's python backend

from resnest_deploy.loaders import open_runner  # noqa: E402
from resnest_deploy.runners.options import RunnerOptions  # noqa: E402

#: DLPack's name for a consumed capsule, which numpy's capsule deleter leaves alone; kept alive
#: here because a capsule keeps a pointer to its name
_USED_DLTENSOR = ctypes.c_char_p(b"used_dltensor")
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
_set_capsule_name.restype = ctypes.c_int


def _tensor_from_numpy(name: str, array: np.ndarray) -> Any:
    """A Triton tensor of ``array`` through DLPack, its capsule then marked consumed.

    The stub (python backend 2.51) renames the capsule it consumes to a name other than DLPack's
    ``used_dltensor``; numpy's capsule deleter then takes it for unconsumed, fails to get its
    pointer and prints a ``ValueError: PyCapsule_GetPointer`` traceback per response into
    tritonserver's log. ``pb_utils.Tensor(name, array)`` is no way round: the stub's pybind11 reads
    numpy 2 arrays' item size wrongly ("output tensor shape does not match size")."""
    capsule = array.__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(capsule, _USED_DLTENSOR)
    return tensor


def _client_error(message: str) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


_WARM_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_UINT8": np.uint8}


def _warm_up(runner: Any, spec: dict[str, Any]) -> None:
    """One batch-1 inference before the model reports ready, so that ready means answering at full
    speed: OpenVINO compiles on the first call of a shape (from its cache folder when it has one)."""
    dims = [int(d) for d in spec.get("dims", [])]
    dtype = _WARM_DTYPES.get(spec.get("data_type", ""))
    if dtype is None or not dims or min(dims) < 1:  # a free height or width: no one shape to warm
        return
    runner.infer(np.zeros((1, *dims), dtype=dtype))


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        artifact = next(p for p in (folder / "model.onnx", folder / "model.plan") if p.is_file())
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        provider = params.get("provider", "cpu")
        threads = int(params["threads"]) if params.get("threads") else None
        device = int(args.get("model_instance_device_id") or 0)  # the GPU of a KIND_GPU instance
        try:
            options = RunnerOptions.from_provider(provider, threads=threads, device=device)
            self.runner = open_runner(artifact, options)
            self.runner.activate()
            if artifact.suffix == ".onnx":
                _warm_up(self.runner, config["input"][0])
        except Exception as e:  # Triton logs this message as the cause of the failed load
            raise pb_utils.TritonModelException(f"{type(e).__name__}: {e}") from e

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for request in requests:
            # through DLPack: the stub's pybind11 misreads numpy 2 arrays (as_numpy gives wrong data)
            x = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name))
            problem = None
            if x.shape[0] == 0:
                problem = "empty batch: send at least one image"
            elif x.dtype.kind == "f" and not np.isfinite(x).all():
                problem = "input holds NaN or Inf"
            arrays.append(None if problem else x)
            errors.append(problem)
        good = [a for a in arrays if a is not None]
        outputs: list[np.ndarray] = []
        if good:
            batch = good[0] if len(good) == 1 else np.concatenate(good)
            outputs = np.split(self.runner.infer(batch), np.cumsum([len(a) for a in good])[:-1])
        answers = iter(outputs)
        responses = []
        for problem in errors:
            if problem:
                responses.append(_client_error(problem))
                continue
            y = np.ascontiguousarray(next(answers), dtype=np.float32)
            if not np.isfinite(y).all():  # finite inputs the model overflows: the input is out of range
                responses.append(
                    _client_error("the model's output holds NaN or Inf for this input: values out of range")
                )
                continue
            if not y.flags.owndata:
                y = y.copy()  # owns its memory for DLPack
            logits = _tensor_from_numpy(self.output_name, y)
            responses.append(pb_utils.InferenceResponse(output_tensors=[logits]))
        return responses

    def finalize(self) -> None:
        self.runner.deactivate()
