"""Cross-layer equalization of an FP32 ONNX export (Nagel et al., ICCV 2019, section 4.1).

For two convolutions joined by ReLU, ``relu(x / s) == relu(x) / s`` for any ``s > 0``; so output
channel ``c`` of the first convolution (weights and bias) can be divided by ``s_c`` and input channel
``c`` of the second multiplied by it without changing the function. With ``r1_c`` and ``r2_c`` the
channel's largest absolute weight in each, ``s_c = sqrt(r1_c / r2_c)`` leaves both at
``sqrt(r1_c * r2_c)``: a channel whose activations are far larger than the rest (an outlier) is brought
back to the others' scale, so per-tensor INT8 activations stop spending their range on it. Chains
(stem conv -> conv -> conv) are balanced by repeating the pass until the scales stop moving.

Batch norms are folded into the convolutions first; ``export_onnx`` already folds them (the
onnxscript optimizer), ``fold_batch_norms`` does it for graphs that still carry them.

Where it is exact in ResNeSt (checked on the graph, node by node; anything else is skipped with why):

* A pair ``Conv -> Relu -> [MaxPool | AveragePool | GlobalAveragePool]* -> Conv`` where every tensor
  between them has exactly one consumer and is no graph output: the pools act on each channel alone
  and commute with a positive per-channel scale (max, and averages with zero padding, are positively
  homogeneous). Pairs in ResNeSt: the deep stem's first two convolutions, each bottleneck's ``conv1``
  into the split-attention convolution, and the attention's ``fc1`` into ``fc2``.
* Grouped second convolutions (the split-attention conv has ``groups = cardinality * radix``): input
  channel ``c`` is read only by the output channels of its group ``c // (C_in / groups)``, from weight
  column ``c % (C_in / groups)``; scaling that column of that group's rows is exact.
* Not done: the split-attention conv's own output. Its ReLU output goes to a ``Split`` (radix sum ->
  global pool -> ``fc1`` -> softmax over radix) and to the ``Mul`` by that attention. Rescaling
  branch ``r`` of channel ``c`` by its own ``s_rc`` changes the radix sum's mix and so the softmax:
  not exact. It would be exact only with one scale per channel shared by every radix branch and
  compensated both in ``fc1`` and in ``conv3`` (after the weighted sum and the avd pool). That is a
  one-to-two rescaling, not a pair; it is skipped and reported as such.
* Not done: a first convolution whose output (or its ReLU's) goes anywhere else (the stem's last
  convolution feeds the first block's ``conv1`` and its shortcut), or whose weights another node shares;
  ``conv3`` and the shortcut convolutions, which meet at an ``Add`` (the residual sum is not per branch).

Equalizing changes nothing in FP32 beyond rounding: the digits model's logits move by about 1e-7 of
their scale (measured by ``write_equalized`` on every file it writes, refused above ``REL_TOL``). The module runs a
little past 350 lines because the exactness notes above belong next to the code they justify.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import _deps, metadata
from resnest_deploy._io import artifact_pair, external_tensors, load_onnx, prepare_outputs, sha256_file
from resnest_deploy.errors import ArtifactError, ResnestDeployError

#: ops between the ReLU and the second convolution that act on each channel alone, positively homogeneous
PASS_THROUGH = ("MaxPool", "AveragePool", "GlobalAveragePool")
#: largest change of the logits, relative to their largest magnitude, a written file may show
REL_TOL = 1e-5
ROUNDS = 20  # passes over the pairs at most (a chain converges in a few)
_EPS = 1e-12


class EqualizeError(ResnestDeployError):
    """The equalized graph does not compute what its source computes."""


@dataclass(frozen=True)
class EqualizedPair:
    first: str
    second: str
    channels: int
    #: worst channel's max(r1, r2) / min(r1, r2) of the per-channel weight ranges, before and after
    imbalance_before: float
    imbalance_after: float


@dataclass(frozen=True)
class SkippedPair:
    first: str
    reason: str


@dataclass
class EqualizeReport:
    equalized: list[EqualizedPair] = field(default_factory=list)
    skipped: list[SkippedPair] = field(default_factory=list)
    folded_batch_norms: int = 0
    rounds: int = 0

    @property
    def imbalance_before(self) -> float:
        return max((p.imbalance_before for p in self.equalized), default=1.0)

    @property
    def imbalance_after(self) -> float:
        return max((p.imbalance_after for p in self.equalized), default=1.0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "imbalance_before": self.imbalance_before,
            "imbalance_after": self.imbalance_after,
        }

    def __str__(self) -> str:
        return (
            f"equalized {len(self.equalized)} convolution pair(s), skipped {len(self.skipped)}; "
            f"worst range ratio {self.imbalance_before:.3g} -> {self.imbalance_after:.3g}"
        )


class _Graph:
    """Who produces and who reads each tensor, and the initializers as float64 arrays."""

    def __init__(self, model: Any) -> None:
        numpy_helper = _deps.require("onnx.numpy_helper")
        g = model.graph
        self.model = model
        self.outputs = {o.name for o in g.output}
        self.consumers: dict[str, list[Any]] = {}
        self.uses: dict[str, int] = {}
        for node in g.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
                self.uses[name] = self.uses.get(name, 0) + 1
        self.init = {t.name: t for t in g.initializer}
        self.arrays = {n: numpy_helper.to_array(t).astype(np.float64) for n, t in self.init.items()}

    def only_consumer(self, tensor: str) -> Any | None:
        readers = self.consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in self.outputs else None

    def own_weights(self, node: Any) -> bool:
        """Weights (and bias) are initializers read by this node only."""
        return all(n in self.init and self.uses.get(n) == 1 for n in node.input[1:3])

    def store(self) -> None:
        numpy_helper = _deps.require("onnx.numpy_helper")
        for name, tensor in self.init.items():
            if tensor.data_type == 1:  # FLOAT: write back what a pass changed
                tensor.CopyFrom(numpy_helper.from_array(self.arrays[name].astype(np.float32), name))


def _group(node: Any) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def fold_batch_norms(model: Any) -> int:
    """Fold every ``Conv -> BatchNormalization`` (inference form) whose convolution feeds nothing else
    into the convolution, in place; return how many were folded."""
    g = _Graph(model)
    producer = {out: n for n in model.graph.node for out in n.output}
    folded: list[Any] = []
    for bn in list(model.graph.node):
        conv = producer.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or len(bn.output) != 1:
            continue
        if id(g.only_consumer(conv.output[0])) != id(bn) or not g.own_weights(conv):
            continue
        if all(name in g.arrays for name in list(bn.input)[1:5]):
            _fold(g, conv, bn)
            folded.append(bn)
    for done in folded:
        model.graph.node.remove(done)
    g.store()
    return len(folded)


def _fold(g: _Graph, conv: Any, bn: Any) -> None:
    numpy_helper = _deps.require("onnx.numpy_helper")
    gamma, beta, mean, var = (g.arrays[n] for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    k = gamma / np.sqrt(var + eps)
    w = g.arrays[conv.input[1]]
    bias = g.arrays[conv.input[2]] if len(conv.input) > 2 else np.zeros(w.shape[0])
    g.arrays[conv.input[1]] = w * k.reshape(-1, *([1] * (w.ndim - 1)))
    if len(conv.input) == 2:  # a bias of its own, to hold the batch norm's shift
        name = f"{conv.name or conv.output[0]}.folded_bias"
        g.model.graph.initializer.append(numpy_helper.from_array(np.zeros(w.shape[0], np.float32), name))
        g.init[name] = g.model.graph.initializer[-1]
        conv.input.append(name)
    g.arrays[conv.input[2]] = (bias - mean) * k + beta
    conv.output[0] = bn.output[0]


@dataclass
class _Pair:
    first: Any
    second: Any

    def ranges(self, g: _Graph) -> tuple[np.ndarray, np.ndarray]:
        w1, w2 = g.arrays[self.first.input[1]], g.arrays[self.second.input[1]]
        r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
        r2 = np.zeros_like(r1)
        for c in range(len(r1)):
            r2[c] = np.abs(w2[self._rows(w2, c), c % w2.shape[1]]).max()
        return r1, r2

    def _rows(self, w2: np.ndarray, c: int) -> slice:
        """The output channels of the second conv that read its input channel ``c`` (its group's)."""
        per_out = w2.shape[0] // _group(self.second)
        group = c // w2.shape[1]
        return slice(group * per_out, (group + 1) * per_out)

    def scale(self, g: _Graph, s: np.ndarray) -> None:
        """Divide the first conv's output channels by ``s``, multiply the second's inputs by it."""
        w1 = g.arrays[self.first.input[1]]
        g.arrays[self.first.input[1]] = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
        if len(self.first.input) > 2:
            g.arrays[self.first.input[2]] = g.arrays[self.first.input[2]] / s
        w2 = g.arrays[self.second.input[1]].copy()
        for c, sc in enumerate(s):
            w2[self._rows(w2, c), c % w2.shape[1]] *= sc
        g.arrays[self.second.input[1]] = w2


def _imbalance(r1: np.ndarray, r2: np.ndarray) -> float:
    live = (r1 > _EPS) & (r2 > _EPS)
    if not live.any():
        return 1.0
    return float(np.max(np.maximum(r1[live], r2[live]) / np.minimum(r1[live], r2[live])))


def _follow(g: _Graph, conv: Any) -> Any:
    """The second convolution of ``conv``'s pair, or a sentence saying why there is none (``None``
    when ``conv`` is not followed by a ReLU: no pair to speak of)."""
    out = conv.output[0]
    readers = g.consumers.get(out, [])
    if not any(r.op_type == "Relu" for r in readers):
        return None
    if g.only_consumer(out) is None:
        return f"its output also goes to {_names(readers, out, g)}"
    if not g.own_weights(conv):
        return "its weights are not initializers of its own"
    tensor = readers[0].output[0]
    while True:
        nxt = g.only_consumer(tensor)
        if nxt is None:
            ops = {r.op_type for r in g.consumers.get(tensor, [])}
            if {"Split", "Mul"} <= ops:
                return (
                    "it feeds split attention (radix sum and attention multiply): exact only with one "
                    "scale shared by all radix branches, compensated in fc1 and conv3; not a pair"
                )
            return f"its activation goes to {_names(g.consumers.get(tensor, []), tensor, g)}"
        if nxt.op_type == "Conv" and nxt.input[0] == tensor:
            return nxt if g.own_weights(nxt) else f"{nxt.name}'s weights are not initializers of its own"
        if nxt.op_type not in PASS_THROUGH:
            return f"its activation goes through {nxt.op_type} {nxt.name}, which is not per channel"
        tensor = nxt.output[0]


def _names(readers: list[Any], tensor: str, g: _Graph) -> str:
    names = [r.name or r.op_type for r in readers] + (["the graph output"] if tensor in g.outputs else [])
    return ", ".join(names)


def _pairs(g: _Graph, report: EqualizeReport) -> Iterator[_Pair]:
    for node in g.model.graph.node:
        if node.op_type != "Conv":
            continue
        found = _follow(g, node)
        if isinstance(found, str):
            report.skipped.append(SkippedPair(node.name, found))
        elif found is not None:
            w1, w2 = g.arrays[node.input[1]], g.arrays[found.input[1]]
            if w1.shape[0] != w2.shape[1] * _group(found):
                report.skipped.append(SkippedPair(node.name, f"channel counts differ from {found.name}'s"))
            else:
                yield _Pair(node, found)


def equalize(model: Any) -> tuple[Any, EqualizeReport]:
    """The equalized copy of an FP32 ``onnx.ModelProto`` (weights in the file, not external) and what
    was done; ``model`` itself is left as it was."""
    model = copy.deepcopy(model)
    report = EqualizeReport(folded_batch_norms=fold_batch_norms(model))
    g = _Graph(model)
    pairs = list(_pairs(g, report))
    before = [_imbalance(*p.ranges(g)) for p in pairs]
    for report.rounds in range(1, ROUNDS + 1):
        moved = 0.0
        for p in pairs:
            r1, r2 = p.ranges(g)
            s = np.where((r1 > _EPS) & (r2 > _EPS), np.sqrt(r1 / np.maximum(r2, _EPS)), 1.0)
            p.scale(g, s)
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
        if moved < 1e-6:
            break
    for p, b in zip(pairs, before, strict=True):
        report.equalized.append(
            EqualizedPair(p.first.name, p.second.name, len(p.ranges(g)[0]), b, _imbalance(*p.ranges(g)))
        )
    g.store()
    return model, report


def _probe(model: Any, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs of the model's own type and shape (free dimensions: ``batch``)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    init = {t.name for t in model.graph.initializer}
    for inp in (i for i in model.graph.input if i.name not in init):
        t = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim]
        if t.elem_type == 2:  # UINT8: frames
            feeds[inp.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def relative_change(a: Any, b: Any) -> float:
    """Largest change of the first output of model ``b`` against model ``a`` on seeded inputs,
    relative to the largest magnitude of ``a``'s (ONNX Runtime, CPU)."""
    ort = _deps.require("onnxruntime")
    feeds = _probe(a)
    out = []
    for m in (a, b):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        out.append(np.asarray(sess.run(None, feeds)[0], np.float64))
    return float(np.max(np.abs(out[0] - out[1])) / max(float(np.max(np.abs(out[0]))), _EPS))


def write_equalized(src: str | os.PathLike[str], output: str | os.PathLike[str]) -> EqualizeReport:
    """Write the equalized FP32 file of the export ``src`` to ``output`` (and its sidecar), after
    checking in ONNX Runtime that its logits are those of ``src`` within ``REL_TOL``."""
    from resnest_deploy.precision.source import read_source

    onnx = _deps.require("onnx")
    src, output = Path(src), Path(output)
    prepare_outputs([output], [src])
    meta = read_source(src)  # an FP32 resnest-deploy export, or one line saying why not
    started = time.perf_counter()
    model = load_onnx(src)
    if any(True for _ in external_tensors(model)):
        onnx.external_data_helper.load_external_data_for_model(model, str(src.resolve().parent))
    equalized, report = equalize(model)
    if not report.equalized:
        raise ArtifactError(f"{src} has no convolution pair that can be equalized exactly; nothing to write")
    change = relative_change(model, equalized)
    if not change <= REL_TOL:
        raise EqualizeError(
            f"the equalized graph changes the logits by {change:.2g} of their scale (bar {REL_TOL:g}); "
            "nothing was written: report this model"
        )
    out_meta = {
        **meta,
        "source": {"file": src.name, "sha256": sha256_file(src)},
        "equalization": report.as_dict() | {"relative_change": change},
        "created": metadata.now(),
        "tools": metadata.tool_versions(),
    }
    out_meta["equalization"]["seconds"] = round(time.perf_counter() - started, 3)
    metadata.embed(equalized, out_meta)
    with artifact_pair(output) as pair:
        onnx.save(equalized, pair.tmp)
        out_meta |= metadata.file_and_graph(pair.tmp, output.name, equalized)
        pair.write_sidecar(out_meta)
    return report
