"""Frames in: every input form of an export matches PyTorch fed by the host transform, and the
DeepStream config reproduces it with nvinfer's own formula."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from resnest_deploy import formats
from resnest_deploy.check import check
from resnest_deploy.compare import compare
from resnest_deploy.data import Transform, digits
from resnest_deploy.deepstream import nvinfer_config, write
from resnest_deploy.engine import build_engine
from resnest_deploy.errors import ArtifactError
from resnest_deploy.models import get_spec
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

SIZE = 64  # resnest14d at 64x64 with ImageNet's per-channel mean and std: the case nvinfer cannot scale


@pytest.fixture(scope="module")
def model():
    from resnest_deploy.models import load_model

    return load_model("resnest14d", "random")


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> dict[str, object]:
    from resnest_deploy.export import export_onnx

    folder = tmp_path_factory.mktemp("formats")
    net, info = model
    return {
        fmt: export_onnx(net, folder / f"{fmt}.onnx", input_size=(SIZE, SIZE), input_format=fmt, weights=info)
        for fmt in formats.INPUT_FORMATS
    }


def frames_and_reference(model) -> tuple[np.ndarray, np.ndarray]:
    """Real pictures (digits, upscaled to odd sizes) through the host transform into PyTorch."""
    from resnest_deploy.runners.torch import TorchRunner

    t = Transform.from_pretrained(get_spec("resnest14d").pretrained, SIZE)
    images = [
        Image.fromarray(im).convert("RGB").resize((80 + i, 71)) for i, im in enumerate(digits("test")[0][:6])
    ]
    frames = np.stack([t.frame(im) for im in images])  # N x H x W x 3 uint8
    with TorchRunner(model[0]) as ref:
        expected = ref.infer(np.stack([t(im) for im in images]))
    return frames, expected


def as_input(frames: np.ndarray, fmt: str) -> np.ndarray:
    """What a client of each form sends for these frames."""
    x = frames.astype(np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return {
        "float": lambda: ((x - mean) / std).transpose(0, 3, 1, 2),
        "uint8-nhwc": lambda: frames,
        "uint8-nchw": lambda: frames.transpose(0, 3, 1, 2),
        "deepstream": lambda: (x - mean).transpose(0, 3, 1, 2),
    }[fmt]()


@pytest.mark.parametrize("fmt", formats.INPUT_FORMATS)
def test_every_input_form_matches_pytorch_fed_by_the_host_transform(model, exported, fmt):
    frames, expected = frames_and_reference(model)
    report = exported[fmt]
    assert report.input_shape == (
        ["batch", SIZE, SIZE, 3] if fmt == "uint8-nhwc" else ["batch", 3, SIZE, SIZE]
    )
    meta = report.metadata["input"]
    assert meta["dtype"] == formats.dtype(fmt) and meta["format"]["name"] == fmt
    with OnnxRuntimeRunner(report.path) as runner:
        got = runner.infer(np.ascontiguousarray(as_input(frames, fmt)))
    m = compare(expected, got)
    assert m.rel_max_abs < 1e-4 and m.top1 == 1.0, m
    # the toolkit's own commands feed the file its form: check against recorded and live PyTorch
    assert check([report.path], reference_from="recorded").passed
    assert check([report.path], count=4).passed


@pytest.mark.parametrize("fmt", formats.INPUT_FORMATS)
def test_every_input_form_builds_a_tensorrt_rtx_engine(exported, fmt, tmp_path):
    engine = build_engine(exported[fmt].path, tmp_path / "e.plan", batch=(1, 2, 4))
    per_image = [SIZE, SIZE, 3] if fmt == "uint8-nhwc" else [3, SIZE, SIZE]
    assert engine.profile["max"] == [4, *per_image]


def test_folding_the_mean_into_the_bias_would_be_wrong_at_the_border(model):
    """Why the deepstream form keeps the mean explicit: with the mean folded into the stem conv's
    bias, zero padding stands for a black pixel instead of 0 after normalisation, so the first row
    and column of the stem's output change; folding only 1/std into the weights is exact."""
    import torch
    import torch.nn.functional as F

    conv = next(m for m in model[0].modules() if isinstance(m, torch.nn.Conv2d))
    w, stride, pad = conv.weight.detach(), conv.stride, conv.padding
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    x = torch.rand(2, 3, 16, 16)  # pixels in [0, 1]
    exact = F.conv2d((x - mean) / std, w, None, stride, pad)
    scale_folded = F.conv2d(x - mean, w / std, None, stride, pad)  # what --input-format deepstream does
    mean_folded = F.conv2d(x, w / std, -(w / std * mean).sum(dim=(1, 2, 3)), stride, pad)
    assert (exact - scale_folded).abs().max() < 1e-5
    error = (exact - mean_folded).abs()
    assert error[..., 1:, 1:].max() < 1e-5  # the interior agrees ...
    assert (
        error[..., 0, :].max() > 0.1 * exact.std() and error[..., :, 0].max() > 0.1 * exact.std()
    )  # ... not the border


def test_deepstream_config_reproduces_the_host_transform_with_nvinfers_formula(model, exported, tmp_path):
    frames, expected = frames_and_reference(model)
    config_path, labels, config = write(exported["deepstream"].path, tmp_path / "ds.txt")
    props = dict(
        line.split("=", 1)
        for line in config_path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    scale, offsets = float(props["net-scale-factor"]), [float(v) for v in props["offsets"].split(";")]
    assert props["infer-dims"] == f"3;{SIZE};{SIZE}" and props["network-type"] == "1"
    assert props["model-color-format"] == "0" and props["network-mode"] == "0"
    assert len(labels.read_text().strip().split(";")) == 1000
    # nvinfer: y = net-scale-factor * (x - offsets[c]) on RGB pixels, fed as float NCHW
    y = scale * (
        frames.astype(np.float32).transpose(0, 3, 1, 2) - np.array(offsets, np.float32).reshape(1, 3, 1, 1)
    )
    with OnnxRuntimeRunner(config.properties["onnx-file"]) as runner:
        got = runner.infer(np.ascontiguousarray(y, np.float32))
    m = compare(expected, got)
    assert m.rel_max_abs < 1e-4 and m.top1 == 1.0, m


def test_the_digits_float_export_is_expressible_with_one_scale(digits_onnx, tmp_path):
    scale, offsets = formats.InputForm.of(
        {"input": {"format": {"name": "float"}}, "preprocessing": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    ).nvinfer()
    assert scale == pytest.approx(1 / 127.5) and offsets == [127.5] * 3
    config = nvinfer_config(digits_onnx)
    assert config.properties["infer-dims"] == "3;32;32" and config.labels == [str(i) for i in range(10)]


def test_what_nvinfer_cannot_express_is_refused_with_the_fix(exported, tmp_path, digits_converted):
    for fmt in ("float", "uint8-nhwc", "uint8-nchw"):
        with pytest.raises(ArtifactError, match="re-export with --input-format deepstream"):
            nvinfer_config(exported[fmt].path)
    rtx = build_engine(digits_converted["fp16"], tmp_path / "d.plan", batch=(1, 2, 4)).path
    with pytest.raises(ArtifactError, match="DeepStream runs full TensorRT engines"):
        nvinfer_config(rtx)
    with pytest.raises(ArtifactError, match="would overwrite the input"):
        write(exported["deepstream"].path, exported["deepstream"].path)


@pytest.mark.parametrize(
    ("fmt", "precision", "target"),
    [
        ("uint8-nhwc", "int8", "cpu"),
        ("uint8-nchw", "fp16", "tensorrt"),
        ("deepstream", "int8", "tensorrt"),
    ],
)
def test_conversions_calibrate_and_measure_in_the_files_own_input_form(fmt, precision, target, tmp_path):
    """Calibration data is normalised NCHW; a file that takes frames (or x/255 - mean) must be
    calibrated and measured on the same images in its own form, or INT8 ranges are wrong."""
    from resnest_deploy.export import export_onnx
    from resnest_deploy.models import load_model
    from resnest_deploy.precision import ConversionConfig, RunOptions, calibration, convert

    net, info = load_model("resnest14d_digits", "pretrained")
    src = export_onnx(net, tmp_path / f"d.{fmt}.onnx", input_format=fmt, weights=info).path
    calib = calibration.from_digits(
        Transform.from_pretrained(get_spec("resnest14d_digits").pretrained), count=128
    )
    report = convert(src, None, ConversionConfig(precision, target), calib, RunOptions(use_cache=False))
    assert report.parity.top1 >= 0.99 and report.parity.cosine > 0.999, report.parity
    with OnnxRuntimeRunner(report.path) as runner:  # it takes its form: frames or x/255 - mean
        assert runner.input_dtype == (np.uint8 if fmt.startswith("uint8") else np.float32)
    checked = check([report.path], reference_from="recorded")
    assert checked.passed and checked.results[0].precision == precision
