"""FP16 / INT8 conversion, measured on the bundled model trained on real digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import digits_accuracy
from PIL import Image

from resnest_deploy.data import Transform
from resnest_deploy.errors import ArtifactError, ResnestDeployError
from resnest_deploy.models import get_spec
from resnest_deploy.precision import ConversionConfig, ConversionReport, calibration, convert
from resnest_deploy.precision.int8 import KEEP_FP32_NODES, matching_nodes
from resnest_deploy.runners.options import RunnerOptions

DIGITS = Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)


@pytest.fixture(scope="module")
def fp32_accuracy(digits_onnx: Path) -> float:
    acc = digits_accuracy(digits_onnx)
    assert acc > 0.98  # the bundled weights are really trained
    return acc


@pytest.mark.parametrize(("key", "budget"), [("fp16", 0.001), ("int8", 0.01), ("int8-cpu", 0.01)])
def test_accuracy_goals_on_digits(digits_converted, fp32_accuracy, key, budget):
    assert digits_accuracy(digits_converted[key]) >= fp32_accuracy - budget


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def test_fp16_keeps_io_and_softmax_in_fp32(digits_converted):
    model = onnx.shape_inference.infer_shapes(onnx.load(digits_converted["fp16"]))
    fp32 = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == fp32
    assert model.graph.output[0].type.tensor_type.elem_type == fp32
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    softmax_in = [types[n.input[0]] for n in model.graph.node if n.op_type == "Softmax"]
    conv_out = [types.get(n.output[0]) for n in model.graph.node if n.op_type == "Conv"]
    assert softmax_in and set(softmax_in) == {fp32}
    assert conv_out.count(onnx.TensorProto.FLOAT16) >= len(conv_out) - 2  # the gate convs may stay fp32


def test_tensorrt_int8_qdq_placement(digits_converted):
    """Every Conv outside the FP32 gate has quantized input and per-channel symmetric int8 weights."""
    model = onnx.load(digits_converted["int8"])
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    prod = _producers(model)
    kept = set(matching_nodes(model, KEEP_FP32_NODES))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert {n.name for n in convs if n.name in kept} == {n.name for n in convs if "/fc" in n.name}
    for conv in convs:
        if conv.name in kept:
            assert prod[conv.input[0]].op_type != "DequantizeLinear"
            continue
        x_dq, w_dq = prod[conv.input[0]], prod[conv.input[1]]
        assert x_dq.op_type == w_dq.op_type == "DequantizeLinear", conv.name
        weights = inits.get(w_dq.input[0])  # int8 weights stored quantized, not FP32 behind a Q
        assert weights is not None and weights.dtype == np.int8, f"{conv.name}: weights not stored as int8"
        scale, zero = inits[w_dq.input[1]], inits[w_dq.input[2]]
        assert weights.ndim == 4, conv.name
        assert scale.shape == (weights.shape[0],), f"{conv.name}: not one scale per output channel"
        assert np.all(zero == 0) and zero.dtype == np.int8, f"{conv.name}: weights are not symmetric int8"
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in inits:
            s = inits[n.input[1]]
            assert np.all(np.isfinite(s)) and np.all(s > 0), n.name
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax and not any(prod[n.input[0]].op_type == "DequantizeLinear" for n in softmax)


def test_cpu_int8_uses_integer_kernels(digits_converted, tmp_path):
    """After ONNX Runtime's own fusion only the FP32 gate convs remain float: the fast path."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(digits_converted["int8-cpu"]), opts, providers=["CPUExecutionProvider"])
    fused = onnx.load(tmp_path / "fused.onnx")
    float_convs = [n.name for n in fused.graph.node if n.op_type in ("Conv", "FusedConv")]
    qconvs = [n for n in fused.graph.node if n.op_type == "QLinearConv"]
    assert len(qconvs) == 19
    assert all("/fc" in name for name in float_convs), float_convs
    zp = {t.name: t.data_type for t in onnx.load(digits_converted["int8-cpu"]).graph.initializer}
    act_zps = [
        zp[n.input[2]]
        for n in onnx.load(digits_converted["int8-cpu"]).graph.node
        if n.op_type == "QuantizeLinear" and n.input[2] in zp
    ]
    assert act_zps and set(act_zps) == {onnx.TensorProto.UINT8}


def test_sidecar_records_precision_calibration_and_parity(digits_converted):
    for key, path in digits_converted.items():
        meta = json.loads(Path(f"{path}.json").read_text())
        assert meta["precision"] == key.split("-")[0]
        assert meta["arch"] == "resnest14d_digits"
        assert meta["parity"]["metrics"]["samples"] == 899  # the whole held-out test split
        assert meta["source"]["sha256"] and meta["file"]["sha256"]
        if key.startswith("int8"):
            assert meta["conversion"]["calibration"]["kind"] == "digits"
            assert meta["conversion"]["method"] == "max"
        embedded = {p.key: p.value for p in onnx.load(path).metadata_props}
        assert embedded["precision"] == meta["precision"]
        # the typed report reads back from the sidecar, as written today and as written before
        # the conversion section had a schema version
        report = ConversionReport.from_sidecar(path)
        assert (report.precision, report.target) == (key.split("-")[0], meta["target"])
        assert report.parity.samples == 899 and meta["conversion"]["schema"] == 3
        if key.startswith("int8"):  # judged on the 899 labelled test digits: top-1 drop with its interval
            assert report.evaluation is not None and report.evaluation.count == 899
            assert report.evaluation.labelled and report.drop is not None and report.drop.n == 899
        old = {**meta, "conversion": {k: v for k, v in meta["conversion"].items() if k != "schema"}}
        assert ConversionReport.from_metadata(old, path).parity == report.parity


def _write_images(folder: Path, n: int, size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_image_calibration_skips_bad_files_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEST_DEPLOY_CACHE", str(tmp_path / "cache"))
    _write_images(tmp_path / "imgs" / "sub", 30)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored: not an image suffix")
    first = calibration.from_images(tmp_path / "imgs", DIGITS, count=20)
    assert first.calib.shape == (20, 3, 32, 32) and len(first.holdout) == 10
    assert len(first.source["skipped"]) == 1 and "broken.jpg" in first.source["skipped"][0]
    assert "cache" not in first.source
    again = calibration.from_images(tmp_path / "imgs", DIGITS, count=20)
    assert "cache" in again.source and np.array_equal(first.calib, again.calib)
    assert len(again.source["skipped"]) == 1


def test_transform_crops_the_centre_instead_of_squashing():
    """Shorter side to 256, centre 224 crop: of a 256x512 image whose outer quarters are black, only
    the bright middle half is left; a squash-resize of the whole width would keep black columns."""
    t = Transform.from_pretrained(get_spec("resnest50").pretrained)
    img = np.zeros((256, 512, 3), np.uint8)
    img[:, 128:384] = 255
    x = t(Image.fromarray(img))
    assert x.shape == (3, 224, 224)
    white = (1.0 - np.array(t.mean)) / np.array(t.std)
    np.testing.assert_allclose(
        x, np.broadcast_to(white[:, None, None], x.shape).astype(np.float32), rtol=1e-6
    )


def _torchvision_resize(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision.transforms.functional._compute_resized_output_size for an int size."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def _torchvision_crop(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision.transforms.functional.center_crop's offsets."""
    return round((w - size) / 2.0), round((h - size) / 2.0)


@pytest.mark.parametrize("arch", ["resnest50", "resnest101", "resnest200e", "resnest269e"])
def test_transform_sizes_and_crops_match_torchvision_on_many_shapes(arch):
    """timm's eval transform is torchvision's Resize + CenterCrop: the long side is truncated and
    crop offsets are rounded half to even. The old arithmetic (rounded side, floored offset) was a
    pixel off on shapes like these."""
    t = Transform.from_pretrained(get_spec(arch).pretrained)
    differs = 0
    for w in range(t.resize, t.resize + 300, 7):
        for h in (t.resize, t.resize + 1, t.resize + 33, 2 * t.resize + 5, w + 1):
            assert t.resized(w, h) == _torchvision_resize(w, h, t.resize), (w, h)
            nw, nh = t.resized(w, h)
            assert t.crop_box(nw, nh)[:2] == _torchvision_crop(nw, nh, t.size), (nw, nh)
            old = round(max(w, h) * t.resize / min(w, h)), (max(nw, nh) - t.size) // 2
            differs += old != (max(nw, nh), max(t.crop_box(nw, nh)[:2]))
    assert differs > 0  # the shapes above include ones where the old arithmetic was off


def test_transform_output_matches_a_pixel_exact_reference_crop():
    """A column ramp 15 wide: torchvision crops from column round(3.5) = 4, flooring gave 3."""
    t = Transform(size=8, resize=10, interpolation="nearest", mean=(0, 0, 0), std=(1, 1, 1))
    ramp = np.tile(np.arange(15, dtype=np.uint8) * 17, (10, 1))  # 15 x 10 stays 15 x 10
    x = t(Image.fromarray(ramp))
    left, _ = _torchvision_crop(15, 10, 8)
    assert left == 4
    np.testing.assert_allclose(x[0, 0] * 255, ramp[0, left : left + 8].astype(np.float32), atol=1e-4)


def test_int8_without_data_is_refused(onnx_14d, tmp_path):
    out = tmp_path / "x.onnx"
    with pytest.raises(ResnestDeployError, match="INT8 needs calibration data"):
        convert(onnx_14d, out, ConversionConfig("int8"))
    assert not out.exists()


def test_cpu_isa_outside_a_cpu_int8_conversion_is_refused_not_ignored(onnx_14d, tmp_path):
    """Refused when the config is made, naming the parameter; the CLI names the flag."""
    from typer.testing import CliRunner

    from resnest_deploy.cli.app import app

    with pytest.raises(ResnestDeployError, match="cpu_isa is for target=cpu INT8 files"):
        ConversionConfig("fp16", cpu_isa="vnni")
    with pytest.raises(ResnestDeployError, match="unknown cpu_isa 'avx2'; choose one of any, vnni"):
        ConversionConfig("int8", "cpu", cpu_isa="avx2")
    out = tmp_path / "x.onnx"
    r = CliRunner().invoke(
        app, ["quantize", "--onnx", str(onnx_14d), "-p", "fp16", "--cpu-isa", "vnni", "-o", str(out)]
    )
    assert r.exit_code == 1 and "error: --cpu-isa is for --target cpu INT8 files" in r.output, r.output
    assert not out.exists()


def test_a_conversion_config_is_checked_once_when_made():
    """Every choice is checked when the config is made, and a made config is what the cache keys."""
    with pytest.raises(ResnestDeployError, match=r"FP16 is a GPU format .* use target=tensorrt"):
        ConversionConfig("fp16", "cpu")
    with pytest.raises(
        ResnestDeployError, match="calibration method 'distribution' is not available for tensorrt"
    ):
        ConversionConfig("int8", "tensorrt", "distribution")
    with pytest.raises(ResnestDeployError, match=r"max_drop is in points of top-1, 0\.\.100; got 101"):
        ConversionConfig("int8", max_drop=101)
    with pytest.raises(ResnestDeployError, match="unknown precision 'bf16'; choose one of fp16, int8"):
        ConversionConfig("bf16")
    made = ConversionConfig("int8", "cpu", "auto", keep_fp32_nodes=["^/fc/"])
    assert made.keep_fp32_nodes == ("^/fc/",) and made.methods == calibration_methods("cpu")
    assert made.key() == ["int8", "cpu", "auto", ["^/fc/"], ["Softmax"], "any", "off"]
    assert ConversionConfig("int8", equalize="auto").key()[-1] == "auto"
    with pytest.raises(ResnestDeployError, match="equalize balances INT8 ranges"):
        ConversionConfig("fp16", equalize="on")
    with pytest.raises(ResnestDeployError, match="unknown equalize 'yes'; choose one of off, on, auto"):
        ConversionConfig("int8", equalize="yes")
    assert ConversionConfig("int8").keep() == list(KEEP_FP32_NODES)  # the default: gate and classifier


def calibration_methods(target: str) -> tuple[str, ...]:
    from resnest_deploy.precision import int8

    return int8.METHODS if target == "cpu" else int8.TENSORRT_METHODS


def test_the_cli_names_flags_where_the_library_names_parameters(tmp_path):
    import pickle

    from resnest_deploy.cli._errors import flag_for
    from resnest_deploy.errors import ResnestDeployError

    with pytest.raises(ResnestDeployError) as e:
        ConversionConfig("int8", "tensorrt", cpu_isa="vnni")
    assert str(e.value) == "cpu_isa is for target=cpu INT8 files (their weights); drop it here"
    assert e.value.naming(flag_for) == (
        "--cpu-isa is for --target cpu INT8 files (their weights); drop it here"
    )
    # a parameter's name inside a path is the path's: only the placeholders are named
    folder = tmp_path / "calib_dir"
    folder.mkdir()
    with pytest.raises(ResnestDeployError) as e:
        calibration.from_images(folder, DIGITS)
    assert e.value.naming(flag_for) == (
        f"no images (jpg/png/webp) under {folder}; point --calib-dir at a folder of images"
    )
    # the names travel with the error (a worker process, a JSON line): they are strings
    back = pickle.loads(pickle.dumps(e.value))
    assert type(back) is type(e.value) and back.naming(flag_for) == e.value.naming(flag_for)
    assert flag_for("method", "max") == "--calibration max" and flag_for("keep_fp32_nodes") == "--keep-fp32"


def test_empty_and_undecodable_calibration_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no images"):
        calibration.from_images(tmp_path / "empty", DIGITS)
    (tmp_path / "bad").mkdir()
    for i in range(3):
        (tmp_path / "bad" / f"{i}.jpg").write_bytes(b"\x00" * 10)
    with pytest.raises(ArtifactError, match="could be decoded"):
        calibration.from_images(tmp_path / "bad", DIGITS, use_cache=False)


def test_non_resnest_onnx_is_refused(tmp_path):
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["input"], ["y"])], "g", [x], [y])
    src = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), src)
    with pytest.raises(ArtifactError, match="not a resnest-deploy export"):
        convert(src, None, ConversionConfig("fp16"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.onnx"]


def test_npy_calibration_and_shape_check(onnx_14d, tmp_path):
    good = tmp_path / "calib.npy"
    np.save(good, np.random.default_rng(0).standard_normal((12, 3, 64, 64), dtype=np.float32))
    data = calibration.from_npy(good, (64, 64))
    assert len(data.calib) + len(data.holdout) == 12
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 32, 32), np.float32))
    with pytest.raises(ArtifactError, match="the model wants N x 3 x 64 x 64"):
        calibration.from_npy(tmp_path / "bad.npy", (64, 64))


def test_second_calibration_with_same_data_reuses_the_result(digits_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEST_DEPLOY_CACHE", str(tmp_path / "cache"))
    calib = calibration.from_digits(DIGITS, count=64)
    config = ConversionConfig("int8", "cpu")
    first = convert(digits_onnx, tmp_path / "a.onnx", config, calib)
    again = convert(digits_onnx, tmp_path / "b.onnx", config, calib)
    assert "cache" not in first.metadata["conversion"] and "cache" in again.metadata["conversion"]
    assert again.parity == first.parity  # same graph, and the parity check still ran
    other = calibration.from_digits(DIGITS, count=64, seed=1)
    third = convert(digits_onnx, tmp_path / "c.onnx", config, other)
    assert "cache" not in third.metadata["conversion"]


def test_tensorrt_target_parity_is_tensorrts_arithmetic_and_cpu_target_parity_the_cpus_kernels(
    digits_onnx, digits_converted
):
    """Measured with Q/DQ as float ops, a TensorRT-target file's parity is the same on every CPU
    (fused int8 kernels on AVX2 without VNNI can saturate); a CPU-target file is measured with the
    kernels that will run it. Each file records which."""
    from resnest_deploy import metadata
    from resnest_deploy.compare import compare
    from resnest_deploy.data import Transform, digits, digits_batch
    from resnest_deploy.models import get_spec
    from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

    x = digits_batch(
        digits("test")[0][:64], Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)
    )
    with OnnxRuntimeRunner(digits_onnx) as ref:
        expected = ref.infer(x)
    for key, fake in (("int8", True), ("int8-cpu", False)):
        recorded = metadata.of_artifact(digits_converted[key])["parity"]
        assert ("disable_quant_qdq" in recorded["arithmetic"]) is fake, recorded
        with OnnxRuntimeRunner(digits_converted[key], RunnerOptions(fake_quant=fake)) as runner:
            assert compare(expected, runner.infer(x)).cosine > 0.999


def test_tensorrt_int8_weights_stored_as_int8_compute_what_fp32_weights_behind_qdq_do(digits_onnx, tmp_path):
    """ModelOpt's default keeps FP32 weights behind Q/DQ (a file as large as FP32); stored as INT8
    they are the same values: the same logits as TensorRT computes them, in far fewer bytes."""
    from resnest_deploy.precision import int8
    from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

    calib = calibration.from_digits(DIGITS, count=32)
    logits, size = {}, {}
    for stored in (False, True):
        dst = tmp_path / f"{stored}.onnx"
        scheme = int8.quantize_tensorrt(digits_onnx, dst, calib.calib, "max", KEEP_FP32_NODES, stored)
        assert ("stored as int8" in scheme["weights"]) is stored
        model = onnx.load(dst)
        inits = {t.name for t in model.graph.initializer}
        weights_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]
        assert bool(weights_q) is not stored  # no QuantizeLinear reads a weight once they are int8
        with OnnxRuntimeRunner(dst, RunnerOptions(fake_quant=True)) as runner:
            logits[stored] = runner.infer(calib.holdout[:64])
        size[stored] = dst.stat().st_size
    np.testing.assert_allclose(logits[True], logits[False], rtol=0, atol=1e-5)
    fp32 = digits_onnx.stat().st_size
    assert size[False] > 0.95 * fp32 and size[True] < 0.4 * fp32  # the digits model: gate and head FP32
