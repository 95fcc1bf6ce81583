"""Random weights are said, not judged; a bar below the default is the user's, recorded, never silent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import digit_folder
from typer.testing import CliRunner

from resnest_deploy.cli.app import app
from resnest_deploy.compare import Tolerance
from resnest_deploy.errors import ParityError
from resnest_deploy.metadata import RANDOM_WEIGHTS_NOTE
from resnest_deploy.precision import CalibrationData, ConversionConfig, convert
from resnest_deploy.precision.int8 import KEEP_FP32_NODES, matching_nodes

cli = CliRunner()
SAID = "for speed and structure only"
#: a bar no INT8 file meets: exact logits
EXACT = Tolerance(rel_max_abs=0.0, cosine=1.0, top1=1.0, top5=1.0)


def _calib(n: int = 40, size: int = 64) -> CalibrationData:
    x = np.random.default_rng(0).standard_normal((n, 3, size, size), dtype=np.float32)
    return CalibrationData(x[:32], x[32:], {"kind": "npy"})


@pytest.fixture(scope="module")
def random_14d(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """resnest14d with random weights at 64x64, and its TensorRT-target INT8 file."""
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model

    folder = tmp_path_factory.mktemp("random14d")
    model, info = load_model("resnest14d", "random")
    src = export_onnx(model, folder / "r14.onnx", input_size=(64, 64), weights=info).path
    int8 = convert(src, None, ConversionConfig("int8", "tensorrt"), _calib()).path
    return {"fp32": src, "int8": int8}


def test_a_random_export_keeps_module_names_so_int8_keeps_its_default_fp32_nodes(random_14d):
    """The optimizer rebuilt nodes whose weights came through an Identity (random weights' equal zero
    biases) as node_Conv_N: the gate and classifier were quantized, and the search found no unit."""
    src = onnx.load(random_14d["fp32"])
    convs = [n.name for n in src.graph.node if n.op_type in ("Conv", "Gemm")]
    assert convs and all(name.startswith("/") for name in convs), convs[:3]
    int8 = onnx.load(random_14d["int8"])
    producers = {o: n for n in int8.graph.node for o in n.output}
    kept = [n for n in int8.graph.node if n.name in matching_nodes(int8, KEEP_FP32_NODES)]
    gate = [n for n in kept if n.op_type == "Conv"]
    assert len(gate) == 2 * 4  # fc1 and fc2 of each of resnest14d's four blocks
    assert all(producers[n.input[0]].op_type != "DequantizeLinear" for n in gate)


def test_a_random_file_is_measured_not_judged_and_trained_weights_keep_the_gate(
    random_14d, onnx_14d, tmp_path
):
    report = convert(
        random_14d["fp32"], tmp_path / "r.int8.onnx", ConversionConfig("int8", tolerance=EXACT), _calib()
    )
    gate = report.gate
    assert report.path.is_file() and gate["judged"] is False and gate["note"] == RANDOM_WEIGHTS_NOTE
    assert (
        report.parity.samples == 8 and report.metadata["parity"]["inputs"] == "8 held-out calibration inputs"
    )
    sidecar = json.loads(report.sidecar.read_text())
    assert sidecar["parity"]["gate"]["judged"] is False and sidecar["weights"]["kind"] == "random"
    with pytest.raises(ParityError, match="does not match its reference"):  # trained: the same bar fails
        convert(onnx_14d, tmp_path / "t.int8.onnx", ConversionConfig("int8", tolerance=EXACT), _calib())
    assert not (tmp_path / "t.int8.onnx").exists()


def test_a_bar_below_the_default_is_the_users_recorded_and_said(tmp_path):
    """The outlier digits model (trained weights) fails the default INT8 bar; --min-cosine and
    --min-top1 accept it, and the file and the output say it was accepted outside the default."""
    from resnest_deploy.precision.fixtures import outlier_digits

    src = outlier_digits(tmp_path / "outlier.onnx")
    args = ["quantize", "--onnx", str(src), "-p", "int8", "-o", str(tmp_path / "o.int8.onnx")]
    refused = cli.invoke(app, args)
    assert refused.exit_code == 1 and "does not match its reference" in refused.output
    assert not (tmp_path / "o.int8.onnx").exists()
    accepted = cli.invoke(app, [*args, "--min-cosine", "0", "--min-top1", "0"])
    assert accepted.exit_code == 0, accepted.output
    assert "accepted outside the default tolerance" in accepted.output
    gate = json.loads((tmp_path / "o.int8.onnx.json").read_text())["parity"]["gate"]
    assert gate["judged"] is True and gate["tolerance_from"] == "user"
    assert gate["tolerance"]["cosine"] == 0 and gate["outside_default"]


def test_check_eval_predict_and_inspect_say_random_weights(random_14d, digits_onnx, tmp_path):
    fp32, int8 = str(random_14d["fp32"]), str(random_14d["int8"])
    r = cli.invoke(app, ["check", fp32, int8, "--count", "4", "--json"])
    assert r.exit_code == 0, r.output
    judged = {Path(x["artifact"]).name: x["judged"] for x in json.loads(r.stdout)["results"]}
    assert judged == {"r14.onnx": True, "r14.int8.onnx": False}  # FP32 stays judged: the same function
    assert json.loads(r.stdout)["note"] == RANDOM_WEIGHTS_NOTE
    r = cli.invoke(app, ["check", fp32, int8, "--count", "4"])
    assert r.exit_code == 0 and "not judged" in r.output and SAID in r.output
    images = digit_folder(tmp_path / "labelled", classes=(0, 1), per_class=1, size=64)
    photo = str(next(images.rglob("*.png")))
    for args in (["predict", int8, photo], ["eval", "--images", str(images), int8], ["inspect", int8]):
        r = cli.invoke(app, args)
        assert r.exit_code == 0 and SAID in r.output, (args, r.output)
    assert re.search(r"weights stored: .*int8 [\d.]+ MiB", r.output)  # inspect: the bytes by precision
    trained = cli.invoke(app, ["predict", str(digits_onnx), photo])
    assert trained.exit_code == 0 and SAID not in trained.output
