"""The zoo on the bundled digits model: real exports, real conversions, real timings per process."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from resnest_deploy.cli.app import app
from resnest_deploy.models import count_params
from resnest_deploy.reports.zoo import COLUMNS
from resnest_deploy.zoo import graph_stats
from resnest_deploy.zoo_figures import cpu_peak, published

cli = CliRunner()


def test_macs_and_params_are_counted_from_the_graph(tmp_path: Path) -> None:
    """A 3x3 conv (8 -> 16 channels, groups 2) on 10x10 and a 16 -> 5 Gemm: MACs by hand."""
    import numpy as np

    w = numpy_helper.from_array(np.zeros((16, 4, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(np.zeros((16, 5), np.float32), "fc")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], group=2, pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [w, fc],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    stats = graph_stats(path)
    assert stats.macs == 16 * 10 * 10 * (4 * 3 * 3) + 16 * 5
    assert stats.params == 16 * 4 * 9 + 16 * 5 and stats.nodes == 4


def test_peak_follows_the_flags() -> None:
    peak = cpu_peak()
    assert peak.cores >= 1 and peak.fp32_macs_per_cycle in (8, 16, 32)
    assert peak.macs_per_s("int8") >= peak.macs_per_s("fp32") > 0 or peak.clock_mhz == 0


def test_published_figures_name_their_source() -> None:
    for arch in ("resnest50", "resnest50_fast_1s1x64d", "resnest14d", "resnest50d_4s2x40d"):
        p = published(arch)
        assert (p.top1 is None) == (p.top1_source is None)
        assert (p.params_m is None) == (p.size_source is None)
    assert published("resnest14d_digits").top1 is None  # not an ImageNet model: nothing invented


def test_zoo_on_digits_writes_every_output_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "zoo"
    args = ["zoo", "--archs", "resnest14d_digits", "--precisions", "fp32,int8", "--backends", "onnxruntime"]
    args += ["-n", "2", "-o", str(out)]
    first = cli.invoke(app, args)
    assert first.exit_code == 0, first.output
    for name in ("zoo.json", "zoo.csv", "zoo.md", "zoo.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "zoo.json").read_text())
    (row,) = result["rows"]
    assert abs(row["params"] - count_params("resnest14d_digits")) / count_params("resnest14d_digits") < 0.02
    assert row["macs"] > 0
    cells = {(c["precision"], c["backend"]): c for c in row["cells"]}
    assert set(cells) == {("fp32", "onnxruntime"), ("int8", "onnxruntime")}
    assert cells["fp32", "onnxruntime"]["parity_cosine"] > 0.99999  # the reference against itself
    assert 0.9 < cells["int8", "onnxruntime"]["parity_cosine"] <= 1.0
    assert cells["int8", "onnxruntime"]["nodes"] > cells["fp32", "onnxruntime"]["nodes"]  # Q/DQ pairs
    for c in cells.values():
        assert set(c["p50_ms"]) == {"1", "8"} and all(v > 0 for v in c["p50_ms"].values())
        assert 0 < c["fraction_of_peak"] < 1
    table = list(csv.DictReader(io.StringIO((out / "zoo.csv").read_text())))
    assert list(table[0]) == COLUMNS and len(table) == 2
    md = (out / "zoo.md").read_text()
    assert "Fraction of peak = " in md and "MHz" in md and "flags" in md
    # a rerun measures nothing again: same files, same machine
    again = cli.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("measured before, kept") == 2
    rerun = json.loads((out / "zoo.json").read_text())
    assert [c["measured"] for c in rerun["rows"][0]["cells"]] == [c["measured"] for c in row["cells"]]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--archs", "resnest999"], "resnest999"),
        (["--backends", "tensorflow"], "unknown backend"),
        (["--precisions", "fp8"], "unknown precision"),
    ],
)
def test_zoo_refuses_unknown_names_before_work(tmp_path: Path, extra: list[str], message: str) -> None:
    result = cli.invoke(app, ["zoo", "-o", str(tmp_path / "z"), *extra])
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "z" / "models").exists()


def test_a_zoo_that_fails_before_writing_leaves_no_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "z"
    result = cli.invoke(
        app, ["zoo", "--archs", "resnest14d", "--weights", str(tmp_path / "missing.pth"), "-o", str(out)]
    )
    assert result.exit_code != 0 and "checkpoint not found" in result.output
    assert not out.exists()
    kept = tmp_path / "mine"  # a folder the user made is theirs: kept, even empty
    kept.mkdir()
    result = cli.invoke(
        app, ["zoo", "--archs", "resnest14d", "--weights", str(tmp_path / "missing.pth"), "-o", str(kept)]
    )
    assert result.exit_code != 0 and kept.is_dir()
