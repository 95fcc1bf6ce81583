from __future__ import annotations

import pytest
import torch
from helpers import manifest, recipe_state_dict, unique_archs

from resnest_deploy.errors import UnknownArchError
from resnest_deploy.models import count_params, create_model, get_spec, list_models, load_model
from resnest_deploy.models.layers import RadixSoftmax, SplitAttn

OFFICIAL = ["resnest50", "resnest101", "resnest200", "resnest269"] + [
    f"resnest50_fast_{v}"
    for v in ("1s1x64d", "1s2x40d", "1s4x24d", "2s1x64d", "2s2x40d", "4s1x64d", "4s2x40d")
]
TIMM = [
    "resnest14d",
    "resnest26d",
    "resnest50d",
    "resnest101e",
    "resnest200e",
    "resnest269e",
    "resnest50d_1s4x24d",
    "resnest50d_4s2x40d",
]
# Published parameter counts (official model zoo and timm's results tables).
PUBLISHED_PARAMS_M = {
    "resnest50": 27.48,
    "resnest101": 48.28,
    "resnest200": 70.20,
    "resnest269": 110.93,
    "resnest14d": 10.61,
    "resnest26d": 17.07,
    "resnest50d_1s4x24d": 25.68,
    "resnest50d_4s2x40d": 30.42,
}


def test_registry_has_all_19_variants_and_the_bundled_one():
    assert list_models() == [*OFFICIAL, *TIMM, "resnest14d_digits"]


def test_bundled_digits_weights_load_offline(monkeypatch):
    monkeypatch.setenv("RESNEST_DEPLOY_OFFLINE", "1")
    model, info = load_model("resnest14d_digits", "pretrained")
    assert info.kind == "pretrained" and info.location.endswith("resnest14d_digits.safetensors")
    assert model.fc.out_features == 10 and len(info.sha256) == 64


@pytest.mark.parametrize("arch", ["resnest50", "resnest14d"])
@pytest.mark.parametrize("recipe", ["a", "b"])
def test_logits_match_reference_implementation(arch, recipe):
    man = manifest(arch)
    ref = man if recipe == "a" else man["check_b"]
    model = create_model(arch)
    model.load_state_dict(recipe_state_dict(man, recipe), strict=True)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        y = model(x)
    expected = torch.tensor(ref["logits_first5"])
    assert torch.all((y[:, :5] - expected).abs() <= 1e-4 * expected.abs().clamp(min=1))
    assert float(y.sum()) == pytest.approx(ref["logits_sum"], rel=1e-5, abs=1e-5)
    assert float(y.abs().sum()) == pytest.approx(ref["logits_abs_sum"], rel=1e-5)


@pytest.mark.parametrize("arch", ["resnest50", "resnest14d"])
def test_state_dict_keys_order_shapes_and_param_count(arch):
    man = manifest(arch)
    sd = create_model(arch).state_dict()
    assert [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()] == [
        tuple(e) for e in man["state_dict"]
    ]
    assert count_params(arch) == man["num_params"]


@pytest.mark.parametrize("arch", PUBLISHED_PARAMS_M)
def test_param_counts_match_published(arch):
    assert count_params(arch) / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[arch], abs=0.005)


def test_official_and_timm_twins_share_structure():
    for official, timm in [
        ("resnest50", "resnest50d"),
        ("resnest101", "resnest101e"),
        ("resnest200", "resnest200e"),
        ("resnest269", "resnest269e"),
        ("resnest50_fast_1s4x24d", "resnest50d_1s4x24d"),
        ("resnest50_fast_4s2x40d", "resnest50d_4s2x40d"),
    ]:
        assert get_spec(official).arch == get_spec(timm).arch


@pytest.mark.parametrize("arch", unique_archs())
def test_every_architecture_runs_forward_at_small_and_odd_sizes(arch):
    model = create_model(arch)
    with torch.no_grad():
        for size in [(64, 64), (65, 79)]:
            y = model(torch.randn(2, 3, *size))
            assert y.shape == (2, get_spec(arch).arch.num_classes) and torch.isfinite(y).all()


def test_random_weights_are_deterministic():
    a, b = create_model("resnest14d"), create_model("resnest14d", "random")
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_radix_1_gates_with_sigmoid_and_radix_n_softmaxes_per_cardinal_group():
    x = torch.randn(3, 2 * 4 * 5)
    torch.testing.assert_close(RadixSoftmax(1, 2, 40)(x), torch.sigmoid(x))
    # reference: official rSoftMax (view, transpose, softmax over radix, flatten)
    ref = torch.softmax(x.view(3, 2, 4, -1).transpose(1, 2), dim=1).reshape(3, -1)
    torch.testing.assert_close(RadixSoftmax(4, 2, 40)(x).flatten(1), ref)


def test_split_attention_passes_identical_radix_splits_through_unchanged():
    """The paper's attention weights of each channel sum to one over the radix splits (softmax over
    the radix axis, per cardinal group). So when every split computes the same features, split
    attention returns them unchanged, whatever its (random) fc1/fc2 say; a softmax over the wrong
    axis, a wrong transpose or a missing normalisation breaks this."""
    torch.manual_seed(0)
    out, groups, radix = 16, 2, 4
    layer = SplitAttn(16, out, groups=groups, radix=radix).eval()
    bn = layer.bn0
    with torch.no_grad():
        for tensor, (lo, hi) in (
            (bn.weight, (0.5, 1.5)),
            (bn.bias, (-0.5, 0.5)),
            (bn.running_mean, (-0.5, 0.5)),
        ):
            tensor.uniform_(lo, hi)
        bn.running_var.uniform_(0.5, 1.5)
        for tensor in (layer.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            blocks = tensor.view(radix, out, *tensor.shape[1:])
            blocks[1:] = blocks[0].clone()  # every radix split: the same filters and batch norm
        base = torch.randn(2, 16 // radix, 9, 7)
        x = base.repeat(1, radix, 1, 1)  # each split's grouped conv sees the same input channels
        split = layer.act0(layer.bn0(layer.conv(x)))[:, :out]
        torch.testing.assert_close(layer(x), split, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(layer(torch.randn_like(x)), split)  # and not for any input


def test_unknown_arch_suggests_nearest_names():
    with pytest.raises(UnknownArchError, match="did you mean resnest50"):
        create_model("resnest5O")


@pytest.mark.parametrize("arch", list_models())
def test_param_counts_from_the_config_alone_equal_the_built_networks(arch):
    """`models` counts parameters without torch; every variant's count is the network's own."""
    import torch

    from resnest_deploy.models.resnest import ResNeSt

    with torch.device("meta"):
        model = ResNeSt(get_spec(arch).arch)
    assert get_spec(arch).arch.num_params() == sum(p.numel() for p in model.parameters())
