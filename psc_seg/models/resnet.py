"""3D ResNet-34 for volume / video classification (the paper's video backbone).

The layout of torchvision's video ResNet: a stem, four stages of basic blocks
(``layers = (3, 4, 6, 3)``, widths 64-128-256-512, stride 2 from the second stage on), global
average pooling and a linear classifier. A basic block is ``conv-BN-ReLU-conv-BN`` plus a
shortcut (1^3 conv + BN where the shape changes), then ReLU. With a PmSCn spec the two d^3
convs of a block become two ``PSC(m,1)`` (n = 1) or one ``PSC(m,n)`` (n >= 2); the stem
(a 3x7x7 conv, not a d^3 one) stays.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from psc_seg.nn import make_convs, parse_conv_spec


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, *, stride: int, conv: str) -> None:
        super().__init__()
        convs = make_convs(conv, in_channels, out_channels, num_convs=2, stride=stride, padding="same",
                           bias=False)
        layers: list[nn.Module] = []
        for i, c in enumerate(convs):
            layers += [c, nn.BatchNorm3d(out_channels)]
            if i < len(convs) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm3d(out_channels)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """3D ResNet classifier.

    Args:
        in_channels: input channels (3 for RGB video, 1 for a volume).
        num_classes: classes of the linear classifier.
        layers: basic blocks per stage ((3, 4, 6, 3) is ResNet-34).
        widths: channels per stage.
        conv: conv spec for the d^3 convs of the blocks.

    Shapes: ``(N, in_channels, T or Z, Y, X)`` -> logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        layers: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        conv: str = "conv3d",
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"resnet: layers {tuple(layers)} and widths {tuple(widths)} differ in length")
        self.in_channels, self.num_classes, self.conv = in_channels, num_classes, str(parse_conv_spec(conv))
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = widths[0]
        for index, (num_blocks, width) in enumerate(zip(layers, widths)):
            stages.append(self._make_stage(channels, width, num_blocks, stride=1 if index == 0 else 2, conv=conv))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(channels, num_classes)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, num_blocks: int, *, stride: int, conv: str) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, out_channels, stride=stride, conv=conv)]
        blocks += [BasicBlock(out_channels, out_channels, stride=1, conv=conv) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, Y, X)`` -> logits ``(N, num_classes)``."""
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))
