from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest
import torch
from helpers import images, unique_archs

from resnest_deploy.errors import ExportError, ParityError, WeightsError
from resnest_deploy.export import export_onnx
from resnest_deploy.models import create_model, load_model
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner
from resnest_deploy.runners.torch import TorchRunner

SHAPE_OPS = {"Shape", "Gather", "Concat", "Unsqueeze", "ConstantOfShape"}


def ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_resnest50_full_round_trip(onnx_50, refdata_checkpoint):
    counts = ops(onnx_50)
    assert sum(counts.values()) <= 350
    assert not SHAPE_OPS & set(counts), counts
    assert not {"Identity", "Constant", "BatchNormalization"} & set(counts)
    assert counts["Softmax"] == 16 and counts["Conv"] == 87
    model = onnx.load(str(onnx_50))
    onnx.checker.check_model(model, full_check=True)
    # every reshape target is a constant with only the batch free
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape":
            target = inits[node.input[1]]
            # radix reshapes: [-1, R, C...]; the head's flatten: [0, 2048] (0 copies the batch)
            assert target[0] in (-1, 0) and (target[1:] > 0).all()
    # grouped convs stay single Conv nodes with their group attribute (radix 2 -> group 2)
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert groups.count(2) == 16
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == "resnest_deploy"))
    sidecar = json.loads(onnx_50.with_name(onnx_50.name + ".json").read_text())
    assert meta["arch"] == sidecar["arch"] == "resnest50" and meta["opset"] == 17
    assert sidecar["weights"]["sha256"] and sidecar["preprocessing"]["input_size"] == [224, 224]
    assert sidecar["parity"]["batch=4"]["rel_max_abs"] <= 1e-4
    # dynamic batch: one file, batches 1, 3 and 16, all match PyTorch
    torch_model = create_model("resnest50", refdata_checkpoint("resnest50"))
    with OnnxRuntimeRunner(onnx_50) as ort_runner, TorchRunner(torch_model) as ref:
        for b in (1, 3, 16):
            x = images(b, (224, 224), seed=b)
            got, want = ort_runner.infer(x), ref.infer(x)
            assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
            assert (got.argmax(1) == want.argmax(1)).all()


def test_resnest14d_graph_is_clean(onnx_14d):
    counts = ops(onnx_14d)
    assert not SHAPE_OPS & set(counts)
    assert sum(counts.values()) <= 100 and counts["Softmax"] == 4


@pytest.mark.parametrize("arch", unique_archs())
def test_every_architecture_exports_and_matches(arch, tmp_path):
    model, info = load_model(arch)
    report = export_onnx(model, tmp_path / "m.onnx", input_size=(64, 64), parity_batches=(2,), weights=info)
    assert report.parity["batch=2"].rel_max_abs <= 1e-4 and report.parity["batch=2"].top1 == 1.0
    counts = ops(report.path)
    assert not SHAPE_OPS & set(counts)
    radix = model.cfg.radix
    assert (counts["Sigmoid"], counts["Softmax"] > 0) == (
        (sum(model.cfg.layers), False) if radix == 1 else (0, True)
    )


@pytest.mark.parametrize("size", [(200, 232), (225, 225)])
def test_ceil_mode_and_avd_pools_match_at_odd_sizes(size, tmp_path, refdata_checkpoint):
    model, info = load_model("resnest14d", refdata_checkpoint("resnest14d"))
    report = export_onnx(model, tmp_path / "odd.onnx", input_size=size, weights=info)
    assert all(m.rel_max_abs <= 1e-4 for m in report.parity.values())


def test_dynamic_hw_runs_other_sizes(tmp_path, refdata_checkpoint):
    model, info = load_model("resnest50_fast_4s2x40d")
    report = export_onnx(model, tmp_path / "hw.onnx", input_size=(64, 64), dynamic_hw=True, weights=info)
    assert report.input_shape == ["batch", 3, "height", "width"]
    with OnnxRuntimeRunner(report.path) as ort_runner, TorchRunner(model) as ref:
        x = images(2, (97, 131))
        np.testing.assert_allclose(ort_runner.infer(x), ref.infer(x), atol=1e-4)


def test_static_batch_export(tmp_path):
    report = export_onnx(create_model("resnest14d"), tmp_path / "b2.onnx", batch=2, input_size=(64, 64))
    assert report.input_shape == [2, 3, 64, 64] and list(report.parity) == ["batch=2"]


def test_parity_failure_removes_the_file(tmp_path):
    class Drift(torch.nn.Module):  # a model whose eager forward is not what gets traced
        def __init__(self):
            super().__init__()
            self.inner = create_model("resnest14d")
            self.fc = self.inner.fc
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.inner(x) + float(self.calls > 1)

    with pytest.raises(ParityError, match="ONNX export at batch 1 does not match"):
        export_onnx(Drift(), tmp_path / "bad.onnx", input_size=(64, 64))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", [9, 99])
def test_bad_opset(opset, tmp_path):
    with pytest.raises(ExportError, match=f"opset {opset} is not supported; use 13..20"):
        export_onnx(create_model("resnest14d"), tmp_path / "x.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(Exception, match=r"cannot write .*choose a writable output path"):
        export_onnx(create_model("resnest14d"), blocker / "x.onnx", input_size=(64, 64))


def test_weights_for_another_arch(refdata_checkpoint):
    with pytest.raises(WeightsError, match="does not fit resnest50"):
        load_model("resnest50", refdata_checkpoint("resnest14d"))
