"""Residual streams, the one place in ResNeSt where equalization needs more than one producer.

A stage's blocks end in ``Relu(Add(conv3, shortcut))``; the shortcut is the stage's first block's
downsample convolution or, in the blocks after it, the previous block's output itself (an identity).
Divide output channel ``c`` of every convolution added into the stream (each block's ``conv3`` and
the downsample) by ``s_c``: the first block's sum is divided by ``s_c``, its ReLU output too
(``relu(x / s) == relu(x) / s``), so the identity shortcut hands the next block's sum a stream
already divided, whose ``conv3`` is divided alike, and so on to the stage's end. Every convolution
reading any block output (the next block's ``conv1``, the next stage's ``conv1`` and downsample,
through its average pool) multiplies input channel ``c`` by ``s_c``: the function is unchanged. Scaling
one producer alone would not be exact: the sum would mix a scaled and an unscaled term.

A stream is left alone, with a sentence saying why, when a sum adds anything but such convolutions
and the stream before it, or a block output goes anywhere but to convolutions (through per-channel
pools) and the next block's sum: the last stage's output (global pool, flatten, classifier) is one.
So is a stream whose convolutions differ in rank (a broadcast sum adds channels to rows) or whose
readers' weights are not their own (shared weights would be scaled twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resnest_deploy.precision.equalize_graph import Graph, Group, block_sum, conv_groups, reach


@dataclass
class Stream(Group):
    """Group's readers, with ``producers`` in place of its one ``first`` (here: the stream's first
    sum, which names it in reports)."""

    producers: list[Any] = field(default_factory=list)
    sums: list[Any] = field(default_factory=list)

    def ranges(self, g: Graph) -> tuple[np.ndarray, np.ndarray]:
        weights = [g.arrays[p.input[1]] for p in self.producers]
        r1 = np.max([np.abs(w).reshape(len(w), -1).max(axis=1) for w in weights], axis=0)
        return r1, self.reader_ranges(g, r1)

    def scale(self, g: Graph, s: np.ndarray) -> None:
        for p in self.producers:
            w = g.arrays[p.input[1]]
            g.arrays[p.input[1]] = w / s.reshape(-1, *([1] * (w.ndim - 1)))
            if len(p.input) > 2:
                g.arrays[p.input[2]] = g.arrays[p.input[2]] / s
        self.scale_readers(g, s)


def stream_of(g: Graph, add: Any) -> Stream | str | None:
    """The residual stream the block sum ``add`` is part of, or why it cannot be scaled (``None``:
    ``add`` is no block's sum)."""
    if not block_sum(g, add):
        return None
    sums: list[Any] = []
    producers: list[Any] = []
    readers: list[Any] = []
    todo = [add]
    while todo:
        a = todo.pop()
        if any(a is s for s in sums):
            continue
        sums.append(a)
        for t in a.input:
            node = g.producer.get(t)
            if node is not None and node.op_type == "Conv" and g.only_consumer(t) is a:
                if not g.own_weights(node):
                    return f"{node.name}'s weights are not initializers of its own"
                producers.append(node)
            elif node is not None and node.op_type == "Relu" and block_sum(g, g.producer.get(node.input[0])):
                todo.append(g.producer[node.input[0]])  # the identity shortcut: the stream before
            else:
                return f"{a.name} adds {t}, neither a convolution of its own nor the stream before it"
        shortcuts: list[Any] = []  # the next blocks' sums, reading this output as their identity
        found = reach(g, g.consumers[a.output[0]][0].output[0], sums=shortcuts)
        if isinstance(found, str):
            return found
        readers += [c for c in found if not any(c is r for r in readers)]
        todo += shortcuts
    shared = [r.name for r in readers if not g.own_weights(r)]
    if shared:
        return f"{shared[0]}'s weights are not initializers of its own"
    widths = {len(g.arrays[p.input[1]]) for p in producers}
    if len(widths) != 1:
        return f"its convolutions make {sorted(widths)} channels, not one count"
    if len({g.arrays[p.input[1]].ndim for p in producers}) != 1:  # broadcast: channels meet other axes
        return "its convolutions differ in rank, so their sum does not add channel to channel"
    width = widths.pop()
    wrong = [r.name for r in readers if g.arrays[r.input[1]].shape[1] * conv_groups(r) != width]
    if wrong or not readers:
        return f"{wrong[0]} does not read its channels one to one" if wrong else "nothing reads it"
    order = {id(n): i for i, n in enumerate(g.model.graph.node)}
    for found_nodes in (sums, producers, readers):  # graph order: the same report for the same file
        found_nodes.sort(key=lambda n: order[id(n)])
    return Stream(sums[0], readers, 1, "residual stream", producers, sums)
