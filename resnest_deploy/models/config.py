"""What a network is and where its weights came from, as plain data: no torch needed to read them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelParts:
    """The names of a network's parts, as timm's ``_cfg(first_conv=..., classifier=...)`` keeps
    them: what the INT8 search calls a unit, what INT8 keeps in FP32 by default, where the outlier
    fixtures plant their channel. Module paths name the PyTorch side; the ONNX side is matched by
    node-name patterns (regexes), since ``torch.onnx`` names each node by its module scopes
    (``conv1.3``'s convolution is ``/conv1/conv1.3/Conv``)."""

    #: timm's ``first_conv`` and ``classifier``: module paths
    first_conv: str = "conv1.0"
    classifier: str = "fc"
    #: the deep stem: its norm after the first convolution, and the convolution that reads it
    stem_norm: str = "conv1.1"
    stem_next_conv: str = "conv1.3"
    #: ONNX nodes of the stem (three convolutions) and of the classifier
    stem_nodes: str = r"^/conv1/"
    classifier_nodes: str = r"^/fc/"
    #: ONNX nodes of a block's parts: groups (stage, block index, part, the rest of the name)
    block_nodes: str = r"^/(layer\d+)/\1\.(\d+)/(conv1|conv2|conv3|downsample)/(.*)$"
    #: the block part that is the split-attention convolution, with its attention gate inside
    split_attention: str = "conv2"
    #: ONNX nodes of the attention gate (fc1, fc2, the radix softmax) inside a split attention
    gate_nodes: tuple[str, ...] = (r"/conv2/fc[12]/", r"/rsoftmax/")
    #: ONNX nodes of the split attention's own arithmetic around its gate (the sum of the radix
    #: splits, its pooling, the weighting ``Mul`` and the weighted sum): ops of the module itself,
    #: one level below it, where its convolution, norm and gate are a level deeper
    attention_nodes: str = r"/conv2/[^/]+$"
    #: ONNX node of a block's residual ``Add`` (conv3 + shortcut, the block output): groups (stage,
    #: block index); its Q/DQ'd inputs (and output) are rounded by no convolution's unit
    residual_nodes: str = r"^/(layer\d+)/\1\.(\d+)/Add$"

    @property
    def keep_fp32_nodes(self) -> tuple[str, ...]:
        """What INT8 keeps in FP32 by default: the attention gates and the classifier."""
        return (*self.gate_nodes, self.classifier_nodes)

    @property
    def searched_keep_fp32_nodes(self) -> tuple[str, ...]:
        """What a searched INT8 conversion keeps in FP32 before it judges anything: the radix
        softmax alone. The gates and the classifier are units the search keeps in FP32 where the
        evaluation set says so, as NNCF's accuracy control reverts only what it must."""
        return tuple(p for p in self.gate_nodes if "softmax" in p)


#: every ResNeSt built here (official and timm names alike) names its parts the same way
RESNEST_PARTS = ModelParts()


@dataclass(frozen=True)
class ArchConfig:
    """Everything that shapes the network; a variant is just one of these."""

    layers: tuple[int, int, int, int]
    stem_width: int = 32
    radix: int = 2
    cardinality: int = 1
    base_width: int = 64
    avd_first: bool = False
    num_classes: int = 1000
    #: planes per stage (x4 out); narrower than ResNet's only for the small digits model
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    #: the names of its parts (first conv, classifier, split attention), read by INT8 and its search
    parts: ModelParts = RESNEST_PARTS

    def num_params(self) -> int:
        """Trainable parameters of the network this describes, counted from the config alone: the
        same sum as ``sum(p.numel() for p in ResNeSt(cfg).parameters())`` (a test holds them equal
        for every variant), without importing torch (``models`` lists 20 variants in a blink)."""

        def bn(c: int) -> int:
            return 2 * c  # weight and bias; running statistics are buffers

        sw = self.stem_width
        total = 27 * sw + bn(sw) + 9 * sw * sw + bn(sw) + 9 * sw * 2 * sw + bn(2 * sw)
        in_chs = 2 * sw
        for i, (planes, depth) in enumerate(zip(self.widths, self.layers, strict=True)):
            out_chs = planes * 4
            gw = int(planes * (self.base_width / 64.0)) * self.cardinality
            mid = gw * self.radix
            attn = max(gw * self.radix // 4, 32)
            for j in range(depth):
                if j == 0 and (i > 0 or in_chs != out_chs):
                    total += in_chs * out_chs + bn(out_chs)  # avg-down shortcut: 1x1 conv and BN
                total += in_chs * gw + bn(gw)  # conv1
                total += mid * (gw // (self.cardinality * self.radix)) * 9 + bn(mid)  # grouped 3x3
                total += attn * (gw // self.cardinality) + attn + bn(attn)  # fc1 (bias) and its BN
                total += mid * (attn // self.cardinality) + mid  # fc2 (bias)
                total += gw * out_chs + bn(out_chs)  # conv3
                in_chs = out_chs
        return total + in_chs * self.num_classes + self.num_classes


@dataclass(frozen=True)
class WeightsInfo:
    """Provenance recorded in every artifact's sidecar."""

    kind: str  # "random", "pretrained", "file" or "url"
    location: str | None = None  # URL or path the tensors came from
    sha256: str | None = None

    def describe(self) -> str:
        return self.kind if self.location is None else f"{self.kind}:{self.location}"
