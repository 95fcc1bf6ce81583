"""ResNeSt trunk: deep stem, bottlenecks with split attention, avg-down shortcuts.

One builder serves the official repo (zhanghang1989/ResNeSt) and timm's ports; module names and
registration order follow both, so their checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnest_deploy.models.config import ArchConfig
from resnest_deploy.models.layers import SplitAttn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        radix: int = 2,
        cardinality: int = 1,
        base_width: int = 64,
        avd_first: bool = False,
    ) -> None:
        super().__init__()
        group_width = int(planes * (base_width / 64.0)) * cardinality
        self.conv1 = nn.Conv2d(in_chs, group_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(group_width)
        self.act1 = nn.ReLU(inplace=True)
        # "avd": the stride moves from the 3x3 conv to a 3x3 average pool, before or after it.
        avd = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else None
        self.avd_first = avd if avd_first else None
        self.conv2 = SplitAttn(group_width, group_width, 3, padding=1, groups=cardinality, radix=radix)
        self.avd_last = None if avd_first else avd
        self.conv3 = nn.Conv2d(group_width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        if self.avd_first is not None:
            x = self.avd_first(x)
        x = self.conv2(x)
        if self.avd_last is not None:
            x = self.avd_last(x)
        x = self.bn3(self.conv3(x))
        return self.act3(x + shortcut)


def _avg_down(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    """ResNet-D shortcut: pool then 1x1 conv, so no activation is skipped by a strided conv."""
    pool: nn.Module = (
        nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    )
    return nn.Sequential(pool, nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs))


class ResNeSt(nn.Module):
    layer1: nn.Sequential  # registered in __init__ by name, as both reference repos do
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.arch: str | None = None  # registry name, set by create_model; recorded in artifacts
        sw = cfg.stem_width
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, sw, 3, 2, 1, bias=False),
            nn.BatchNorm2d(sw),
            nn.ReLU(inplace=True),
            nn.Conv2d(sw, sw, 3, 1, 1, bias=False),
            nn.BatchNorm2d(sw),
            nn.ReLU(inplace=True),
            nn.Conv2d(sw, sw * 2, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(sw * 2)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_chs = sw * 2
        for i, (planes, depth) in enumerate(zip(cfg.widths, cfg.layers, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                out_chs = planes * Bottleneck.expansion
                needs_shortcut = j == 0 and (stride != 1 or in_chs != out_chs)
                blocks.append(
                    Bottleneck(
                        in_chs,
                        planes,
                        stride if j == 0 else 1,
                        _avg_down(in_chs, out_chs, stride) if needs_shortcut else None,
                        radix=cfg.radix,
                        cardinality=cfg.cardinality,
                        base_width=cfg.base_width,
                        avd_first=cfg.avd_first,
                    )
                )
                in_chs = out_chs
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = in_chs
        self.fc = nn.Linear(in_chs, cfg.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init, with each residual branch scaled by 1/sqrt(depth).

        Unscaled, the residual stream of a random resnest269 grows to logits in the thousands and
        fp32 itself drifts by several percent from fp64, which would make parity checks on random
        weights meaningless; this keeps every variant's random logits O(1) and well conditioned.
        """
        depth = sum(self.cfg.layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.constant_(m.bn3.weight, depth**-0.5)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1)
        return self.fc(x)
