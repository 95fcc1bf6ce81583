"""Loaders in front of runners: one options object, the TensorRT-arithmetic path through open_runner,
runners that read no sidecar, and one description of an artifact."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import digit_folder
from typer.testing import CliRunner

from resnest_deploy import _io, artifacts, interface
from resnest_deploy.cli.app import app
from resnest_deploy.data import random_inputs
from resnest_deploy.errors import ArtifactError
from resnest_deploy.evaluate import evaluate
from resnest_deploy.executors.work import ClassifyJob
from resnest_deploy.loaders import open_runner
from resnest_deploy.runners import RunnerOptions

RUNNERS = Path(artifacts.__file__).parent / "runners"


def test_cli_provider_values_map_to_options_in_one_place():
    assert RunnerOptions.from_provider("openvino") == RunnerOptions(backend="openvino", ov_precision="f32")
    bf16 = RunnerOptions.from_provider("openvino-bf16", threads=2)
    assert (bf16.backend, bf16.ov_precision, bf16.threads, bf16.provider) == ("openvino", "bf16", 2, "cpu")
    for name in ("cpu", "cuda", "tensorrt", "openvino", "openvino-bf16"):
        assert RunnerOptions.from_provider(name).provider_name == name
    with pytest.raises(ArtifactError, match="unknown provider 'vulkan'"):
        RunnerOptions.from_provider("vulkan")
    with pytest.raises(ArtifactError, match="unknown provider 'openvino'"):
        RunnerOptions(provider="openvino")  # the library's provider is only ONNX Runtime's
    with pytest.raises(ArtifactError, match="ONNX Runtime on the CPU"):
        RunnerOptions.from_provider("cuda", fake_quant=True)
    options = RunnerOptions(fake_quant=True, threads=3, batch=8)
    assert pickle.loads(pickle.dumps(options)) == options  # it travels to workers
    assert ClassifyJob.__dataclass_fields__["options"].type == "RunnerOptions"  # one type, not two


def test_tensorrt_arithmetic_is_an_option_of_open_runner(digits_converted):
    """A TensorRT-target INT8 file run with ``fake_quant`` computes what ONNX Runtime computes with
    Q/DQ as float ops (asked of ONNX Runtime directly), not what the CPU's int8 kernels compute."""
    path = digits_converted["int8"]
    x = random_inputs(8, (32, 32), seed=3)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {session.get_inputs()[0].name: x})
    with open_runner(path, RunnerOptions(fake_quant=True, cache=False)) as fake:
        assert fake.backend == "onnxruntime-cpu-qdq-float"
        got = fake.infer(x)
    with open_runner(path, RunnerOptions(cache=False)) as kernels:
        fused = kernels.infer(x)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, fused)  # the option changed the arithmetic


def test_eval_judges_a_tensorrt_int8_file_as_tensorrt_computes_it(digits_converted, tmp_path):
    root = digit_folder(tmp_path / "val", per_class=3)
    path = str(digits_converted["int8"])
    (result,), _ = evaluate([path], root, options=RunnerOptions(fake_quant=True))
    assert result.backend == "onnxruntime-cpu-qdq-float" and result.images == 30 and result.top1 >= 0.9
    shown = CliRunner().invoke(app, ["eval", "--images", str(root), path, "--tensorrt-arithmetic", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["results"][0]["backend"] == "onnxruntime-cpu-qdq-float"
    bad = CliRunner().invoke(
        app, ["eval", "--images", str(root), path, "--tensorrt-arithmetic", "--provider", "openvino"]
    )
    assert bad.exit_code != 0 and "TensorRT's arithmetic" in bad.output and "Traceback" not in bad.output


def test_runners_read_no_sidecar_and_set_up_no_cache():
    """What is checked or set up before a runner runs is the loaders' work (Polygraphy's pattern)."""
    for source in sorted(RUNNERS.glob("*.py")):
        text = source.read_text()
        found = re.findall(r"sidecar|metadata\.read|\bcache\.|import metadata|import cache\b", text)
        assert not found, f"{source.name}: {found}"
        if source.name != "__init__.py":  # which re-exports open_runner for the old import path
            assert "resnest_deploy.loaders" not in text, f"{source.name} imports a loader"


def test_one_description_of_an_artifact(digits_onnx, digits_converted, tmp_path):
    int8 = artifacts.describe(digits_converted["int8"])
    assert (int8.kind, int8.precision, int8.arch, int8.input_size) == (
        "onnx",
        "int8",
        "resnest14d_digits",
        (32, 32),
    )
    assert int8.verified and int8.sidecar is not None and int8.sha256 == _io.sha256_file(int8.name)
    assert int8.io == interface.of(Path(int8.name), "onnx", int8.meta)
    assert (int8.io.num_classes, int8.io.input_dims) == (10, [3, 32, 32])
    assert artifacts.ArtifactInfo.of(digits_onnx) == artifacts.describe(digits_onnx)
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(digits_onnx.read_bytes())  # no sidecar: nothing vouches for the bytes
    assert not artifacts.describe(bare).verified
    torch = artifacts.describe("torch")
    assert torch.kind == "torch" and torch.meta == {} and torch.sidecar is None


def test_describing_artifacts_imports_no_torch_and_no_backend(digits_converted):
    code = (
        "import sys, resnest_deploy.artifacts as a, resnest_deploy.inspection, resnest_deploy.interface\n"
        "import resnest_deploy.metadata, resnest_deploy.loaders, resnest_deploy.runners.options\n"
        f"d = a.describe({str(digits_converted['int8'])!r}); d.io\n"
        "heavy = ('torch', 'onnxruntime', 'openvino', 'tensorrt')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "print(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
