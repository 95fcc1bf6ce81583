"""The edge runtime: running and checking artifacts with no PyTorch installed.

In CI these tests also run in a second venv (Python 3.10, numpy 1.x, plain ``pip install .``, no
torch) on artifacts the main venv exported, named by ``RESNEST_DEPLOY_RUNTIME_ARTIFACTS``. In the main
venv they export those artifacts themselves and run the CLI in processes where torch cannot import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from resnest_deploy.check import check
from resnest_deploy.data import digits

ARTIFACTS_ENV = "RESNEST_DEPLOY_RUNTIME_ARTIFACTS"
NO_TORCH = Path(__file__).with_name("no_torch.py")


@pytest.fixture(scope="module")
def artifacts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``digits.onnx`` and ``digits.int8-cpu.onnx`` with sidecars: CI's, or exported here."""
    given = os.environ.get(ARTIFACTS_ENV)
    if given:
        return Path(given)
    folder = tmp_path_factory.mktemp("runtime")
    onnx_path = request.getfixturevalue("digits_onnx")
    converted = request.getfixturevalue("digits_converted")
    for src, name in ((onnx_path, "digits.onnx"), (converted["int8-cpu"], "digits.int8-cpu.onnx")):
        shutil.copy(src, folder / name)
        shutil.copy(f"{src}.json", folder / f"{name}.json")
    return folder


def no_torch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, str(NO_TORCH), *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert run.stderr.rstrip().splitlines()[-1] == "torch modules: []", run.stderr
    return run


def test_ci_runtime_venv_really_has_no_torch():
    if not os.environ.get(ARTIFACTS_ENV):
        pytest.skip("main venv: torch is installed here, the CLI runs below with it blocked")
    assert importlib.util.find_spec("torch") is None and sys.version_info[:2] == (3, 10)
    assert int(np.__version__.split(".")[0]) == 1


def test_help_and_every_runtime_command_work_without_torch(artifacts, tmp_path):
    fp32, int8 = artifacts / "digits.onnx", artifacts / "digits.int8-cpu.onnx"
    images, labels = digits("test")
    for label in (0, 7):
        folder = tmp_path / "val" / str(label)
        folder.mkdir(parents=True)
        for i, idx in enumerate(np.flatnonzero(labels == label)[:4]):
            Image.fromarray(images[idx]).resize((32, 32)).save(folder / f"{i}.png")
    sample = tmp_path / "val" / "7" / "0.png"
    assert "Usage" in no_torch("--help").stdout
    predicted = json.loads(no_torch("predict", str(int8), str(sample), "--json").stdout)
    assert predicted[0]["top"][0]["label"] == "7"
    accuracy = json.loads(
        no_torch("eval", "--images", str(tmp_path / "val"), str(fp32), str(int8), "--json").stdout
    )
    assert [r["top1"] for r in accuracy["results"]] == [1.0, 1.0]
    timed = json.loads(no_torch("bench", str(int8), "-b", "1,4", "-n", "3", "--json").stdout)
    assert [r["batch"] for r in timed] == [1, 4] and all(r["p50_ms"] > 0 for r in timed)
    checked = json.loads(no_torch("check", str(fp32), str(int8), "--json").stdout)
    assert checked["passed"] and checked["reference"] == "pytorch fp32 cpu, recorded at export"
    assert "but its graph is" not in no_torch("inspect", str(int8)).stdout  # its label is its graph
    missing = no_torch("export", "--arch", "resnest14d_digits", "-o", str(tmp_path / "x.onnx"))
    assert missing.returncode == 1 and "pip install 'resnest-deploy[export]'" in missing.stderr


def test_recorded_reference_passes_honest_files_and_catches_a_damaged_one(artifacts, tmp_path):
    report = check([artifacts / "digits.onnx", artifacts / "digits.int8-cpu.onnx"], reference_from="recorded")
    assert report.passed and report.inputs["count"] == 16
    assert report.inputs["kind"] == "recorded probe inputs (bundled digits (test split))"
    by_precision = {r.precision: r.metrics for r in report.results}
    assert by_precision["fp32"].max_abs < 1e-4 and by_precision["int8"].top1 == 1.0
    model = onnx.load(artifacts / "digits.onnx")
    target = next(t for t in model.graph.initializer if len(t.dims) == 4 and t.dims[0] >= 64)
    w = onnx.numpy_helper.to_array(target).copy()
    w[0] += 0.5 * np.abs(w).max()
    target.CopyFrom(onnx.numpy_helper.from_array(w, target.name))
    onnx.save(model, tmp_path / "damaged.onnx")
    damaged = check([tmp_path / "damaged.onnx"], reference_from="recorded")
    assert not damaged.passed and damaged.results[0].problems
