"""check, bench, predict, eval, inspect and pipeline on the bundled digits model (CPU backends)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import digit_folder
from PIL import Image
from typer.testing import CliRunner

from resnest_deploy.bench import bench
from resnest_deploy.check import check
from resnest_deploy.cli.app import app
from resnest_deploy.data import digits
from resnest_deploy.errors import ArtifactError
from resnest_deploy.evaluate import evaluate
from resnest_deploy.inspection import describe
from resnest_deploy.pipeline import PipelineConfig, pipeline
from resnest_deploy.precision import int8
from resnest_deploy.predict import imagenet_classes, predict

cli = CliRunner()


def test_check_passes_honest_artifacts(digits_onnx, digits_converted):
    report = check([str(digits_onnx), *map(str, digits_converted.values())])
    assert report.passed and report.arch == "resnest14d_digits" and report.weights == "pretrained"
    assert report.inputs["kind"].startswith("bundled digits")
    by_precision = {r.precision: r.metrics for r in report.results}
    assert by_precision["fp32"].max_abs < 1e-4 and by_precision["int8"].cosine > 0.99


def test_check_fails_a_tampered_onnx(digits_onnx, tmp_path):
    """One weight tensor nudged by 5% of its scale is caught, with a non-zero CLI exit."""
    model = onnx.load(digits_onnx)
    target = next(t for t in model.graph.initializer if len(t.dims) == 4 and t.dims[0] >= 64)
    w = onnx.numpy_helper.to_array(target).copy()
    w[0] += 0.5 * np.abs(w).max()
    target.CopyFrom(onnx.numpy_helper.from_array(w, target.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, tampered)
    report = check([str(tampered)])
    assert not report.passed and report.results[0].problems
    result = cli.invoke(app, ["check", str(tampered), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["passed"] is False


def test_check_refuses_mismatched_arch_and_missing_files(digits_onnx, tmp_path):
    with pytest.raises(ArtifactError, match="was made from resnest14d_digits, not resnest50"):
        check([str(digits_onnx)], arch="resnest50")
    with pytest.raises(ArtifactError, match="not found"):
        check([str(tmp_path / "nope.onnx")])
    with pytest.raises(ArtifactError, match="cannot tell what"):
        check([str(tmp_path / "model.bin")])


def test_bench_times_are_measured_not_made_up(digits_onnx, digits_converted):
    """What bench reports fits inside the wall-clock time the call took, and more images per call
    take longer: the figures come from real calls."""
    from resnest_deploy.reports.bench import to_csv

    started = time.perf_counter()
    results = bench(
        ["torch", str(digits_onnx), str(digits_converted["int8-cpu"])], batches=(1, 64), iterations=3
    )
    wall_ms = (time.perf_counter() - started) * 1e3
    assert [(r.backend, r.batch) for r in results] == [
        ("torch-cpu", 1),
        ("torch-cpu", 64),
        ("onnxruntime-cpu", 1),
        ("onnxruntime-cpu", 64),
        ("onnxruntime-cpu", 1),
        ("onnxruntime-cpu", 64),
    ]
    assert sum(r.mean_ms * r.iterations for r in results) < wall_ms
    for small, large in zip(results[::2], results[1::2], strict=True):
        assert large.p50_ms > small.p50_ms and small.device_p50_ms is large.device_p50_ms is None
    assert to_csv(results).splitlines()[0].startswith("artifact,backend,precision,batch,p50_ms")


def test_bench_throughput_follows_the_time_really_spent_per_image():
    """A backend that spends 2 ms per image runs at about 500 images/s at any batch size: the
    figures come from the calls, not from a formula over the batch."""
    from resnest_deploy.bench import summarize, time_runner
    from resnest_deploy.runners.base import Runner

    class TwoMsPerImage(Runner):
        backend = "sleeping"

        def activate_impl(self) -> None: ...

        def infer_impl(self, x):
            time.sleep(0.002 * len(x))
            return np.zeros((len(x), 10), np.float32)

    with TwoMsPerImage("s") as runner:
        for batch in (2, 16):
            x = np.zeros((batch, 3, 4, 4), np.float32)
            times, device = time_runner(runner, x, warmup=1, iterations=5)
            r = summarize("s", runner, "fp32", batch, times, device, first_call_ms=0.0)
            assert 300 < r.images_per_s <= 500 and r.p50_ms >= 2.0 * batch and r.device_p50_ms is None


def test_bench_cli_json_csv_and_plot(digits_onnx, tmp_path):
    result = cli.invoke(
        app,
        [
            "bench",
            str(digits_onnx),
            "--batch-sizes",
            "1,2",
            "-n",
            "2",
            "--csv",
            str(tmp_path / "b.csv"),
            "--plot",
            str(tmp_path / "b.png"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["batch"] for r in rows} == {1, 2}
    assert len((tmp_path / "b.csv").read_text().splitlines()) == 3
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = cli.invoke(app, ["bench", str(digits_onnx), "--batch-sizes", "0"])
    assert bad.exit_code == 2


def test_eval_on_a_labelled_digit_folder(digits_onnx, digits_converted, tmp_path):
    root = digit_folder(tmp_path / "val", per_class=6, size=24)
    (root / "3" / "README.txt").write_text("not an image")
    (root / "3" / "broken.png").write_bytes(b"garbage")
    results, described = evaluate(["torch", str(digits_onnx), str(digits_converted["int8"])], root)
    assert described["images"] == 60 and len(described["skipped"]) == 1
    for r in results:
        assert r.top1 >= 0.95 and r.top5 == 1.0
    with pytest.raises(ArtifactError, match="neither a class index nor a known synset"):
        (root / "cats").mkdir()
        evaluate([str(digits_onnx)], root)


def test_predict_real_image_files(digits_onnx, tmp_path):
    images, labels = digits("test")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"d{i}.jpg")
        Image.fromarray(images[i]).convert("RGB").resize((64, 64)).save(paths[-1], quality=95)
    preds = predict(paths, str(digits_onnx), topk=3)
    assert [int(p.top[0][1]) for p in preds] == list(labels[:3])
    assert all(abs(sum(pr for *_, pr in p.top) - 1) < 0.2 and p.top[0][2] > 0.5 for p in preds)
    (tmp_path / "note.jpg").write_text("text, not a jpeg")
    with pytest.raises(ArtifactError, match="not an image"):
        predict([tmp_path / "note.jpg"], str(digits_onnx))


def test_imagenet_labels_ship_with_the_package():
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[0] == ("n01440764", "tench") and classes[-1][0] == "n15075141"


def test_inspect_onnx_and_engine(digits_converted, tmp_path):
    info = describe(digits_converted["int8"])
    assert info["metadata"]["precision"] == "int8" and info["op_counts"]["QuantizeLinear"] > 0
    assert info["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    from resnest_deploy.engine import build_engine

    engine = build_engine(
        digits_converted["fp16"], tmp_path / "e.plan", backend="tensorrt-rtx", batch=(1, 2, 4)
    )
    described = describe(engine.path)
    assert described["metadata"]["precision"] == "fp16" and described["kind"] == "engine"
    assert isinstance(described["layers"], str) and "GPU" in described["layers"]
    result = cli.invoke(app, ["inspect", str(engine.path)])
    assert result.exit_code == 0 and "tensorrt-rtx" in result.stdout


def test_pipeline_end_to_end_offline(tmp_path):
    config = PipelineConfig(
        "resnest14d_digits", precision="int8", out_dir=tmp_path, batches=(1,), iterations=2
    )
    report = pipeline(config)
    steps = report["steps"]
    assert report["status"] == "ok"
    assert [steps[s]["status"] for s in ("export", "convert", "build", "convert-cpu", "check", "bench")] == [
        "ok"
    ] * 6
    assert (tmp_path / "resnest14d_digits.int8.plan").is_file()
    md = (tmp_path / "report.md").read_text()
    assert "resnest14d_digits.int8.onnx" in md and "| bench | ok |" in md  # the steps name whole paths
    assert f"`*` stands for `resnest14d_digits` in `{tmp_path}`" in md
    # no GPU here: the fast CPU file is made, checked and timed in both CPU runtimes, and labelled
    assert "| *.int8-cpu.onnx | CPU: ONNX Runtime, OpenVINO | onnxruntime-cpu |" in md
    if "check-bf16" in steps:  # CPUs with BF16: the FP32 file computed in BF16, judged by its own bar
        (bf16,) = steps["check-bf16"]["results"]
        assert bf16["precision"] == "bf16" and bf16["backend"] == "openvino-cpu-bf16" and bf16["passed"]
    timed = {(Path(r["artifact"]).name, r["backend"]) for r in steps["bench"]["results"]}
    assert ("resnest14d_digits.int8-cpu.onnx", "openvino-cpu-f32") in timed
    assert ("resnest14d_digits.int8-cpu.onnx", "onnxruntime-cpu") in timed
    assert json.loads((tmp_path / "report.json").read_text())["status"] == "ok"
    # the latency table carries bench's spread and its flags: a flagged row is marked, its cause said
    assert "| p50 ms | p10-p90 ms |" in md
    for i, row in enumerate([r for r in steps["bench"]["results"] if r["flags"]], 1):
        assert f"!{i} " in md and row["flags"][0] in md
    # INT8: every method each target's quantizer offers, the best kept, then the search; all reported
    for step, methods in (("convert", ("max", "entropy", "percentile")), ("convert-cpu", int8.METHODS)):
        tried = steps[step]["conversion"]["calibration_methods"]
        assert tuple(r["method"] for r in tried["results"]) == tuple(methods)
        best = max(r["metric"] for r in tried["results"])
        assert next(r["metric"] for r in tried["results"] if r["method"] == tried["chosen"]) == best
        assert steps[step]["conversion"]["search"]["max_drop_points"] == 0.5
    assert md.count("| calibration | plain INT8 |") == 2 and "| distribution | " in md
    assert md.count("![INT8 sensitivity](") == 2
    # judged on the 899 labelled held-out digits: the drop with its interval, for both files
    assert (
        md.count("top-1 drop against FP32 on 899 held-out digits (labelled)") == 2 and md.count("95% CI") == 2
    )
    headings = [ln for ln in md.splitlines() if ln.startswith("#")]
    assert len(headings) == len(set(headings)), headings  # one heading per section, none repeated
    assert "for speed and structure only" not in md  # trained weights: judged, no note


def test_pipeline_stops_at_the_first_failure_with_a_report(tmp_path):
    result = cli.invoke(
        app,
        [
            "pipeline",
            "--arch",
            "resnest14d",
            "--weights",
            "random",
            "--precision",
            "int8",
            "-o",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 1 and "INT8 needs calibration data" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "failed at convert" and report["steps"]["export"]["status"] == "ok"


def test_pipeline_records_an_early_failure(tmp_path):
    (tmp_path / "calib").mkdir()
    args = ["pipeline", "--arch", "resnest14d", "--weights", "random", "-p", "int8", "--calib-dir"]
    result = cli.invoke(app, [*args, str(tmp_path / "calib"), "-o", str(tmp_path / "a")])
    assert result.exit_code == 1
    assert json.loads((tmp_path / "a" / "report.json").read_text())["steps"]["convert"]["reason"].startswith(
        "no images"
    )
    result = cli.invoke(
        app,
        ["pipeline", "--arch", "resnest14d", "--weights", str(tmp_path / "w.pth"), "-o", str(tmp_path / "b")],
    )
    assert result.exit_code == 1
    assert json.loads((tmp_path / "b" / "report.json").read_text())["status"] == "failed at export"


def test_report_headings_are_distinct_and_a_users_bar_is_said_in_the_convert_row():
    from resnest_deploy.pipeline import markdown

    metrics = {"max_abs": 0.1, "cosine": 0.95, "top1": 0.8, "top5": 0.9}
    row = {"artifact": "m/r.onnx", "backend": "onnxruntime-cpu", "precision": "fp32", "metrics": metrics}
    check = {"status": "ok", "inputs": {"kind": "held-out images", "count": 4}, "results": [row]}
    gate = {"judged": True, "tolerance_from": "user", "outside_default": ["cosine 0.950000 < 0.98"]}
    report = {
        "arch": "r",
        "precision": "int8",
        "target": "tensorrt",
        "status": "ok",
        "weights": "pretrained",
        "steps": {
            "convert": {"status": "ok", "path": "m/r.int8.onnx", "parity": {"gate": gate}},
            "check": check,
            "check-bf16": {**check, "results": [{**row, "precision": "bf16"}]},
        },
    }
    md = markdown(report)
    headings = [ln for ln in md.splitlines() if ln.startswith("#")]
    assert len(headings) == len(set(headings)) == 3, headings
    assert "held-out images: 4" in headings[1] and "BF16" in headings[2]
    assert (
        "| convert | ok | m/r.int8.onnx (accepted outside the default tolerance: cosine 0.950000 < 0.98) |"
        in md
    )


def test_a_bench_workers_error_keeps_the_parameters_it_names(digits_onnx):
    """A provider timed in its own process sends its error as JSON: the message and the parameters it
    names travel, so the CLI still writes them as its options."""
    from resnest_deploy.bench import BenchPlan
    from resnest_deploy.bench.providers import bench_providers
    from resnest_deploy.cli._errors import flag_for
    from resnest_deploy.errors import ResnestDeployError

    plan = BenchPlan(batches=(1,), iterations=2, warmup=0, threads=1_000_000)
    with pytest.raises(ResnestDeployError) as e:
        bench_providers([digits_onnx], plan, ["cpu", "openvino"])
    assert str(e.value).startswith("provider=cpu: threads 1000000 is more than the maximum")
    assert e.value.naming(flag_for).startswith("--provider cpu: --threads 1000000 is more than the maximum")
    assert e.value.exit_code == 2  # the worker's LimitError's code
