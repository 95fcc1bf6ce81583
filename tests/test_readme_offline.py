"""The README's offline ImageNet block, run as written with a small arch on generated photos."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from resnest_deploy.cli.app import app

README = Path(__file__).resolve().parent.parent / "README.md"
SMALL = "resnest14d"  # the smallest ImageNet arch: the same path as resnest50, minutes faster


def offline_block() -> list[str]:
    section = README.read_text().split("## ImageNet models, offline", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("resnest-deploy ")]


def photos(folder: Path, n: int = 10) -> Path:
    """Smooth colour fields with noise, as JPEG: decoded, resized and cropped like real photos."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320] / np.array([240.0, 320.0]).reshape(2, 1, 1)
    for i in range(n):
        f = rng.uniform(2, 9, 3)
        rgb = np.stack([np.sin(x * f[0] + i), y, np.cos(y * f[1] + x * f[2])], -1) * 0.5 + 0.5
        pixels = (rgb * 255 + rng.normal(0, 10, rgb.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{i}.jpg")
    return folder


def test_the_readme_offline_imagenet_block_runs_end_to_end(tmp_path, monkeypatch):
    (line,) = offline_block()
    assert "--weights random" in line and "--calib-dir photos/" in line and "resnest50" in line
    photos(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, shlex.split(line.replace("resnest50", SMALL))[1:])
    assert result.exit_code == 0, result.output
    out = tmp_path / "models" / SMALL
    report = json.loads((out / "report.json").read_text())
    steps = report["steps"]
    assert report["status"] == "ok" and report["weights"] == "random"
    for step in ("export", "convert", "build", "convert-cpu", "check", "bench"):
        assert steps[step]["status"] == "ok", step
    for step in ("convert", "convert-cpu"):  # measured, recorded, not judged
        assert steps[step]["parity"]["gate"]["judged"] is False
        assert steps[step]["parity"]["metrics"]["samples"] == 2  # a fifth of 10 photos, said
    checked = {Path(r["artifact"]).name: r["judged"] for r in steps["check"]["results"]}
    assert checked == {f"{SMALL}.onnx": True, f"{SMALL}.int8.onnx": False, f"{SMALL}.int8-cpu.onnx": False}
    md = (out / "report.md").read_text()
    assert "for speed and structure only" in md
    timed = {(Path(r["artifact"]).name, r["backend"], r["batch"]) for r in steps["bench"]["results"]}
    assert {n for n, _, _ in timed} == {
        "torch",
        f"{SMALL}.onnx",
        f"{SMALL}.int8.onnx",
        f"{SMALL}.int8-cpu.onnx",
    }
    assert {(n, b) for n, _, b in timed} >= {(n, b) for n, _, _ in timed for b in (1, 8)}  # every batch
    for name, backend, batch in timed:  # and every row in the report
        short = name if name == "torch" else "*" + name.removeprefix(SMALL)
        assert f"| {short} | {backend} | {batch} |" in md, (name, backend, batch)
    headings = [ln for ln in md.splitlines() if ln.startswith("#")]
    assert len(headings) == len(set(headings)), headings
    assert (out / f"{SMALL}.int8.plan").is_file()
