"""The names of a model's parts are data in the registry (timm's ``_cfg(first_conv=...,
classifier=...)``), and the INT8 search's units, INT8's default FP32 nodes and the outlier fixture
all read them: checked against a real export and the network itself."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from resnest_deploy.models import ModelParts, get_spec, list_models, load_model, parts
from resnest_deploy.models.config import RESNEST_PARTS
from resnest_deploy.precision.int8 import KEEP_FP32_NODES, matching_nodes
from resnest_deploy.precision.search import unit_of, units

BLOCK_UNITS = ("conv1", "split-attention conv", "attention gate", "conv3", "downsample")


def test_every_registered_model_declares_its_parts_and_an_unknown_arch_gets_the_familys():
    for arch in list_models():
        assert parts(arch) is get_spec(arch).arch.parts
        assert isinstance(parts(arch), ModelParts) and parts(arch).first_conv == "conv1.0"
    assert parts("someone_elses_net") == parts(None) == RESNEST_PARTS
    assert parts().classifier == "fc"  # timm's names for ResNeSt: first_conv conv1.0, classifier fc


def test_the_module_paths_name_the_networks_parts():
    model, _ = load_model("resnest14d_digits", "pretrained")
    names = parts("resnest14d_digits")
    first, norm = model.get_submodule(names.first_conv), model.get_submodule(names.stem_norm)
    after = model.get_submodule(names.stem_next_conv)
    assert type(first).__name__ == "Conv2d" and first.in_channels == 3  # reads the image
    assert type(norm).__name__ == "BatchNorm2d" and norm.num_features == first.out_channels
    assert type(after).__name__ == "Conv2d" and after.in_channels == norm.num_features
    fc = model.get_submodule(names.classifier)
    assert type(fc).__name__ == "Linear" and fc.out_features == 10


def test_the_node_patterns_find_every_unit_of_a_real_export(digits_onnx):
    model = onnx.load(digits_onnx)
    compute = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    found = {name: unit_of(name) for name in compute}
    assert None not in found.values()  # every convolution and the classifier belong to a unit
    expected = {"stem", "classifier"} | {
        f"layer{i}.0 {part}" for i in range(1, 5) for part in BLOCK_UNITS
    }  # resnest14d: one block per stage, each with an avg-down shortcut
    assert set(found.values()) == expected
    assert [n for n, u in found.items() if u == "stem"] == [
        "/conv1/conv1.0/Conv",
        "/conv1/conv1.3/Conv",
        "/conv1/conv1.6/Conv",
    ]
    # INT8's default FP32 nodes are exactly the search's attention gates and classifier
    kept = set(matching_nodes(model, KEEP_FP32_NODES))
    assert {n for n in compute if n in kept} == {
        n for n, u in found.items() if u is not None and u.endswith(("attention gate", "classifier"))
    }
    assert {n.op_type for n in model.graph.node if n.name in kept} == {"Conv", "Gemm", "Reshape", "Softmax"}
    assert KEEP_FP32_NODES == (r"/conv2/fc[12]/", r"/rsoftmax/", r"^/fc/")  # the patterns as recorded before


@pytest.mark.parametrize("arch", ["resnest14d_digits", "an_arch_we_do_not_know"])
def test_units_of_a_quantized_file_follow_the_arch_it_records(arch):
    """A file with Q/DQ on two convolutions' inputs and on a block's residual Add: named by the family's
    parts whatever it records (a split attention's radix sum is no residual unit: it is its gate's)."""
    nodes = [
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x"], name="dq"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="/conv1/conv1.0/Conv"),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y2"], name="dq2"),
        helper.make_node("Conv", ["y2", "w2"], ["out"], name="/layer2/layer2.0/conv2/fc1/Conv"),
        helper.make_node("Conv", ["out", "w3"], ["out2"], name="/somewhere/else/Conv"),
        helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["a"], name="dq3"),
        helper.make_node("Add", ["a", "out2"], ["sum"], name="/layer1/layer1.0/Add"),  # the block's
        helper.make_node("Add", ["a", "sum"], ["radix"], name="/layer1/layer1.0/conv2/Add_1"),  # not
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", TensorProto.UINT8, None)], [])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"arch": arch})
    assert units(model) == {
        "stem": ["/conv1/conv1.0/Conv"],
        "layer2.0 attention gate": ["/layer2/layer2.0/conv2/fc1/Conv"],
        "layer1.0 residual": ["/layer1/layer1.0/Add"],
        "layer1.0 attention gate": ["/layer1/layer1.0/conv2/Add_1"],
    }
