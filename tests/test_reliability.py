"""Hostile and careless input: every case refused in one line, nothing destroyed, nothing trusted."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from resnest_deploy import _io, metadata, onnx_files
from resnest_deploy.bench import bench
from resnest_deploy.cache import CACHE_ENV
from resnest_deploy.check import check
from resnest_deploy.cli.app import app
from resnest_deploy.data import Transform, digits, load_images
from resnest_deploy.errors import ArtifactError, WeightsError
from resnest_deploy.formats import InputForm
from resnest_deploy.models import create_model, get_spec
from resnest_deploy.models.weights import url_cache_path
from resnest_deploy.precision import ConversionConfig, calibration, convert
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

cli = CliRunner()
DIGITS = Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)


def refused(args: list[str], code: int | None = None) -> str:
    """Run the CLI; it must fail with exactly one ``error:`` line and no traceback."""
    result = cli.invoke(app, args)
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def no_partials(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".partial")]


@pytest.fixture
def export_dir(digits_onnx: Path, tmp_path: Path) -> Path:
    """A copy of the digits export and its sidecar in a folder of the test's own."""
    shutil.copy(digits_onnx, tmp_path / "m.onnx")
    shutil.copy(f"{digits_onnx}.json", tmp_path / "m.onnx.json")
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --- data loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["build", "--onnx", "{d}/m.onnx", "-o", "{d}/m.onnx"],
        ["build", "--onnx", "{d}/m.onnx", "-o", "{d}/sub/../m.onnx"],
        ["build", "--onnx", "{d}/m.onnx", "-o", "{d}/link.onnx"],  # a symlink to the input
        ["quantize", "--onnx", "{d}/m.onnx", "-p", "fp16", "-o", "{d}/m.onnx.json"],
        ["quantize", "--onnx", "{d}/m.onnx", "-p", "fp16", "-o", "{d}/m.onnx"],
        ["bench", "{d}/m.onnx", "--csv", "{d}/m.onnx", "-n", "1"],
        ["build", "--onnx", "{d}/m.onnx", "-p", "int8", "-o", "{d}/m.onnx"],
    ],
)
def test_an_output_that_is_an_input_is_refused_and_nothing_changes(export_dir, args):
    (export_dir / "sub").mkdir()
    (export_dir / "link.onnx").symlink_to(export_dir / "m.onnx")
    before = snapshot(export_dir)
    line = refused([a.format(d=export_dir) for a in args])
    assert "would overwrite the input" in line
    assert snapshot(export_dir) == before and no_partials(export_dir)


def test_export_never_overwrites_its_checkpoint(tmp_path, refdata_checkpoint):
    ckpt = tmp_path / "w.pth"
    shutil.copy(refdata_checkpoint("resnest14d"), ckpt)
    before = ckpt.read_bytes()
    (tmp_path / "sub").mkdir()
    for out in ("w.pth", "sub/../w.pth"):
        line = refused(["export", "--arch", "resnest14d", "--weights", str(ckpt), "-o", str(tmp_path / out)])
        assert "would overwrite the input" in line
    assert ckpt.read_bytes() == before and not (tmp_path / "w.pth.json").exists()


def test_a_sidecar_path_that_is_a_folder_keeps_the_old_artifact(export_dir):
    (export_dir / "old.onnx").write_bytes(b"the good old file")
    (export_dir / "old.onnx.json").mkdir()
    line = refused(["export", "--arch", "resnest14d_digits", "-o", str(export_dir / "old.onnx")])
    assert "is a folder" in line
    assert (export_dir / "old.onnx").read_bytes() == b"the good old file" and no_partials(export_dir)


def test_a_failed_commit_restores_the_previous_pair(tmp_path):
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"old")
    _io.sidecar_path(dest).write_text('{"old": true}')
    with pytest.raises(ArtifactError, match="the previous files were kept"), _io.artifact_pair(dest) as pair:
        pair.write_sidecar({"new": True})
        pair.tmp.unlink()  # the artifact's bytes vanish before the commit (a full disk, another process)
    assert dest.read_bytes() == b"old" and json.loads(_io.sidecar_path(dest).read_text()) == {"old": True}
    assert no_partials(tmp_path)


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_run(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is now free: a writer that died
    dead = tmp_path / f".m.onnx.{child.pid}.0123abcd.partial"
    live = tmp_path / f".m.onnx.{os.getpid()}.89abcdef.partial"  # a writer still running
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    _io.write_json(tmp_path / "report.json", {"ok": True})
    assert not dead.exists() and live.exists()


def test_an_artifact_whose_sidecar_describes_another_file_is_refused(tmp_path, digits_converted):
    from resnest_deploy.engine import build_engine

    engine = build_engine(digits_converted["fp16"], tmp_path / "e.plan", batch=(1, 1, 2))
    assert metadata.read_sidecar(engine.path)["file"]["sha256"] == _io.sha256_file(engine.path)
    plan = bytearray(engine.path.read_bytes())
    plan[-1] ^= 0xFF  # a different engine under the old sidecar (replaced, or a write cut short)
    engine.path.write_bytes(bytes(plan))
    assert "describes another file" in refused(["inspect", str(engine.path)])


# --- trust -----------------------------------------------------------------------------------------


def test_url_downloads_are_cached_by_the_whole_url(loopback, torch_home, refdata_checkpoint):
    base, handler = loopback
    a, b = refdata_checkpoint("resnest14d").read_bytes(), _other_checkpoint(refdata_checkpoint)
    handler.files["/a/model.pth"], handler.files["/b/model.pth"] = a, b
    first = create_model("resnest14d", f"{base}/a/model.pth")
    second = create_model("resnest14d", f"{base}/b/model.pth")
    assert not np.array_equal(first.fc.bias.detach().numpy(), second.fc.bias.detach().numpy())
    with pytest.raises(WeightsError, match="not http"):
        create_model("resnest14d", "file:///etc/passwd")
    handler.files["/c/.."] = a
    create_model("resnest14d", f"{base}/c/..")  # cached inside the cache, under a safe name
    cached = url_cache_path(f"{base}/c/..")
    assert cached.is_file() and cached.name == "checkpoint.pth" and torch_home in cached.resolve().parents


def _other_checkpoint(refdata_checkpoint) -> bytes:
    import io

    import torch

    sd = torch.load(refdata_checkpoint("resnest14d"), weights_only=True)
    sd["fc.bias"] = sd["fc.bias"] + 1.0
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def test_check_never_fetches_a_url_named_by_the_artifact(loopback, torch_home, tmp_path, refdata_checkpoint):
    base, handler = loopback
    handler.files["/w.pth"] = refdata_checkpoint("resnest14d").read_bytes()
    out = tmp_path / "m.onnx"
    result = cli.invoke(
        app,
        [
            "export",
            "--arch",
            "resnest14d",
            "--weights",
            f"{base}/w.pth",
            "--input-size",
            "64",
            "64",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert check([out], count=2).passed  # the cached, checksummed file is used
    shutil.rmtree(torch_home)
    handler.requests.clear()
    with pytest.raises(WeightsError, match="never fetched; pass weights"):
        check([out], count=2)
    assert handler.requests == []  # no request reached the server
    cached = url_cache_path(f"{base}/w.pth")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_other_checkpoint(refdata_checkpoint))  # other bytes under the recorded URL
    with pytest.raises(WeightsError, match="is not the checkpoint the artifact was made from"):
        check([out], count=2)


def test_offline_mode_sends_nothing_to_the_hugging_face_hub(loopback, tmp_path):
    base, handler = loopback
    env = {**os.environ, "RESNEST_DEPLOY_OFFLINE": "1", "HF_ENDPOINT": base, "HF_HOME": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    code = "from resnest_deploy.models import create_model; create_model('resnest14d', 'pretrained')"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "WeightsError" in run.stderr
    assert handler.requests == []


@pytest.mark.parametrize("how", ["symlink", "dotdot", "absolute"])
def test_external_data_outside_the_model_folder_is_never_read(digits_onnx, tmp_path, how):
    model = onnx.load(digits_onnx)
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.data", size_threshold=0)
    secret = tmp_path / "secret.data"
    shutil.move(tmp_path / "model" / "m.data", secret)
    if how == "symlink":
        (tmp_path / "model" / "m.data").symlink_to(secret)
    else:
        proto = onnx.load(path, load_external_data=False)
        where = "../secret.data" if how == "dotdot" else str(secret)
        for t in onnx.external_data_helper._get_all_tensors(proto):
            for e in t.external_data:
                if e.key == "location":
                    e.value = where
        onnx.save(proto, path)
    for args in (["build", "--onnx", str(path)], ["quantize", "--onnx", str(path), "-p", "fp16"]):
        assert "refusing to read it" in refused(args) or "symlink" in refused(args)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["m.data", "m.onnx"][how != "symlink" :]


def test_calibration_caches_are_verified_and_a_bad_entry_is_a_miss(digits_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    calib = calibration.from_digits(DIGITS, count=48)
    convert(digits_onnx, tmp_path / "a.onnx", ConversionConfig("int8", "cpu"), calib)
    (cached,) = (tmp_path / "cache" / "calib").glob("*.onnx")
    manifest = cached.with_name(cached.name + ".manifest.json")
    for poison in ("swap", "forge", "corrupt"):
        shutil.copyfile(digits_onnx, cached)  # an FP32 model where the calibrated one was
        if poison == "forge":  # ... with a manifest that vouches for it
            m = json.loads(manifest.read_text())
            manifest.write_text(json.dumps(m | {"sha256": _io.sha256_file(cached)}))
        if poison == "corrupt":
            manifest.write_text("[not json")
        out = tmp_path / f"{poison}.onnx"
        report = convert(digits_onnx, out, ConversionConfig("int8", "cpu"), calib)
        assert "cache" not in report.metadata["conversion"], poison
        assert metadata.graph_precision(onnx.load(out)) == "int8"
    # images: a damaged preprocessed entry is recomputed, not loaded
    images = tmp_path / "imgs"
    images.mkdir()
    for i, im in enumerate(digits("train")[0][:12]):
        Image.fromarray(im).save(images / f"{i}.png")
    first = calibration.from_images(images, DIGITS, count=8)
    for npz in (tmp_path / "cache" / "calib").glob("*.npz"):
        npz.write_bytes(npz.read_bytes()[:50])
    again = calibration.from_images(images, DIGITS, count=8)
    assert "cache" not in again.source and np.array_equal(first.calib, again.calib)


def test_conversion_never_modifies_its_source(digits_onnx, digits_converted):
    """ModelOpt's INT8 quantizer rewrites the model it is handed; ours gets a private copy."""
    assert set(digits_converted) == {"fp16", "int8", "int8-cpu"}
    recorded = metadata.read_sidecar(digits_onnx)  # raises if the bytes changed since export
    assert recorded is not None and recorded["file"]["sha256"] == _io.sha256_file(digits_onnx)


def test_the_conversion_cache_key_covers_every_setting(digits_onnx):
    from resnest_deploy.precision.job import Job as _Job

    calib = calibration.from_digits(DIGITS, count=8)
    base = dict(src=digits_onnx, src_sha256="0", calib=calib, form=InputForm(), hw=(32, 32))

    def _job(**settings: object) -> _Job:
        return _Job(
            **base, config=ConversionConfig(**{"precision": "fp16", "keep_fp32_nodes": (), **settings})
        )

    keys = {
        _job(keep_fp32_ops=("Softmax",)).cache_key(),
        _job(keep_fp32_ops=()).cache_key(),
        _job(keep_fp32_nodes=("/fc/",), keep_fp32_ops=()).cache_key(),
        _job(precision="int8", keep_fp32_ops=()).cache_key(),
        _job(precision="int8", method="entropy", keep_fp32_ops=()).cache_key(),  # FP16 refuses a method
    }
    assert len(keys) == 5
    import resnest_deploy.precision.job as job

    old = _job(keep_fp32_ops=()).cache_key()
    job.CONVERSION_VERSION += 1  # code that converts differently never reuses older entries
    try:
        assert _job(keep_fp32_ops=()).cache_key() != old
    finally:
        job.CONVERSION_VERSION -= 1


def test_nan_outputs_always_fail_and_labels_must_match_the_graph(digits_onnx, digits_converted, tmp_path):
    model = onnx.load(digits_converted["int8-cpu"])
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    bias = next(t for t in model.graph.initializer if t.name == gemm.input[2])
    values = onnx.numpy_helper.to_array(bias).copy()
    values[3] = np.nan
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(model, tmp_path / "nan.onnx")
    result = check([tmp_path / "nan.onnx"]).results[0]
    assert not result.passed and "NaN/Inf" in result.problems[0] and result.metrics.cosine < 0
    # an FP32 file relabelled int8 (a damaged conv hidden behind the int8 bars) is refused
    model = onnx.load(digits_onnx)
    meta = metadata.from_onnx(model) | {"precision": "int8"}
    metadata.embed(model, meta)
    onnx.save(model, tmp_path / "relabelled.onnx")
    assert "labelled int8 but its graph is fp32" in refused(["check", str(tmp_path / "relabelled.onnx")])


# --- honest numbers --------------------------------------------------------------------------------


def test_every_timed_batch_holds_its_images(digits_onnx, monkeypatch):
    seen: list[int] = []
    real = OnnxRuntimeRunner.infer_impl

    def spy(self, x):
        seen.append(len(np.unique(x.reshape(len(x), -1), axis=0)))
        return real(self, x)

    monkeypatch.setattr(OnnxRuntimeRunner, "infer_impl", spy)
    (result,) = bench([digits_onnx], batches=(2000,), warmup=1, iterations=2)
    # the first call (a cold start), one warm-up, two timed: each with 2000 distinct inputs, not 899
    assert seen == [2000] * 4 and result.batch == 2000
    assert "is more than the maximum" in refused(["bench", str(digits_onnx), "-b", "1000000000"], 2)
    assert "GiB" in refused(["check", str(digits_onnx), "--count", "100000000"])


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="a GPU is present: the provider would load")
def test_a_gpu_provider_that_does_not_load_is_refused_and_stdout_stays_clean(digits_onnx):
    from resnest_deploy._cuda import driver_problem

    for provider in ("cuda", "tensorrt"):
        result = cli.invoke(app, ["bench", str(digits_onnx), "--provider", provider, "--json", "-n", "1"])
        assert result.exit_code == 1 and result.stdout == ""
        if driver_problem():  # no GPU: said first, before ONNX Runtime is even asked
            assert f"--provider {provider} needs an NVIDIA GPU" in result.stderr
        else:
            assert "could not start" in result.stderr and "would run on CPUExecutionProvider" in result.stderr


# --- clean refusals --------------------------------------------------------------------------------


def bomb(path: Path) -> Path:
    """A PNG whose header claims 30000 x 30000 pixels (a decompression bomb)."""
    Image.new("L", (1, 1)).save(path)
    b = bytearray(path.read_bytes())
    b[16:24] = struct.pack(">II", 30000, 30000)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    path.write_bytes(bytes(b))
    return path


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bench", "{m}", "--provider", "bogus"], "is not one of"),
        (["check", "torch:cuda", "--arch", "resnest14d_digits"], "needs a CUDA GPU"),
        (["bench", "{m}", "-b", "0"], "--batch-sizes"),
        (["bench", "{m}", "-n", "0"], "--iterations"),
        (["check", "{m}", "--count", "0"], "--count"),
        (["check", "{m}", "--count", "-3"], "--count"),
        (["check", "{m}", "--chunk-size", "0"], "--chunk-size"),
        (["eval", "--images", "{d}", "{m}", "--chunk-size", "-1"], "--chunk-size"),
        (["export", "--arch", "resnest14d_digits", "--batch-dim", "1000000000", "-o", "{d}/x.onnx"], "batch"),
        (["export", "--arch", "resnest14d_digits", "--batch-dim", "0", "-o", "{d}/x.onnx"], "batch"),
        (
            ["export", "--arch", "resnest14d_digits", "--input-size", "99999", "99999", "-o", "{d}/x.onnx"],
            "4096",
        ),
        (["build", "--onnx", "{m}", "--workspace", "-1", "-o", "{d}/x.plan"], "workspace"),
        (["build", "--onnx", "{m}", "--workspace", "1e12", "-o", "{d}/x.plan"], "workspace"),
        (["build", "--onnx", "{m}", "--workspace", "nan", "-o", "{d}/x.plan"], "workspace"),
        (["build", "--onnx", "{m}", "--batch-profile", "1,8,100000", "-o", "{d}/x.plan"], "profile"),
        (["quantize", "--onnx", "{m}", "--calib-npy", "{d}/c.npz", "-o", "{d}/x.onnx"], ".npz archive"),
        (["quantize", "--onnx", "{m}", "--calib-count", "0", "-o", "{d}/x.onnx"], "--calib-count"),
        (["quantize", "--onnx", "{m}", "--method", "best", "-o", "{d}/x.onnx"], "--method"),
        (["quantize", "--onnx", "{m}", "--keep-fp32", ".*", "-o", "{d}/x.onnx"], "--keep-fp32"),
        (["predict", "{m}", "{d}/bomb.png"], "DecompressionBomb"),
        (
            ["export", "--arch", "resnest14d", "--weights", "http://127.0.0.1:9/..", "-o", "{d}/x.onnx"],
            "download",
        ),
        (["pipeline", "--arch", "resnest14d_digits", "-b", "0", "-o", "{d}/p"], "--batch-sizes"),
        (["predict", "{m}", "{d}/bomb.png", "--topk", "0"], "--topk"),
        (["resnest-deploy-no-such-command"], "No such command"),
    ],
)
def test_bad_values_are_one_line_refusals(export_dir, torch_home, args, says):
    np.savez(export_dir / "c.npz", x=np.zeros((4, 3, 32, 32), np.float32))
    bomb(export_dir / "bomb.png")
    before = snapshot(export_dir)
    line = refused([a.format(m=export_dir / "m.onnx", d=export_dir) for a in args])
    assert says in line
    assert snapshot(export_dir) == before and no_partials(export_dir)


def test_malformed_metadata_and_sidecars_are_refused(export_dir, digits_converted, tmp_path):
    model = onnx.load(export_dir / "m.onnx")
    for bad in (
        '"a string"',
        "[1, 2]",
        '{"precision": "int4"}',
        '{"input": {"shape": "NCHW"}}',
        "{not json",
        '{"input": {"format": {"name": "deepstream", "mean": [0.5, 0.5], "std": [1, 1, 1]}}}',
        '{"preprocessing": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0, 0.5]}}',
    ):
        entry = next(p for p in model.metadata_props if p.key == metadata.METADATA_KEY)
        entry.value = bad
        onnx.save(model, export_dir / "bad.onnx")
        refused(["check", str(export_dir / "bad.onnx")])
    from resnest_deploy.engine import build_engine

    engine = build_engine(digits_converted["fp16"], tmp_path / "e.plan", batch=(1, 1, 2)).path
    for bad in ("[]", '"x"', '{"tensorrt": "10.0"}'):
        _io.sidecar_path(engine).write_text(bad)
        refused(["inspect", str(engine)])


def test_decompression_bombs_are_skipped_everywhere(export_dir, tmp_path):
    folder = tmp_path / "imgs" / "3"
    folder.mkdir(parents=True)
    bomb(folder / "bomb.png")
    Image.fromarray(digits("test")[0][3]).save(folder / "ok.png")
    loaded = load_images(sorted(folder.iterdir()), DIGITS)
    assert len(loaded.array) == 1 and "DecompressionBomb" in loaded.skipped[0][1]
    result = cli.invoke(
        app, ["eval", "--images", str(tmp_path / "imgs"), str(export_dir / "m.onnx"), "--json"]
    )
    assert result.exit_code == 0 and len(json.loads(result.stdout)["images"]["skipped"]) == 1
    (folder / "ok.png").unlink()
    out = tmp_path / "p"
    refused(
        ["pipeline", "--arch", "resnest14d_digits", "--images", str(folder), "-o", str(out), "--no-build"]
    )
    assert json.loads((out / "report.json").read_text())["status"] == "failed at check"


# --- wrong results without an error ----------------------------------------------------------------


def test_16_bit_and_float_images_preprocess_like_their_8_bit_original(tmp_path):
    grey = np.asarray(Image.fromarray(digits("test")[0][5]).resize((40, 36)))
    Image.fromarray(grey).save(tmp_path / "8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "f.tif")
    Image.fromarray(grey.astype(np.float32) * 4).save(tmp_path / "wild.tif")  # 0..1020: no known scale
    loaded = load_images([tmp_path / n for n in ("8.png", "16.png", "f.tif", "wild.tif")], DIGITS)
    reference, sixteen, floating = loaded.array
    assert Image.open(tmp_path / "16.png").mode.startswith("I") and Image.open(tmp_path / "f.tif").mode == "F"
    np.testing.assert_array_equal(sixteen, reference)
    np.testing.assert_array_equal(floating, reference)
    assert reference.std() > 0.3  # a real digit, not a flat white or black frame
    assert [p.name for p, _ in loaded.skipped] == ["wild.tif"] and "convert it to 8-bit" in loaded.skipped[0][
        1
    ]


@pytest.mark.parametrize(
    ("array", "says"),
    [
        (np.zeros((8, 3, 32, 32), np.uint8), "uint8 data"),
        (np.zeros((8, 3, 32, 32), np.complex64), "complex64 data"),
        (np.where(np.arange(8)[:, None, None, None] == 2, np.nan, np.zeros((8, 3, 32, 32))), "1 sample(s)"),
        (np.zeros((1, 3, 32, 32), np.float32), "at least 2"),
    ],
)
def test_calibration_arrays_that_would_mislead_are_refused(tmp_path, array, says):
    np.save(tmp_path / "c.npy", array)
    with pytest.raises(ArtifactError, match=re_escape(says)):
        calibration.from_npy(tmp_path / "c.npy", (32, 32))


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_inspect_refuses_empty_onnx_and_bytes_that_are_no_engine(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "noise.plan").write_bytes(np.random.default_rng(0).bytes(4096))
    assert "holds no ONNX graph" in refused(["inspect", str(tmp_path / "empty.onnx")])
    assert "not a serialized TensorRT engine" in refused(["inspect", str(tmp_path / "noise.plan")])


def test_a_checkpoint_with_nan_is_named_as_the_problem(tmp_path, refdata_checkpoint):
    import torch

    sd = torch.load(refdata_checkpoint("resnest14d"), weights_only=True)
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match=r"nan\.pth holds NaN or Inf in layer1\.0\.conv1\.weight"):
        create_model("resnest14d", tmp_path / "nan.pth")


def test_a_sparse_initializers_external_data_is_checked_like_every_other(digits_onnx, tmp_path):
    """The check walked dense tensors only: a sparse initializer's values came from any file."""
    model = onnx.load(digits_onnx)
    (bias,) = [t for t in model.graph.initializer if t.name == "fc.bias"]
    model.graph.initializer.remove(bias)
    values = onnx.TensorProto(name="fc.bias", data_type=onnx.TensorProto.FLOAT, dims=[10])
    values.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.data"), ("offset", "0"), ("length", "40")):
        values.external_data.add(key=key, value=value)
    indices = onnx.numpy_helper.from_array(np.arange(10, dtype=np.int64), "fc.bias.indices")
    model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, [10]))
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "m.onnx"
    onnx.save(model, path)
    (tmp_path / "secret.data").write_bytes(np.full(10, 1e6, np.float32).tobytes())
    with pytest.raises(ArtifactError, match=r"'fc\.bias', which is not a plain file name beside it"):
        onnx_files.load_onnx(path)
    assert "refusing to read it" in refused(["inspect", str(path)])
