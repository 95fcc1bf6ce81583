"""The TensorRT runner: its rules run everywhere; running an engine needs a GPU (skipped without one)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from resnest_deploy._cuda import cudart, gpu_count
from resnest_deploy.engine import build_engine, detect
from resnest_deploy.errors import ArtifactError, MissingDependencyError
from resnest_deploy.loaders import open_runner
from resnest_deploy.loaders.tensorrt import check_compatible
from resnest_deploy.runners import RunnerOptions
from resnest_deploy.runners.tensorrt import Profile, TensorRTRunner, numpy_dtype


def _has_cuda_python() -> bool:
    try:
        cudart()
        return True
    except MissingDependencyError:
        return False


def _gpu_with_tensorrt() -> bool:
    try:
        return gpu_count() > 0 and detect("tensorrt").backend == "tensorrt"
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


def test_batches_above_the_profile_maximum_run_in_pieces_that_each_lie_within_the_profile():
    def sizes(profile: Profile, n: int) -> list[int]:
        pieces = profile.pieces(n)
        assert pieces[0].start == 0 and pieces[-1].stop == n
        assert all(a.stop == b.start for a, b in itertools.pairwise(pieces))
        return [s.stop - s.start for s in pieces]

    one = Profile((1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))
    assert [sizes(one, n) for n in (1, 16, 17, 40)] == [[1], [16], [16, 1], [16, 16, 8]]
    two = Profile((2, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))
    assert sizes(two, 33) == [31, 2]  # not refused, and no piece below the minimum
    assert sizes(two, 65) == [32, 31, 2]
    four = Profile((4, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))
    assert sizes(four, 18) == [14, 4]
    with pytest.raises(ArtifactError, match=r"batch 2 does not split into runs of 4\.\.16"):
        four.pieces(2)
    with pytest.raises(ArtifactError, match=r"batch 33 does not split into runs of 20\.\.32"):
        Profile((20, 3, 32, 32), (24, 3, 32, 32), (32, 3, 32, 32)).pieces(33)


def test_shapes_outside_the_profile_are_refused_not_run_as_the_last_shape():
    profile = Profile((1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))
    profile.check((16, 3, 32, 32), "input")
    for shape in ((2, 3, 64, 64), (2, 1, 32, 32), (2, 3, 32)):
        with pytest.raises(ArtifactError, match="outside the engine's profile"):
            profile.check(shape, "input")


def test_io_types_agree_with_tensorrts_own_numpy_mapping_and_the_rest_are_refused():
    """Every member of TensorRT's DataType: where TensorRT names a NumPy type (``trt.nptype``) we use
    that type, and where it cannot (BF16, FP8, INT4, ...) we refuse the engine by name."""
    trt = detect("tensorrt-rtx").module
    members = list(trt.DataType.__members__.values())
    assert len(members) >= 8
    for member in members:
        try:
            expected = trt.nptype(member)
        except TypeError:
            with pytest.raises(ArtifactError, match="which NumPy cannot hold"):
                numpy_dtype(member, "t")
        else:
            assert numpy_dtype(member, "t") is expected, member


@pytest.mark.skipif(_has_cuda_python(), reason="checks the message shown where cuda-python is missing")
def test_an_engine_without_cuda_python_names_the_extra_once_a_gpu_is_there(digits_converted, tmp_path):
    """Where the driver sees a GPU, the missing extra is named; where it does not, that is said
    first (installing cuda-python would not help), and no install hint at all."""
    from resnest_deploy._cuda import driver_problem

    engine = build_engine(
        digits_converted["fp16"], tmp_path / "d.plan", backend="tensorrt-rtx", batch=(1, 2, 4)
    )
    runner = open_runner(engine.path)
    assert isinstance(runner, TensorRTRunner) and runner.backend == "tensorrt-rtx"
    if driver_problem() is None:
        with pytest.raises(MissingDependencyError, match=r"resnest-deploy\[tensorrt\]"), runner:
            pass
    else:
        with pytest.raises(ArtifactError, match="runs only on an NVIDIA GPU") as caught, runner:
            pass
        assert "pip install" not in str(caught.value)


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_with_tensorrt(), reason="needs a CUDA GPU, cuda-python and TensorRT")
@pytest.mark.parametrize("graphs", [False, True])
def test_engine_matches_onnxruntime_on_gpu(digits_onnx, tmp_path, graphs):
    engine = build_engine(digits_onnx, tmp_path / "d.plan", backend="tensorrt", batch=(1, 4, 8))
    x = np.random.default_rng(0).standard_normal((20, 3, 32, 32), dtype=np.float32)  # above the max
    graphed = RunnerOptions(cuda_graphs=graphs)
    with open_runner(digits_onnx) as ort_runner, open_runner(engine.path, graphed) as trt:
        expected = ort_runner.infer(x)
        for shape in (4, 1, 20, 4):  # buffers and graphs are reused across calls and shapes
            got = trt.infer(x[:shape])
            np.testing.assert_allclose(got, expected[:shape], atol=1e-4, rtol=1e-4)
        assert trt.last_inference_ms() > 0
