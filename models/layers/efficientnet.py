"""EfficientNet as CADDM uses it: the old (v0.6) lukemelas port with TF "same" padding.

CADDM vendors ``lukemelas/EfficientNet-PyTorch`` 0.6.3 and builds it with a fixed design
image size (380 for B4, 300 for B3). Every convolution then pads as TensorFlow's "same"
padding would for an input of *that* size, whatever the real input is:

* stride 1: ``k - 1`` pixels, split evenly (odd kernels) — the usual symmetric padding;
* stride 2 on an even design size: ``k - 2`` pixels, the smaller half first — (0, 1) for
  3×3 and (1, 2) for 5×5. Symmetric padding (torchvision, timm's default) shifts every
  stride-2 window by one pixel and gives different features.

At 224 px every stride-2 input is even and this equals TF's dynamic "same" padding; at
odd intermediate sizes (e.g. a 230 px input) the two differ, and we follow the authors'
static rule (output size ``floor(n / 2)``).

State-dict keys are the port's own (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``,
``_depthwise_conv``, ``_se_reduce``, ``_se_expand``, ``_project_conv``, ``_bn0/1/2``,
``_conv_head``, ``_bn1``, ``_fc``). The ImageNet classifier ``_fc`` is unused by CADDM but
kept so the authors' checkpoints load strictly. BatchNorm eps is 1e-3 (TF default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# EfficientNet-B0 stages before width/depth scaling:
# (kernel, repeats, in channels, out channels, expansion, stride); every block has SE 0.25.
_B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
_SE_RATIO = 0.25


@dataclass(frozen=True)
class EfficientNetConfig:
    """Compound-scaling coefficients and the fixed size the padding is computed for.

    B4: width 1.4, depth 1.8, design size 380; B3: 1.2, 1.4, 300. Smaller coefficients give
    the small test configurations of the same code. ``imagenet_classes`` sizes the unused
    ``_fc`` layer (1000 in the authors' checkpoints).
    """

    width_coefficient: float
    depth_coefficient: float
    design_size: int
    dropout_rate: float = 0.4
    imagenet_classes: int = 1000
    depth_divisor: int = 8
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01  # torch convention (1 - TF's 0.99); matters only for training


def _bn(channels: int, cfg: EfficientNetConfig) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=cfg.bn_eps, momentum=cfg.bn_momentum)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor``, never
    more than 10 % below the exact product (the port's rule)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by ``depth``, rounding up."""
    return int(math.ceil(depth * repeats))


def static_same_padding(kernel: int, stride: int, design_size: int) -> tuple[int, int]:
    """(before, after) padding of TF "same" for an input of ``design_size`` pixels."""
    out = math.ceil(design_size / stride)
    total = max((out - 1) * stride + kernel - design_size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with fixed, possibly asymmetric zero padding applied before it.

    ``pad`` is ``(left, right, top, bottom)`` as for ``F.pad``; it depends only on the
    kernel, the stride and the design size, never on the input (see module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, design_size: int,
                 stride: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         groups=groups, bias=bias)
        before, after = static_same_padding(kernel_size, stride, design_size)
        self.pad: tuple[int, int, int, int] = (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual: 1×1 expand → k×k depthwise → squeeze-excite → 1×1 project.

    Swish after expand and depthwise, sigmoid gate after SE (drop-connect is training-only,
    so absent). ``skip`` adds the input to the output; only a stage's repeated blocks have
    it. In the port a stage's first block keeps its stride as a one-element list, so its
    ``stride == 1`` test is always false and it never skips, even where the channel count
    is unchanged (only in narrow test configurations; every B3/B4 first block changes it).
    """

    def __init__(self, cfg: EfficientNetConfig, kernel: int, stride: int, in_ch: int, out_ch: int,
                 expand: int, skip: bool) -> None:
        super().__init__()
        mid = in_ch * expand
        size = cfg.design_size
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, design_size=size, bias=False)
            self._bn0 = _bn(mid, cfg)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, design_size=size, stride=stride,
                                          groups=mid, bias=False)
        self._bn1 = _bn(mid, cfg)
        squeezed = max(1, int(in_ch * _SE_RATIO))
        self._se_reduce = SameConv2d(mid, squeezed, 1, design_size=size)
        self._se_expand = SameConv2d(squeezed, mid, 1, design_size=size)
        self._project_conv = SameConv2d(mid, out_ch, 1, design_size=size, bias=False)
        self._bn2 = _bn(out_ch, cfg)
        if skip and (stride != 1 or in_ch != out_ch):
            raise ValueError("a skip connection needs stride 1 and equal channel counts")
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.silu(self._bn1(self._depthwise_conv(h)))
        gate = self._se_expand(F.silu(self._se_reduce(h.mean((2, 3), keepdim=True))))
        h = self._bn2(self._project_conv(torch.sigmoid(gate) * h))
        return h + x if self.skip else h


class EfficientNet(nn.Module):
    """EfficientNet trunk returning the last feature map and its global average.

    Input float ``[N, 3, H, W]`` (CADDM: BGR 0–255, no normalisation). Returns
    ``(features [N, C, H', W'], pooled [N, C, 1, 1])`` with ``C = out_channels``
    (1792 for B4, 1536 for B3) and ``H' = floor(H / 32)`` for even-design padding; dropout
    on ``pooled`` is identity in eval, so it is omitted.
    """

    def __init__(self, cfg: EfficientNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, d, div = cfg.width_coefficient, cfg.depth_coefficient, cfg.depth_divisor
        stem = round_filters(32, w, div)
        self._conv_stem = SameConv2d(3, stem, 3, design_size=cfg.design_size, stride=2, bias=False)
        self._bn0 = _bn(stem, cfg)
        blocks: list[nn.Module] = []
        for kernel, repeats, c_in, c_out, expand, stride in _B0_STAGES:
            c_in, c_out = round_filters(c_in, w, div), round_filters(c_out, w, div)
            for i in range(round_repeats(repeats, d)):
                # only a stage's first block changes stride and width
                blocks.append(MBConvBlock(cfg, kernel, stride if i == 0 else 1,
                                          c_in if i == 0 else c_out, c_out, expand, skip=i > 0))
        self._blocks = nn.ModuleList(blocks)
        head_in = round_filters(_B0_STAGES[-1][3], w, div)
        self.out_channels = round_filters(1280, w, div)
        self._conv_head = SameConv2d(head_in, self.out_channels, 1, design_size=cfg.design_size, bias=False)
        self._bn1 = _bn(self.out_channels, cfg)
        # ImageNet classifier of the port: never called by CADDM, present in its checkpoints.
        self._fc = nn.Linear(self.out_channels, cfg.imagenet_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.silu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.silu(self._bn1(self._conv_head(x)))
        return x, x.mean((2, 3), keepdim=True)
