"""ResNet with basic blocks (ResNet-18/34 layout) as CADDM's ``backbones/resnet.py`` has it.

The layout and key names are torchvision's classic ones (``conv1``, ``bn1``,
``layerN.M.conv1/bn1/conv2/bn2``, ``layerN.0.downsample.0/1``, ``fc``); padding is the
ordinary symmetric one. ``fc`` (the ImageNet classifier) is unused by CADDM but present in
its checkpoints. Stage widths are configurable only so tests can build a small copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ResNetConfig:
    """Blocks per stage and stage widths; ResNet-34 is ``(3, 4, 6, 3)``, ``(64, 128, 256, 512)``."""

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    imagenet_classes: int = 1000


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN, identity or 1×1 conv+BN shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    """A stage: the first block changes stride/width, the others keep them."""
    return nn.Sequential(BasicBlock(c_in, c_out, stride), *[BasicBlock(c_out, c_out) for _ in range(blocks - 1)])


class ResNet(nn.Module):
    """ResNet trunk returning the last feature map and its global average.

    Input float ``[N, 3, H, W]``; returns ``(features [N, C, H/32, W/32], pooled [N, C, 1, 1])``
    with ``C = widths[3]`` (512). The authors pool with ``AvgPool2d(7, stride=1)``, which
    is the global mean on the 7×7 map CADDM requires (a 224 px input).
    """

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w0 = cfg.widths[0]
        self.conv1 = nn.Conv2d(3, w0, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w0)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        (n1, n2, n3, n4), (c1, c2, c3, c4) = cfg.layers, cfg.widths
        self.layer1 = _stage(w0, c1, n1, stride=1)
        self.layer2 = _stage(c1, c2, n2, stride=2)
        self.layer3 = _stage(c2, c3, n3, stride=2)
        self.layer4 = _stage(c3, c4, n4, stride=2)
        self.out_channels = c4
        # ImageNet classifier: never called by CADDM, present in its checkpoints.
        self.fc = nn.Linear(c4, cfg.imagenet_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x, x.mean((2, 3), keepdim=True)
