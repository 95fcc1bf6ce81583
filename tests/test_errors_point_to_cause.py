"""Errors that point to the cause: no GPU said before any install hint, folders said as folders,
`serve` given a repository, third-party log lines kept off the terminal, Jetson on TensorRT-RTX."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from resnest_deploy._cuda import driver_problem
from resnest_deploy.cli.app import app
from resnest_deploy.engine import build_engine

cli = CliRunner()
NO_GPU = driver_problem() is not None


@pytest.fixture(scope="module")
def engine(digits_onnx, tmp_path_factory):
    pytest.importorskip("tensorrt_rtx")
    return build_engine(digits_onnx, tmp_path_factory.mktemp("plan") / "d.plan", batch=(1, 2, 4)).path


@pytest.mark.skipif(not NO_GPU, reason="a GPU is visible: the engine runs")
def test_an_engine_without_a_gpu_says_so_before_any_install_hint(engine, digits_onnx, tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (9, 99, 200)).save(image)
    for args in (["predict", str(engine), str(image)], ["bench", str(engine), "-n", "1"]):
        r = cli.invoke(app, args)
        assert r.exit_code == 1, r.output
        assert "runs only on an NVIDIA GPU, and no NVIDIA driver here" in r.stderr, r.stderr
        assert f"run {digits_onnx.name} here instead" in r.stderr and "pip install" not in r.stderr
    r = cli.invoke(app, ["predict", str(digits_onnx), str(image), "--provider", "cuda"])
    assert r.exit_code == 1 and "--provider cuda needs an NVIDIA GPU, and no NVIDIA driver" in r.stderr


def test_onnxruntime_log_lines_stay_off_the_terminal_unless_verbose(digits_onnx):
    """A machine with a driver but without CUDA's libraries: ONNX Runtime logs two coloured lines as
    it falls back to the CPU. The driver check is bypassed in a process of its own to reach that
    path here (ONNX Runtime's logger is per process)."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider to fail over from")
    script = textwrap.dedent(
        f"""
        import os, sys
        import resnest_deploy.runners.onnxruntime as m
        m.driver_problem = lambda: None  # as on a machine with a driver
        for verbose in ("0", "1"):
            os.environ["RESNEST_DEPLOY_VERBOSE"] = verbose
            try:
                with m.OnnxRuntimeRunner({str(digits_onnx)!r}, m.RunnerOptions(provider="cuda")):
                    pass
            except Exception as e:
                sys.stderr.write(f"ours {{verbose}}: {{e}}\\n")
                sys.stderr.flush()
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    quiet, _, loud = done.stderr.partition("ours 0:")
    assert "could not start CUDAExecutionProvider" in loud
    assert "onnxruntime:Default" not in quiet  # nothing of ONNX Runtime's before our own line
    assert "onnxruntime:Default" in loud.partition("ours 1:")[0]  # --verbose lets them through


def test_modelopt_logs_only_with_verbose(monkeypatch):
    import logging

    from resnest_deploy.precision.job import quiet_modelopt

    # the global switch, not a logger's own level (ModelOpt sets those itself when it runs)
    monkeypatch.delenv("RESNEST_DEPLOY_VERBOSE", raising=False)
    with quiet_modelopt():
        assert logging.root.manager.disable >= logging.WARNING
    assert logging.root.manager.disable == logging.NOTSET
    monkeypatch.setenv("RESNEST_DEPLOY_VERBOSE", "1")
    with quiet_modelopt():
        assert logging.root.manager.disable == logging.NOTSET
    monkeypatch.delenv("RESNEST_DEPLOY_VERBOSE")
    with quiet_modelopt(verbose=True):  # quantize --verbose, pipeline --verbose
        assert logging.root.manager.disable == logging.NOTSET


def test_serve_given_a_repository_or_a_folder_says_what_it_takes(digits_onnx, tmp_path):
    repo = tmp_path / "repo"
    assert cli.invoke(app, ["triton", str(digits_onnx), "--repo", str(repo)]).exit_code == 0
    r = cli.invoke(app, ["serve", str(repo), "--http-port", "1", "--grpc-port", "2", "--metrics-port", "3"])
    assert r.exit_code == 1 and "starting tritonserver" not in r.stderr
    assert f"{repo} is a Triton model repository (1 model); serve takes artifacts" in r.stderr
    assert f"resnest-deploy serve {repo}/digits/1/model.onnx --name digits" in r.stderr
    r = cli.invoke(app, ["serve", str(tmp_path)])
    assert r.exit_code == 1 and "is a folder; serve takes artifacts" in r.stderr


def test_a_jetson_target_on_tensorrt_rtx_names_the_way_forward(digits_onnx, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    out = tmp_path / "orin.plan"
    args = ["build", "--onnx", str(digits_onnx), "-o", str(out), "--backend", "tensorrt-rtx"]
    r = cli.invoke(app, [*args, "--compute-capability", "8.9", "--compute-capability", "8.7"])
    assert r.exit_code == 1 and not out.exists()
    assert "compute capability 8.7 is Jetson Orin, which TensorRT-RTX does not build for" in r.stderr
    assert (
        f"resnest-deploy build --onnx {digits_onnx.name} --backend tensorrt --batch-profile 1,8,32"
        in r.stderr
    )


def test_every_library_error_is_a_resnest_deploy_error_defined_in_errors_py():
    """One place for error classes: the old import sites give the same class, and data's ImageError
    is one a command prints as one line. (serving/'s own errors move with the serving split.)"""
    import ast
    from pathlib import Path

    import resnest_deploy
    from resnest_deploy import data, errors, executors, limits
    from resnest_deploy.engine import build

    for old, name in (
        (limits, "LimitError"),
        (data, "ImageError"),
        (build, "BuildError"),
        (executors, "ClusterError"),
    ):
        assert getattr(old, name) is getattr(errors, name)
        assert issubclass(getattr(errors, name), errors.ResnestDeployError)
    package = Path(resnest_deploy.__file__).parent
    elsewhere = [
        f"{path.relative_to(package)}:{node.name}"
        for path in package.rglob("*.py")
        if path.name != "errors.py" and "serving" not in path.parts
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Error")
    ]
    assert elsewhere == []


def test_a_library_message_names_its_parameter_and_the_cli_its_flag(digits_onnx, tmp_path):
    from resnest_deploy.errors import BuildError

    e = BuildError("{compute_capabilities} applies to TensorRT-RTX only", param="compute_capabilities")
    assert str(e) == "compute_capabilities applies to TensorRT-RTX only"
    r = cli.invoke(app, ["check", str(digits_onnx), "--reference", "recorded", "--images", str(tmp_path)])
    assert r.exit_code == 1
    assert "error: recorded references exist for their probe inputs only; drop --images," in r.stderr
