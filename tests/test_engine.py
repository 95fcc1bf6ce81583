"""Engine builds through TensorRT-RTX, ahead of time on this CPU-only machine."""

from __future__ import annotations

import json

import onnx
import pytest
from helpers import images
from onnx import TensorProto, helper

from resnest_deploy.engine import BuildError, build_engine, detect, parse_batch_range
from resnest_deploy.errors import ArtifactError
from resnest_deploy.export import export_onnx
from resnest_deploy.models import create_model
from resnest_deploy.precision import CalibrationData, ConversionConfig, convert


def test_rtx_is_detected():
    flavour = detect("tensorrt-rtx")
    assert flavour.is_rtx and flavour.needs_strongly_typed_flag and flavour.version.count(".") >= 2


def test_resnest14d_builds_with_complete_sidecar_and_says_rtx_ignores_timing_caches(onnx_14d, tmp_path):
    cache = tmp_path / "timing.cache"
    report = build_engine(
        onnx_14d, tmp_path / "m.plan", backend="tensorrt-rtx", batch=(1, 4, 16), timing_cache=cache
    )
    assert report.path.stat().st_size > 1_000_000
    side = json.loads((tmp_path / "m.plan.json").read_text())
    assert side["arch"] == "resnest14d" and side["precision"] == "fp32"
    assert side["tensorrt"]["flavour"] == "tensorrt-rtx" and side["tensorrt"]["strongly_typed"]
    assert side["tensorrt"]["tf32"] is False  # cleared explicitly: TensorRT-RTX's default is on
    assert side["input"]["profile"] == {"min": [1, 3, 64, 64], "opt": [4, 3, 64, 64], "max": [16, 3, 64, 64]}
    assert len(side["source_onnx"]["sha256"]) == 64 and side["build_seconds"] > 0 and side["command"]
    # TensorRT-RTX has no timing cache: the build says so rather than pretending to use one
    assert side["timing_cache"] == f"{cache} not used: TensorRT-RTX has no timing cache"
    assert not cache.exists()


def test_resnest50_full_size_builds(onnx_50, tmp_path):
    report = build_engine(onnx_50, tmp_path / "r50.plan", backend="tensorrt-rtx", batch=(1, 8, 32))
    assert report.profile["max"] == [32, 3, 224, 224] and report.path.stat().st_size > 50_000_000


def test_odd_size_pools_parse_and_build(tmp_path):
    # ceil-mode avg-down pools and 3x3 avd pools at odd feature-map sizes go through the TensorRT parser
    path = export_onnx(create_model("resnest14d"), tmp_path / "odd.onnx", input_size=(225, 225)).path
    report = build_engine(path, backend="tensorrt-rtx", batch=(1, 2, 4))
    assert report.profile["opt"] == [2, 3, 225, 225]


def test_truncated_onnx_gives_one_line_and_no_plan(onnx_14d, tmp_path):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(onnx_14d.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="not a readable ONNX file"):
        build_engine(bad, backend="tensorrt-rtx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.onnx"]


def test_unparsable_op_gives_one_line_and_no_plan(tmp_path):
    node = helper.make_node("NoSuchOp", ["input"], ["logits"], domain="example.custom")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    path = tmp_path / "weird.onnx"
    onnx.save(
        helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
        ),
        path,
    )
    with pytest.raises(BuildError, match=r"cannot build weird.onnx: .*NoSuchOp") as e:
        build_engine(path, backend="tensorrt-rtx")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "weird.plan").exists() and not (tmp_path / "weird.plan.json").exists()


def test_static_batch_model_refuses_a_batch_range(tmp_path):
    path = export_onnx(create_model("resnest14d"), tmp_path / "b1.onnx", batch=1, input_size=(64, 64)).path
    with pytest.raises(BuildError, match=r"static batch of 1 .* re-export with --batch-dim dynamic"):
        build_engine(path, backend="tensorrt-rtx", batch=(1, 8, 32))
    assert not (tmp_path / "b1.plan").exists()


@pytest.mark.parametrize("text", ["0,1,2", "8,4,16", "a,b,c", "1,2"])
def test_bad_batch_ranges(text):
    with pytest.raises(BuildError, match="MIN,OPT,MAX"):
        parse_batch_range(text)


def test_missing_onnx(tmp_path):
    with pytest.raises(ArtifactError, match="ONNX file not found"):
        build_engine(tmp_path / "none.onnx", backend="tensorrt-rtx")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_resnest14d_builds(onnx_14d, tmp_path, precision):
    """The TensorRT-target FP16/INT8 files parse and build strongly typed; the engine says its precision."""
    calib = CalibrationData(images(40), images(8, seed=1), {"kind": "random"})
    converted = convert(onnx_14d, tmp_path / f"m.{precision}.onnx", ConversionConfig(precision), calib)
    report = build_engine(converted.path, backend="tensorrt-rtx", batch=(1, 2, 8))
    side = json.loads(report.sidecar.read_text())
    assert side["precision"] == precision and side["arch"] == "resnest14d"
    assert report.path.stat().st_size > 500_000


def test_trained_int8_digits_builds(digits_converted, tmp_path):
    report = build_engine(
        digits_converted["int8"], tmp_path / "d.plan", backend="tensorrt-rtx", batch=(1, 8, 32)
    )
    assert json.loads(report.sidecar.read_text())["precision"] == "int8"
