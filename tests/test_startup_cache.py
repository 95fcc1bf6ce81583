"""Runtime caches: a stale, foreign or corrupt entry is a miss and is never used; a good one is;
the first inference from a fresh process is measured cold and warm."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from resnest_deploy import cache
from resnest_deploy.cache import CACHE_ENV, MANIFEST, CacheFolder, CacheKey
from resnest_deploy.cli.app import app
from resnest_deploy.data import random_inputs
from resnest_deploy.loaders import open_runner
from resnest_deploy.runners import RunnerOptions
from resnest_deploy.runners.onnxruntime import OPTIMIZED

cli = CliRunner()
KEY = CacheKey("rt 1.0", "cpu:avx2", "ab" * 32)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def filled(kind: str = "openvino", key: CacheKey = KEY) -> CacheFolder:
    folder = CacheFolder.open(kind, key)
    assert folder is not None and not folder.hit
    (folder.path / "blob").write_bytes(b"compiled" * 100)
    folder.seal()
    return folder


def test_sealed_entry_is_a_hit_and_unlisted_files_are_removed(root: Path) -> None:
    first = filled()
    (first.path / "dropped-by-someone").write_bytes(b"x")
    again = CacheFolder.open("openvino", KEY)
    assert again is not None and again.hit and again.path == first.path
    assert sorted(p.name for p in again.path.iterdir()) == ["blob", MANIFEST]


@pytest.mark.parametrize(
    "spoil",
    [
        "corrupt",  # same size, other bytes
        "truncated",
        "foreign-key",  # a manifest written for another file / runtime / CPU
        "other-kind",
        "manifest-not-json",
        "symlink",
    ],
)
def test_stale_foreign_or_corrupt_entry_is_a_miss_and_emptied(root: Path, spoil: str) -> None:
    folder = filled()
    blob, manifest = folder.path / "blob", folder.path / MANIFEST
    m = json.loads(manifest.read_text())
    if spoil == "corrupt":
        blob.write_bytes(b"COMPILED" * 100)
    elif spoil == "truncated":
        blob.write_bytes(b"compiled")
    elif spoil == "foreign-key":
        m["key"]["artifact_sha256"] = "cd" * 32
        manifest.write_text(json.dumps(m))
    elif spoil == "other-kind":
        m["kind"] = "onnxruntime"
        manifest.write_text(json.dumps(m))
    elif spoil == "manifest-not-json":
        manifest.write_text("{not json")
    elif spoil == "symlink":
        outside = root.parent / "outside"
        outside.write_bytes(b"compiled" * 100)
        blob.unlink()
        blob.symlink_to(outside)
    again = CacheFolder.open("openvino", KEY)
    assert again is not None and not again.hit
    assert list(again.path.iterdir()) == []  # nothing of the spoilt entry is left for the runtime


def test_other_runtime_version_or_cpu_is_another_entry(root: Path) -> None:
    filled()
    for other in (
        CacheKey("rt 1.1", "cpu:avx2", "ab" * 32),
        CacheKey("rt 1.0", "cpu:avx2,avx512f", "ab" * 32),
        CacheKey("rt 1.0", "cpu:avx2", "cd" * 32),
    ):
        folder = CacheFolder.open("openvino", other)
        assert folder is not None and not folder.hit


def test_unwritable_root_caches_elsewhere_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # cannot be created, even by root
    monkeypatch.setattr(cache, "_SAID", set())
    fallback = tmp_path / "tmp"
    monkeypatch.setattr(cache, "fallback_root", lambda: fallback)
    first, second = cache.runtime_root(), cache.runtime_root()
    assert first == second == fallback
    said = capsys.readouterr().err
    assert said.count("warning: cache root") == 1 and "not writable" in said
    monkeypatch.setattr(cache, "fallback_root", lambda: blocker / "tmp")  # neither: no cache, run on
    assert cache.runtime_root() is None
    assert "running without a cache" in capsys.readouterr().err


def test_off_switch(monkeypatch: pytest.MonkeyPatch, digits_onnx: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")
    assert open_runner(digits_onnx).cache_folder is None  # type: ignore[attr-defined]
    assert cache.cache_root().name == "resnest_deploy"  # calibration data still has its folder


def _logits(
    digits_onnx: Path, provider: str, x: np.ndarray, use_cache: bool = True
) -> tuple[np.ndarray, bool]:
    runner = open_runner(digits_onnx, RunnerOptions.from_provider(provider, cache=use_cache))
    with runner:
        y = runner.infer(x)
    folder = runner.cache_folder  # type: ignore[attr-defined]
    return y, bool(folder and folder.hit)


def test_onnxruntime_optimized_graph_is_kept_and_read_back(root: Path, digits_onnx: Path) -> None:
    x = random_inputs(4, (32, 32))
    plain, _ = _logits(digits_onnx, "cpu", x, use_cache=False)
    cold, hit = _logits(digits_onnx, "cpu", x)
    assert not hit
    (entry,) = (root / "onnxruntime").iterdir()
    assert (entry / OPTIMIZED).is_file() and (entry / MANIFEST).is_file()
    warm, hit = _logits(digits_onnx, "cpu", x)
    assert hit
    np.testing.assert_allclose(cold, plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(warm, plain, rtol=1e-5, atol=1e-5)


def test_onnxruntime_foreign_graph_in_the_cache_is_not_used(
    root: Path, digits_onnx: Path, tmp_path: Path
) -> None:
    """Another model's optimized graph put in place of this one's, with a manifest rewritten to
    match its bytes (but not this file's key), is not run: the answers are the real model's."""
    x = random_inputs(4, (32, 32))
    plain, _ = _logits(digits_onnx, "cpu", x, use_cache=False)
    _logits(digits_onnx, "cpu", x)
    (entry,) = (root / "onnxruntime").iterdir()
    # a foreign graph: the same model with its classifier's bias shifted, so its answers differ
    import onnx

    from resnest_deploy._io import sha256_file

    model = onnx.load(digits_onnx)
    bias = next(t for t in model.graph.initializer if t.name.endswith("fc.bias"))
    arr = onnx.numpy_helper.to_array(bias) + 5.0
    bias.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), bias.name))
    onnx.save(model, entry / OPTIMIZED)
    m = json.loads((entry / MANIFEST).read_text())
    m["files"][OPTIMIZED] = {
        "sha256": sha256_file(entry / OPTIMIZED),
        "size": (entry / OPTIMIZED).stat().st_size,
    }
    m["key"]["artifact_sha256"] = "0" * 64  # written for another file
    (entry / MANIFEST).write_text(json.dumps(m))
    y, hit = _logits(digits_onnx, "cpu", x)
    assert not hit
    np.testing.assert_allclose(y, plain, rtol=1e-5, atol=1e-5)
    # and with the right key but bytes that no longer match the manifest: also a miss
    shutil.copy(digits_onnx, entry / OPTIMIZED)
    y, hit = _logits(digits_onnx, "cpu", x)
    assert not hit
    np.testing.assert_allclose(y, plain, rtol=1e-5, atol=1e-5)


def test_openvino_compiled_model_cache(root: Path, digits_onnx: Path) -> None:
    pytest.importorskip("openvino")
    x = random_inputs(2, (32, 32))
    plain, _ = _logits(digits_onnx, "openvino", x, use_cache=False)
    _, hit = _logits(digits_onnx, "openvino", x)
    assert not hit
    runner = open_runner(digits_onnx, RunnerOptions.from_provider("openvino"))
    with runner:
        warm = runner.infer(x)
        assert runner.cache_folder.hit and runner.model is None  # the ONNX file was not even read
        assert tuple(x.shape) in runner.loaded_from_cache  # type: ignore[attr-defined]
    np.testing.assert_allclose(warm, plain, rtol=1e-4, atol=1e-4)
    (entry,) = (root / "openvino").iterdir()
    blob = next(entry.glob("*.blob"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # zero its second half
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    runner = open_runner(digits_onnx, RunnerOptions.from_provider("openvino"))
    with runner:
        y = runner.infer(x)
        assert not runner.cache_folder.hit and not runner.loaded_from_cache  # type: ignore[attr-defined]
    np.testing.assert_allclose(y, plain, rtol=1e-4, atol=1e-4)


def test_cache_list_and_clear(root: Path, digits_onnx: Path) -> None:
    x = random_inputs(1, (32, 32))
    _logits(digits_onnx, "cpu", x)
    filled("tensorrt-timing")
    listed = json.loads(cli.invoke(app, ["cache", "list", "--json"]).output)
    assert listed["root"] == str(root)
    kinds = sorted(e["kind"] for e in listed["entries"])
    assert kinds == ["onnxruntime", "tensorrt-timing"]
    ort = next(e for e in listed["entries"] if e["kind"] == "onnxruntime")
    assert ort["valid"] and ort["size_bytes"] > 0 and ort["key"]["runtime"].startswith("onnxruntime")
    result = cli.invoke(app, ["cache", "clear", "--kind", "tensorrt-timing", "--json"])
    assert result.exit_code == 0 and len(json.loads(result.output)["entries"]) == 1
    left = json.loads(cli.invoke(app, ["cache", "list", "--json"]).output)["entries"]
    assert [e["kind"] for e in left] == ["onnxruntime"]
    bad = cli.invoke(app, ["cache", "list", "--kind", "nope"])
    assert bad.exit_code != 0 and "unknown cache kind" in bad.output


def test_bench_first_inference_cold_and_warm(root: Path, digits_onnx: Path) -> None:
    result = cli.invoke(
        app, ["bench", str(digits_onnx), "-b", "1", "-n", "2", "--warmup", "0", "--first-inference", "--json"]
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)  # a line per cell goes to stderr
    assert row["first_cache"] == "onnxruntime" and row["first_warm_hit"] is True
    assert row["first_cold_ms"] > row["first_cold_open_ms"] > 0
    assert row["first_warm_ms"] > row["first_warm_open_ms"] > 0
    # the cold and warm processes used a cache root of their own: the user's holds bench's entry only
    assert len(list((root / "onnxruntime").iterdir())) == 1


def test_serve_records_start_to_ready_and_its_models_warm_from_the_cache(
    root: Path, digits_onnx: Path, tmp_path: Path
) -> None:
    """The status file says how long serve took to be ready; the OpenVINO model compiled before
    ready (warm-up), so its compiled model is in the cache for the next start."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from resnest_deploy.serving.server import Ports

    ports, status = Ports.free("127.0.0.1"), tmp_path / "status.json"
    cli_path = Path(sys.executable).with_name("resnest-deploy")
    args = [str(cli_path), "serve", str(digits_onnx), "--provider", "openvino", "--status-file", str(status)]
    args += [
        "--http-port",
        str(ports.http),
        "--grpc-port",
        str(ports.grpc),
        "--metrics-port",
        str(ports.metrics),
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not status.exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.2)
        took = json.loads(status.read_text())["start_to_ready_s"]
        assert isinstance(took, float) and 0 < took < 120
        (entry,) = (root / "openvino").iterdir()  # compiled during warm-up, before ready
        assert list(entry.glob("*.blob")) and (entry / MANIFEST).is_file()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "start to ready:" in err, err[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_tensorrt_rtx_runtime_caches_are_kept_per_engine_gpu_and_version(tmp_path, monkeypatch):
    """The runner opens its runtime cache once it knows its GPU and TensorRT-RTX version (a GPU step
    of scripts/gpu_check.py runs it); here: what the registry hands it back, and when not."""
    from resnest_deploy import cache, cache_listing

    monkeypatch.setenv("RESNEST_DEPLOY_CACHE", str(tmp_path / "root"))
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"an engine's bytes")

    def opened(version: str = "tensorrt-rtx 1.7.1", gpu: str = "gpu:sm_89") -> cache.CacheFolder:
        folder = cache.for_artifact("tensorrt-rtx-runtime", engine, version, device=gpu)
        assert folder is not None
        return folder

    first = opened()
    assert not first.hit
    (first.path / "runtime.cache").write_bytes(b"kernels")
    first.seal()
    again = opened()
    assert again.hit and "runtime.cache" in again.verified
    assert not opened(gpu="gpu:sm_90").hit  # another GPU: its own entry
    assert not opened(version="tensorrt-rtx 1.8.0").hit
    (again.path / "runtime.cache").write_bytes(b"kernels, changed")  # not what was sealed
    assert not opened().hit
    engine.write_bytes(b"another engine")
    assert not opened().hit
    listed = [
        e for e in cache_listing.list_entries(["tensorrt-rtx-runtime"]) if e.kind == "tensorrt-rtx-runtime"
    ]
    assert listed
