"""OpenVINO behind the runner interface: our files as they are, and the precision that runs, explicit."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from resnest_deploy.check import check
from resnest_deploy.cli.app import app
from resnest_deploy.data import Transform, digits, digits_batch
from resnest_deploy.errors import ArtifactError
from resnest_deploy.loaders import open_runner
from resnest_deploy.models import get_spec
from resnest_deploy.runners import RunnerOptions

OPENVINO = RunnerOptions.from_provider("openvino")

ov = pytest.importorskip("openvino")  # the dev install has it; CI installs dev
HAS_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = digits("test")
    return digits_batch(images, Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)), labels


def test_fp32_means_f32_execution_and_every_file_runs(digits_onnx, digits_converted, test_digits):
    x, labels = test_digits
    with open_runner(digits_onnx) as ort_runner, open_runner(digits_onnx, OPENVINO) as ov_runner:
        assert ov_runner.backend == "openvino-cpu-f32" and ov_runner.computes_in is None
        np.testing.assert_allclose(ov_runner.infer(x[:64]), ort_runner.infer(x[:64]), atol=1e-4)
    for name in ("fp16", "int8", "int8-cpu"):
        with open_runner(digits_converted[name], OPENVINO) as runner:
            top1 = (runner.infer_batched(x, 64).argmax(1) == labels).mean()
        assert top1 > 0.99, name
    report = check([digits_onnx, digits_converted["int8-cpu"]], provider="openvino")
    assert report.passed and [r.precision for r in report.results] == ["fp32", "int8"]


def test_bf16_is_its_own_choice_judged_by_its_own_bar_or_refused(digits_onnx):
    if not HAS_BF16:
        with pytest.raises(ArtifactError, match="no BF16 support"):
            check([digits_onnx], provider="openvino-bf16")
        return
    (result,) = check([digits_onnx], provider="openvino-bf16").results
    assert result.backend == "openvino-cpu-bf16" and result.precision == "bf16" and result.passed
    assert result.metrics.max_abs > 1e-4 and result.metrics.cosine > 0.9999  # really ran in BF16


def test_openvino_through_the_cli_says_what_ran(digits_onnx):
    result = CliRunner().invoke(
        app,
        ["bench", str(digits_onnx), "--provider", "openvino", "--ov-hint", "throughput", "-n", "2", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert '"backend": "openvino-cpu-f32"' in result.stdout
