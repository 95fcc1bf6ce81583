"""Split attention (ResNeSt's SplAtConv2d) written so that it exports to a clean graph.

The forward pass is the original arithmetic; only the tensor plumbing is chosen for export:
radix groups are taken with ``split`` (one ONNX ``Split``, no shape arithmetic) and every reshape
leaves the batch free as ``-1`` with constant channel counts, so a dynamic-batch export carries no
``Shape -> Gather -> Concat`` chains into the radix softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RadixSoftmax(nn.Module):
    """Softmax across the radix groups of each cardinal group; a sigmoid gate when radix is 1."""

    def __init__(self, radix: int, cardinality: int, channels: int) -> None:
        super().__init__()
        self.radix = radix
        self.cardinality = cardinality
        # Known at construction, so traced reshapes get constants instead of Shape/Gather ops.
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.radix == 1:
            return torch.sigmoid(x)
        if self.cardinality == 1:
            # (B, R*C) -> (B, R, C): no transpose needed, the layout is already radix-major.
            x = x.reshape(-1, self.radix, self.channels // self.radix)
            return F.softmax(x, dim=1).reshape(-1, self.channels, 1, 1)
        per_group = self.channels // (self.cardinality * self.radix)
        x = x.reshape(-1, self.cardinality, self.radix, per_group)
        x = F.softmax(x.transpose(1, 2), dim=1)
        return x.reshape(-1, self.channels, 1, 1)


class SplitAttn(nn.Module):
    """Split-attention convolution (Zhang et al. 2020, section 3): keys match both reference repos."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        radix: int = 2,
        reduction_factor: int = 4,
        min_attn_chs: int = 32,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if radix < 1:
            raise ValueError(f"radix must be >= 1, got {radix}")
        self.radix = radix
        self.out_chs = out_chs
        mid_chs = out_chs * radix
        attn_chs = max(in_chs * radix // reduction_factor, min_attn_chs)
        self.conv = nn.Conv2d(
            in_chs, mid_chs, kernel_size, stride, padding, dilation, groups=groups * radix, bias=False
        )
        self.bn0 = norm_layer(mid_chs)
        self.act0 = act_layer(inplace=True)
        self.fc1 = nn.Conv2d(out_chs, attn_chs, 1, groups=groups)
        self.bn1 = norm_layer(attn_chs)
        self.act1 = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(attn_chs, mid_chs, 1, groups=groups)
        self.rsoftmax = RadixSoftmax(radix, groups, mid_chs)

    def _radix_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.radix == 1:
            return x
        splits = torch.split(x, self.out_chs, dim=1)
        out = splits[0]
        for s in splits[1:]:
            out = out + s
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        gap = F.adaptive_avg_pool2d(self._radix_sum(x), 1)
        gap = self.act1(self.bn1(self.fc1(gap)))
        attn = self.rsoftmax(self.fc2(gap))
        # One multiply over all radix groups, then a single Split + Add: fewer nodes than
        # splitting the attention too, and the same sum as the reference.
        return self._radix_sum(x * attn)
