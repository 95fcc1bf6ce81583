"""Triton python-backend model: serves one artifact through resnest-deploy's runners.

Copied into a model's version folder as ``model.py`` next to ``model.onnx`` (or ``model.plan``).
Triton batches requests (dynamic batching) and hands them to ``execute`` together; they run as one
batch and are split back, in order. A request that cannot be answered (NaN/Inf, an empty batch)
gets its own error response; the others in the batch are still answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend

from resnest_deploy.runners import open_runner


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        artifact = next(p for p in (folder / "model.onnx", folder / "model.plan") if p.is_file())
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        provider = config.get("parameters", {}).get("provider", {}).get("string_value", "cpu")
        self.runner = open_runner(artifact, provider=provider)
        self.runner.activate()

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for request in requests:
            x = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name)).copy()
            problem = None
            if x.shape[0] == 0:
                problem = "empty batch: send at least one image"
            elif x.dtype.kind == "f" and not np.isfinite(x).all():
                problem = "input holds NaN or Inf"
            arrays.append(None if problem else x)
            errors.append(problem)
        good = [a for a in arrays if a is not None]
        outputs = iter(
            np.split(self.runner.infer(np.concatenate(good)), np.cumsum([len(a) for a in good])[:-1])
            if good
            else []
        )
        responses = []
        for problem in errors:
            if problem:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(problem)))
            else:
                y = np.array(next(outputs), dtype=np.float32, order="C")  # owns its memory
                logits = pb_utils.Tensor.from_dlpack(self.output_name, y.__dlpack__())
                responses.append(pb_utils.InferenceResponse(output_tensors=[logits]))
        return responses

    def finalize(self) -> None:
        self.runner.deactivate()
