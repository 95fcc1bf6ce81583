"""Outlier fixtures: FP32 exports of the digits model that compute the same function but whose
activations have a few channels 16x-256x larger than the rest, generated with fixed seeds.

Real networks grow such channels; per-tensor INT8 activations then spend their range on them and
round every other channel to a few levels, and the weights that read them (scaled down to compensate)
lose their precision too. ``precision.fixtures`` plants one such channel in the stem through PyTorch;
this plants any number, at any depth, in the ONNX graph itself (numpy and onnx only): output channel
``c`` of a producer convolution (weights and bias, BN being folded into it) is multiplied by ``k`` and
input channel ``c`` of every convolution that reads it divided by ``k``. Between them are only ReLU
and per-channel pools, which commute with a positive scale, so the FP32 logits stay the same to
float rounding (about 5e-7 of their scale).

``scale`` is relative, so that it means the same at every depth: ``k`` is chosen per channel so that
the channel's peak (over 64 training digits) becomes ``scale`` times the largest peak of any other
channel of that tensor. Channels are drawn by the seed among the live ones (peak at least a twentieth
of the tensor's largest). On the digits model INT8's loss is steep in the scale: 16x-32x at one site
costs 0-0.9 points, 64x 1.5-8, 128x-256x up to 80; ``SPECS`` mixes sites and scales so that each
loses between 1.5 and 70 points (``docs/precision.md`` has the table).

Sites (``DIGITS_SITES``; one block per stage in ``resnest14d_digits``):

* ``stem.0``, ``stem.1``: the deep stem's first two convolutions, each read by the next one.
* ``stem.2``: the stem's last convolution, read (after ReLU and max pool) by the first block's
  ``conv1`` and its shortcut: both compensated.
* ``layerN.conv1``: a bottleneck's ``conv1``, the input of the split-attention (grouped) convolution.
* ``layerN.attn``: the split-attention convolution itself; channel ``c`` is scaled in every radix
  branch alike, compensated in ``fc1`` (after the radix sum and global pool: the attention is
  unchanged) and in ``conv3`` (after the attention-weighted sum and the avd pool).

* ``layerN.out``: the residual stream: channel ``c`` of the block's ``conv3`` and of its shortcut
  (they are added, then ReLU), compensated in the next stage's ``conv1`` and shortcut (after its
  average pool) or, after ``layer4``, in the classifier's column ``c`` (after the global pool).

Cross-layer equalization (``precision.equalize``) undoes every site but ``layer4.out`` exactly (a
pair, the stem's branches, the split attention with one scale shared by its radix branches, a
stage's residual stream with one scale shared by every convolution added into it): an outlier there
leaves a network equal to the equalized source. ``layer4.out`` is read by the classifier through a
flatten, which equalization leaves alone: the case for an FP32 fallback with equalization on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resnest_deploy import _deps


@dataclass(frozen=True)
class Site:
    """Output channels of ``producer`` and ``also`` (in each of their ``radix`` branches) scaled up, the
    same input channels of ``consumers`` (convolutions, or a ``Gemm`` classifier) scaled down; the
    outlier's size is measured on the output of node ``peak_at`` (default: ``producer``)."""

    producer: str
    consumers: tuple[str, ...]
    radix: int = 1
    also: tuple[str, ...] = ()
    peak_at: str | None = None


def _block(n: int) -> dict[str, Site]:
    p, nxt = f"/layer{n}/layer{n}.0", f"/layer{n + 1}/layer{n + 1}.0"
    readers = (f"{nxt}/conv1/Conv", f"{nxt}/downsample/downsample.1/Conv") if n < 4 else ("/fc/Gemm",)
    return {
        f"layer{n}.conv1": Site(f"{p}/conv1/Conv", (f"{p}/conv2/conv/Conv",)),
        f"layer{n}.attn": Site(f"{p}/conv2/conv/Conv", (f"{p}/conv2/fc1/Conv", f"{p}/conv3/Conv"), radix=2),
        f"layer{n}.out": Site(
            f"{p}/conv3/Conv", readers, also=(f"{p}/downsample/downsample.1/Conv",), peak_at=f"{p}/Add"
        ),
    }


DIGITS_SITES: dict[str, Site] = {
    "stem.0": Site("/conv1/conv1.0/Conv", ("/conv1/conv1.3/Conv",)),
    "stem.1": Site("/conv1/conv1.3/Conv", ("/conv1/conv1.6/Conv",)),
    "stem.2": Site(
        "/conv1/conv1.6/Conv",
        ("/layer1/layer1.0/conv1/Conv", "/layer1/layer1.0/downsample/downsample.1/Conv"),
    ),
    **{k: v for n in range(1, 5) for k, v in _block(n).items()},
}


@dataclass(frozen=True)
class OutlierSpec:
    """A named fixture: where, how large, how many channels per site, and the seed that picks them."""

    name: str
    sites: tuple[str, ...]
    scale: float
    seed: int
    channels: int = 2


#: the fixtures tests and ``benchmarks/int8_search.py`` use: stem, blocks, split-attention inputs and
#: outputs, the residual stream; 32x-256x, one to four channels per site. Equalization undoes every
#: one exactly, the last two through their residual streams (``docs/precision.md`` has the measured
#: drops); ``layer4.out``, which it cannot reach, is a site here but in no spec
SPECS: tuple[OutlierSpec, ...] = (
    OutlierSpec("stem-64x", ("stem.0",), 64.0, seed=0),
    OutlierSpec("stem-deep-48x", ("stem.0", "stem.1"), 48.0, seed=1),
    OutlierSpec("block1-256x", ("layer1.conv1",), 256.0, seed=2, channels=3),
    OutlierSpec("blocks-128x", ("layer2.conv1", "layer3.conv1"), 128.0, seed=3, channels=3),
    OutlierSpec(
        "everywhere-32x", ("stem.1", *(f"layer{n}.conv1" for n in range(1, 5))), 32.0, seed=4, channels=3
    ),
    OutlierSpec("deep-256x", ("layer3.conv1", "layer4.conv1"), 256.0, seed=5, channels=4),
    OutlierSpec("stem-out-96x", ("stem.2",), 96.0, seed=6),
    OutlierSpec("attention-64x", ("layer1.attn", "layer2.attn"), 64.0, seed=7),
    OutlierSpec("residual1-32x", ("layer1.out",), 32.0, seed=8),
    OutlierSpec("residuals-32x", ("layer2.out", "layer3.out"), 32.0, seed=10),
)


@dataclass
class Planted:
    """What a fixture changed: per site, the producer channels scaled and by how much."""

    scale: float
    seed: int
    factors: dict[str, dict[int, float]] = field(default_factory=dict)

    def __str__(self) -> str:
        where = "; ".join(
            f"{site} channel(s) {', '.join(map(str, chs))}" for site, chs in self.factors.items()
        )
        return f"activation outliers at {self.scale:g}x the largest other channel (seed {self.seed}): {where}"


def _scale_inputs(w: np.ndarray, group: int, c: int, factor: float) -> None:
    """Multiply what input channel ``c`` contributes to a (grouped) convolution by ``factor``."""
    per_out = w.shape[0] // group
    g = c // w.shape[1]
    w[g * per_out : (g + 1) * per_out, c % w.shape[1]] *= factor


def digits_probe(count: int = 64) -> np.ndarray:
    """The first ``count`` training digits, preprocessed as the digits model was evaluated."""
    from resnest_deploy import data
    from resnest_deploy.models import get_spec

    images, _ = data.digits("train")
    transform = data.Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)
    return data.digits_batch(images[:count], transform)


def channel_max(model: Any, tensors: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The largest positive value of each channel of ``tensors`` over the inputs ``x`` (ONNX Runtime)."""
    onnx, ort = _deps.require("onnx"), _deps.require("onnxruntime")
    probe = copy.deepcopy(model)
    for t in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(tensors, {sess.get_inputs()[0].name: x})
    return {t: np.maximum(o, 0).max(axis=(0, 2, 3)) for t, o in zip(tensors, outs, strict=True)}


def _pick(peaks: np.ndarray, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` seeded channels among the live ones (peak at least a twentieth of the largest)."""
    live = np.flatnonzero(peaks >= peaks.max() / 20)
    return sorted(int(c) for c in rng.choice(live, size=min(count, len(live)), replace=False))


def outlier_fixture(
    model: Any,
    seed: int,
    sites: Any,
    scale: float,
    channels: int = 2,
    probe: np.ndarray | None = None,
    known: dict[str, Site] | None = None,
) -> tuple[Any, Planted]:
    """A copy of the digits export ``model`` (``onnx.ModelProto``) in which ``channels`` seeded channels
    at each of ``sites`` (names in ``known``, default ``DIGITS_SITES``) peak at ``scale`` times the
    largest other channel of their tensor (peaks measured on ``probe``, default ``digits_probe()``)."""
    numpy_helper = _deps.require("onnx.numpy_helper")
    known = DIGITS_SITES if known is None else known
    if not scale > 1:
        raise ValueError(f"an outlier scale must be above 1 (16 to 256 is typical), got {scale}")
    unknown = [s for s in sites if s not in known]
    if unknown:
        raise ValueError(f"unknown outlier site(s) {', '.join(unknown)}; known: {', '.join(known)}")
    nodes = {n.name: n for n in model.graph.node}
    named = [n for s in sites for n in (known[s].producer, *known[s].also, *known[s].consumers)]
    missing = [n for n in named if n not in nodes]
    if missing:
        raise ValueError(f"the model has no node {missing[0]}; these outlier sites are for resnest14d_digits")
    tensors = [nodes[known[s].peak_at or known[s].producer].output[0] for s in sites]
    peaks = channel_max(model, tensors, digits_probe() if probe is None else probe)
    model = copy.deepcopy(model)
    nodes = {n.name: n for n in model.graph.node}
    init = {t.name: t for t in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def weights(node_name: str, index: int) -> np.ndarray:
        name = nodes[node_name].input[index]
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(init[name]).astype(np.float64)
        return arrays[name]

    rng = np.random.default_rng(seed)
    planted = Planted(scale, seed)
    for site_name in sites:
        site = known[site_name]
        peak = peaks[nodes[site.peak_at or site.producer].output[0]].reshape(site.radix, -1).max(axis=0)
        chosen = _pick(peak, channels, rng)
        others = np.delete(peak, chosen).max() if len(chosen) < len(peak) else peak.max()
        planted.factors[site_name] = {c: float(scale * others / peak[c]) for c in chosen}
        for c, k in planted.factors[site_name].items():
            _plant(site, c, k, weights, nodes)
    for name, array in arrays.items():
        init[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    return model, planted


def _plant(site: Site, c: int, k: float, weights: Any, nodes: dict[str, Any]) -> None:
    for producer in (site.producer, *site.also):
        w1 = weights(producer, 1)
        width = w1.shape[0] // site.radix
        for branch in range(site.radix):  # the same channel of every radix branch: one shared scale
            w1[branch * width + c] *= k
            if len(nodes[producer].input) > 2:
                weights(producer, 2)[branch * width + c] *= k
    for consumer in site.consumers:
        node = nodes[consumer]
        attrs = {a.name: int(a.i) for a in node.attribute if a.name in ("group", "transB")}
        if node.op_type == "Gemm":  # the classifier: feature c is column c of B (row c untransposed)
            w = weights(consumer, 1)
            if attrs.get("transB", 0):
                w[:, c] /= k
            else:
                w[c] /= k
        else:
            _scale_inputs(weights(consumer, 1), attrs.get("group", 1), c, 1 / k)


def from_spec(model: Any, spec: OutlierSpec, probe: np.ndarray | None = None) -> tuple[Any, Planted]:
    return outlier_fixture(model, spec.seed, spec.sites, spec.scale, spec.channels, probe)
