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

Where it is exact in ResNeSt (checked on the graph node by node in ``equalize_graph``; any other
shape is skipped with a sentence saying why):

* ``Conv -> Relu -> Conv`` (a *pair*), also through ``MaxPool`` / ``AveragePool`` /
  ``GlobalAveragePool``: they act on each channel alone and commute with a positive per-channel scale
  (a max, and an average with zero padding, are positively homogeneous). In ResNeSt: the deep stem's
  first two convolutions, each bottleneck's ``conv1`` into the split-attention convolution, and the
  attention's ``fc1`` into ``fc2``.
* *Branches*: when the activation goes (through such pools) only to convolutions, every one of them
  takes the same ``s_c`` on its input channel ``c`` and ``r2_c`` is the largest of their ranges. In
  ResNeSt: the stem's last convolution, read after ReLU and max pool by the first block's ``conv1``
  and its shortcut. Anything else reading it (an ``Add``, a graph output) and it is skipped.
* Grouped readers (the split-attention conv has ``groups = cardinality * radix``): input channel
  ``c`` is read only by the output channels of its group ``c // (C_in / groups)``, from weight column
  ``c % (C_in / groups)``; scaling that column of that group's rows is exact.
* *Split attention*: the split-attention convolution's ReLU output goes to a ``Split`` into radix
  branches summed by ``Add`` (-> global pool -> ``fc1`` -> softmax across radix) and to the ``Mul`` by
  that attention (-> ``Split`` -> ``Add`` -> avd pool -> ``conv3``). Scaling branch ``r`` of channel
  ``c`` by its own ``s_rc`` changes the radix sum's mix and so the softmax: not exact. With one ``s_c``
  shared by every radix branch of channel ``c`` the radix sum is divided by ``s_c``, ``fc1``'s input
  channel ``c`` multiplied by it gives the same attention, the weighted sum is divided by ``s_c``, and
  ``conv3``'s input channel ``c`` multiplied by it restores it: exact, and done that way (``r1_c`` is
  the largest over the branches). With radix 1 the attention is a sigmoid gate read by one ``Mul``:
  the same argument without the sums. The gate ``fc1 -> ReLU -> fc2`` is a plain pair; ``fc2``'s
  output goes to the softmax, so nothing past it is touched. Measured exact on every registered
  layout (radix 1, 2, 4; cardinality 1, 2, 4).
* *Residual streams* (``equalize_stream``): ``conv3`` and the shortcut meet at an ``Add``, so one
  of them alone cannot be scaled; every convolution added into a stage's stream (each block's
  ``conv3``, the stage's shortcut) takes the same ``s_c``, identity shortcuts carry it from block to
  block, and every convolution reading a block output (later blocks' ``conv1``, the next stage's
  ``conv1`` and shortcut) multiplies it back: exact. The last stage's stream goes through a flatten
  to the classifier and is left alone.
* Not done: any convolution whose output goes anywhere before its ReLU, or whose weights another
  node shares.

Equalizing changes nothing in FP32 beyond rounding: the digits model's logits move by 6e-7 of their
scale (``write_equalized`` measures it on every file it writes and refuses above ``REL_TOL``).
"""

from __future__ import annotations

import collections
import copy
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnest_deploy import _deps, metadata
from resnest_deploy._io import artifact_pair, prepare_outputs, sha256_file
from resnest_deploy.errors import ArtifactError, EqualizeError
from resnest_deploy.onnx_files import external_tensors, load_onnx
from resnest_deploy.precision.equalize_graph import Graph, Group, fold_batch_norms, group_of
from resnest_deploy.precision.equalize_stream import Stream, stream_of

#: largest change of the logits, relative to their largest magnitude, a written file may show
REL_TOL = 1e-5
ROUNDS = 200  # passes over the groups at most: chained groups (the stem into the blocks) converge slowly
CONVERGED = 1e-5  # a pass that moves no scale by more than this (relative) ends the balancing
_EPS = 1e-12


@dataclass(frozen=True)
class EqualizedPair:
    """``first``'s output channels against the input channels of every convolution reading them."""

    first: str
    seconds: tuple[str, ...]
    kind: str  # "pair", "branches" (several readers, through pools) or "split attention"
    channels: int
    #: worst channel's max(r1, r2) / min(r1, r2) of the per-channel weight ranges, before and after
    imbalance_before: float
    imbalance_after: float
    #: a residual stream's convolutions (``first`` is then its first block sum); else empty
    producers: tuple[str, ...] = ()


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
        kinds = collections.Counter(p.kind for p in self.equalized)
        detail = ", ".join(counted_kind(n, kind) for kind, n in kinds.items())
        ratio = f"{self.imbalance_before:.3g} -> {self.imbalance_after:.3g}"
        return (
            f"equalized {len(self.equalized)} convolution group(s) ({detail or 'none'}), "
            f"skipped {len(self.skipped)}; worst range ratio {ratio}"
        )


#: a group's kind counted, one and several: "1 pair", "2 with branches", "4 split attentions"
_KIND_WORDS = {
    "pair": ("pair", "pairs"),
    "branches": ("with branches", "with branches"),
    "split attention": ("split attention", "split attentions"),
    "residual stream": ("residual stream", "residual streams"),
}


def counted_kind(n: int, kind: str) -> str:
    """``n`` groups of ``kind`` in words (``1 pair``, ``2 with branches``)."""
    one, several = _KIND_WORDS.get(kind, (kind, kind))
    return f"{n} {one if n == 1 else several}"


def _imbalance(r1: np.ndarray, r2: np.ndarray) -> float:
    live = (r1 > _EPS) & (r2 > _EPS)
    if not live.any():
        return 1.0
    return float(np.max(np.maximum(r1[live], r2[live]) / np.minimum(r1[live], r2[live])))


def _groups(g: Graph, report: EqualizeReport) -> list[Group]:
    found: list[Group] = []
    in_stream: set[int] = set()  # a stream is found from its first sum; its others are in it
    for node in g.model.graph.node:
        if node.op_type == "Conv":
            group: Group | str | None = group_of(g, node)
        elif node.op_type == "Add" and id(node) not in in_stream:
            group = stream_of(g, node)
            in_stream |= {id(a) for a in group.sums} if isinstance(group, Stream) else set()
        else:
            continue
        if isinstance(group, str):
            report.skipped.append(SkippedPair(node.name, group))
        elif group is not None:
            found.append(group)
    return found


def equalize(model: Any) -> tuple[Any, EqualizeReport]:
    """The equalized copy of an FP32 ``onnx.ModelProto`` (weights in the file, not external) and what
    was done; ``model`` itself is left as it was."""
    model = copy.deepcopy(model)
    report = EqualizeReport(folded_batch_norms=fold_batch_norms(model))
    g = Graph(model)
    pairs = _groups(g, report)
    before = [_imbalance(*p.ranges(g)) for p in pairs]
    for report.rounds in range(1, ROUNDS + 1):
        moved = 0.0
        for p in pairs:
            r1, r2 = p.ranges(g)
            s = np.where((r1 > _EPS) & (r2 > _EPS), np.sqrt(r1 / np.maximum(r2, _EPS)), 1.0)
            p.scale(g, s)
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
        if moved < CONVERGED:
            break
    for p, b in zip(pairs, before, strict=True):
        r1, r2 = p.ranges(g)
        seconds = tuple(n.name for n in p.seconds)
        made = tuple(n.name for n in p.producers) if isinstance(p, Stream) else ()
        report.equalized.append(
            EqualizedPair(p.first.name, seconds, p.kind, len(r1), b, _imbalance(r1, r2), made)
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
    """Largest change of any output of model ``b`` against model ``a`` on seeded inputs, each
    relative to the largest magnitude of ``a``'s (ONNX Runtime, CPU): every output, so a rescaling
    that reaches a second output is not missed."""
    ort = _deps.require("onnxruntime")
    feeds = _probe(a)
    out = []
    for m in (a, b):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        out.append([np.asarray(o, np.float64) for o in sess.run(None, feeds)])
    return max(
        float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(x))), _EPS)) if x.size else 0.0
        for x, y in zip(*out, strict=True)
    )


def write_equalized(src: str | os.PathLike[str], output: str | os.PathLike[str]) -> EqualizeReport:
    """Write the equalized FP32 file of the export ``src`` to ``output`` (and its sidecar), after
    checking in ONNX Runtime that its logits are those of ``src`` within ``REL_TOL``."""
    from resnest_deploy.precision.source import read_source

    onnx = _deps.require("onnx")
    src, output = Path(src), Path(output)
    prepare_outputs([output], [src])
    meta = read_source(src)  # an FP32 resnest-deploy export, or one line saying why not
    if isinstance(meta.get("equalization"), dict):
        raise ArtifactError(
            f"{src} is already equalized (its metadata records it); equalizing again balances nothing: "
            "use it as it is, or equalize the export it was made from"
        )
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
