"""The TensorRT path before it meets a GPU: engines keep their input form, the header decides the
flavour, timings cover the whole call, one hash per plan, imports point one way, and the GPU check
says what it could not run. Engines are real TensorRT-RTX builds (they build on the CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from helpers import as_full_tensorrt
from tritonclient.grpc import model_config_pb2

from resnest_deploy import _io, deepstream, formats, inspection, metadata
from resnest_deploy.artifacts import Lineup
from resnest_deploy.bench import bench
from resnest_deploy.engine import build_engine
from resnest_deploy.errors import ArtifactError
from resnest_deploy.loaders import tensorrt_options
from resnest_deploy.runners.base import InputFormatAdapter, Runner
from resnest_deploy.serving.repository import model_config

FORMS = ("float", "uint8-nhwc", "uint8-nchw", "deepstream")


@pytest.fixture(scope="module")
def form_exports(tmp_path_factory) -> dict[str, Path]:
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    folder = tmp_path_factory.mktemp("forms")
    model, info = load_model("resnest14d_digits", "pretrained")
    return {f: export_onnx(model, folder / f"d.{f}.onnx", input_format=f, weights=info).path for f in FORMS}


@pytest.fixture(scope="module")
def form_engines(form_exports) -> dict[str, Path]:
    return {f: build_engine(p, p.with_suffix(".plan"), batch=(1, 4, 8)).path for f, p in form_exports.items()}


@pytest.mark.parametrize("form", FORMS)
def test_engines_keep_the_input_form_in_sidecar_inspect_triton_nvinfer_and_the_runner(
    form_engines, form, tmp_path
):
    engine = form_engines[form]
    side = metadata.read_sidecar(engine) or {}
    fed = side["input"]
    assert (fed.get("format") or {}).get("name", "float") == form
    assert fed["dtype"] == formats.dtype(form) and fed["layout"] == (
        "NHWC" if form == "uint8-nhwc" else "NCHW"
    )
    assert fed["profile"]["max"] == formats.shape(form, 8, 32, 32)
    assert side["reference"]["logits_shape"] == [16, 10] and side["output"]["name"] == "logits"
    shown = inspection.describe(engine)
    assert shown["flavour"] == "tensorrt-rtx" and shown["metadata"]["input"]["dtype"] == fed["dtype"]
    cfg = text_format.Parse(model_config(engine, python_backend=True).config, model_config_pb2.ModelConfig())
    want_type = model_config_pb2.TYPE_UINT8 if form.startswith("uint8") else model_config_pb2.TYPE_FP32
    assert cfg.input[0].data_type == want_type
    assert list(cfg.input[0].dims) == formats.shape(form, 8, 32, 32)[1:]
    if form == "uint8-nhwc":
        assert cfg.input[0].format == model_config_pb2.ModelInput.FORMAT_NHWC
    lineup = Lineup.of([engine])
    assert lineup.size == (32, 32)
    runner = lineup.runner(lineup.infos[0])  # built, not activated: no GPU here
    assert isinstance(runner, InputFormatAdapter) == (form != "float")
    full = as_full_tensorrt(engine, tmp_path / f"{form}.plan")
    if form.startswith("uint8"):  # nvinfer feeds float NCHW
        with pytest.raises(ArtifactError, match="nvinfer feeds networks float NCHW"):
            deepstream.nvinfer_config(full)
    else:  # deepstream: x/255 - mean; float: the digits' one std for all channels is a scalar scale
        props = deepstream.nvinfer_config(full).properties
        assert props["model-engine-file"].endswith(f"{form}.plan") and props["infer-dims"] == "3;32;32"
        scale = 1 / 255 if form == "deepstream" else 1 / (255 * formats.InputForm.of(side).std[0])
        assert float(props["net-scale-factor"]) == pytest.approx(scale)


def test_the_header_decides_the_flavour_wherever_an_engine_is_read(form_engines, tmp_path):
    rtx = form_engines["deepstream"]
    lying = tmp_path / "lying.plan"
    shutil.copy(rtx, lying)
    side = metadata.read_sidecar(rtx) or {}
    side["tensorrt"] = {"flavour": "tensorrt", "version": "10.3.0"}
    _io.sidecar_path(lying).write_text(json.dumps(side))
    with pytest.raises(ArtifactError, match=r"built by tensorrt-rtx \(its header says so\)"):
        deepstream.nvinfer_config(lying)
    with pytest.raises(ArtifactError, match=r"built by tensorrt-rtx \(its header says so\)"):
        model_config(lying)
    assert inspection.describe(lying)["flavour"] == "tensorrt-rtx"
    from resnest_deploy.loaders import open_runner

    assert open_runner(lying).backend == "tensorrt-rtx"


def test_nvinfer_refuses_a_precision_it_has_no_mode_for_by_name(digits_onnx, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(digits_onnx)
    out = model.graph.output[0]
    inner = out.name + "_fp32"
    for node in model.graph.node:  # logits -> BF16 -> FP32: a graph that computes its output in bf16
        node.output[:] = [inner if o == out.name else o for o in node.output]
    model.graph.node.extend(
        [
            helper.make_node("Cast", [inner], ["logits_bf16"], to=TensorProto.BFLOAT16),
            helper.make_node("Cast", ["logits_bf16"], [out.name], to=TensorProto.FLOAT),
        ]
    )
    metadata.embed(model, metadata.from_onnx(model) | {"precision": "bf16"})
    onnx.save(model, tmp_path / "bf16.onnx")
    with pytest.raises(ArtifactError, match="computes in bf16, which nvinfer's network-mode cannot express"):
        deepstream.nvinfer_config(tmp_path / "bf16.onnx")


class _Slow(Runner):
    """A backend whose device timer covers only the last piece of a call (the old TensorRT timer)."""

    backend = "slow"

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        time.sleep(0.02)  # the first piece
        time.sleep(0.02)  # the last piece
        return np.zeros((len(x), 10), np.float32)

    def device_time_ms(self) -> float | None:
        return 20.0


def test_the_reported_latency_is_the_whole_call_and_device_time_is_a_second_figure():
    with _Slow("slow") as runner:
        runner.infer(np.zeros((2, 3, 4, 4), np.float32))
        assert runner.last_inference_ms() >= 40.0 and runner.device_time_ms() == 20.0


def test_bench_reports_the_first_call_and_no_gpu_time_on_the_cpu(digits_onnx):
    (row,) = bench([digits_onnx], batches=(4,), iterations=3, warmup=1)
    assert row.device_p50_ms is None and row.first_call_ms >= row.p50_ms > 0


def test_a_plan_is_hashed_once_per_command(form_engines):
    engine = form_engines["float"]
    _io._HASHED.clear()
    before = _io.HASH_COUNT[0]
    model_config(engine, python_backend=True)  # sidecar check, Lineup, provenance: one read
    Lineup.of([engine])
    assert _io.HASH_COUNT[0] - before == 1


def test_tensorrt_provider_options_follow_the_file(digits_onnx, digits_converted):
    fp32, fp16, int8 = (
        tensorrt_options(str(p)) for p in (digits_onnx, digits_converted["fp16"], digits_converted["int8"])
    )
    assert (fp32["trt_fp16_enable"], fp32["trt_int8_enable"]) == ("False", "False")
    assert fp16["trt_fp16_enable"] == "True" and int8["trt_int8_enable"] == "True"
    assert fp32["trt_profile_max_shapes"] == "input:32x3x32x32"
    assert Path(fp32["trt_engine_cache_path"]).is_dir()
    assert fp32["trt_engine_cache_path"] != fp16["trt_engine_cache_path"]  # keyed by the file


def test_the_engine_package_does_not_import_the_runners():
    code = (
        "import sys, resnest_deploy.engine.build\n"
        "assert 'resnest_deploy.runners.tensorrt' not in sys.modules, 'engine imports the runners'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_pipeline_asks_cuda_python_not_torch_whether_a_gpu_is_there(monkeypatch):
    """The CPU torch the README installs says no GPU even on a GPU machine; torch saying yes here
    (a CPU-only machine) must not make the pipeline run engines either."""
    import torch

    from resnest_deploy import _cuda, pipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pipeline._gpu() is (_cuda.gpu_count() > 0) is False


def test_the_gpu_check_runs_on_a_cpu_and_says_what_it_skipped_and_why(tmp_path):
    script = Path(__file__).parent.parent / "scripts" / "gpu_check.py"
    out = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "| build tensorrt-rtx engine, uint8-nhwc | pass |" in out.stdout
    assert "| tensorrt-rtx runner, float, batches above the profile | skip |" in out.stdout
    assert "no GPU: nothing written" in out.stdout and not list(tmp_path.iterdir())
