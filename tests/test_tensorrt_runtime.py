"""The TensorRT runner: compatibility rules run everywhere; running an engine needs a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnest_deploy.engine import build_engine, detect
from resnest_deploy.errors import ArtifactError
from resnest_deploy.runners import open_runner
from resnest_deploy.runners.tensorrt import TensorRTRunner, check_compatible


def _has_tensorrt() -> bool:
    try:
        return detect("tensorrt").backend == "tensorrt"
    except Exception:
        return False


SIDECAR = {
    "source_onnx": {"path": "models/resnest50/resnest50.onnx"},
    "tensorrt": {"flavour": "tensorrt", "version": "10.13.0.35"},
    "target": {"compute_capabilities": ["8.9"]},
}


def test_version_mismatch_names_both_versions_and_the_rebuild():
    with pytest.raises(
        ArtifactError,
        match=r"built with tensorrt 10\.13\.0\.35 but 11\.0\.0 is installed.*"
        r"resnest-deploy build --onnx models/resnest50/resnest50\.onnx",
    ):
        check_compatible(SIDECAR, "11.0.0", (8, 9))


def test_device_mismatch_names_the_capabilities():
    with pytest.raises(ArtifactError, match=r"targets compute capability 8\.9 but this GPU is 9\.0"):
        check_compatible(SIDECAR, "10.13.0.35", (9, 0))
    check_compatible(SIDECAR, "10.13.0.35", (8, 9))  # the matching pair passes
    check_compatible(None, "10.13.0.35", (9, 0))  # no sidecar: TensorRT itself will judge


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_engine_without_gpu_says_so(digits_converted, tmp_path):
    engine = build_engine(
        digits_converted["fp16"], tmp_path / "d.plan", backend="tensorrt-rtx", batch=(1, 2, 4)
    )
    runner = open_runner(engine.path)
    assert isinstance(runner, TensorRTRunner) and runner.backend == "tensorrt-rtx"
    with pytest.raises(ArtifactError, match="needs a CUDA GPU"), runner:
        pass


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and _has_tensorrt()), reason="needs a CUDA GPU and TensorRT"
)
@pytest.mark.parametrize("graphs", [False, True])
def test_engine_matches_onnxruntime_on_gpu(digits_onnx, tmp_path, graphs):
    engine = build_engine(digits_onnx, tmp_path / "d.plan", backend="tensorrt", batch=(1, 4, 8))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with open_runner(digits_onnx) as ort_runner, TensorRTRunner(engine.path, cuda_graphs=graphs) as trt:
        expected = ort_runner.infer(x)
        for _ in range(3):  # buffers and graphs are reused across calls
            got = trt.infer(x)
        assert trt.last_inference_ms() > 0
    np.testing.assert_allclose(got, expected, atol=1e-2, rtol=1e-2)
