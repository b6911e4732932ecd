"""FTCN's "fully temporal" I3D-ResNet-50 trunk (StyleFlow's content branch, stages 1–4).

FTCN (Zheng et al., ICCV 2021) takes a SlowFast ``ResNet`` in its ``i3d`` variant and
makes every convolution purely temporal: spatial kernels become 1, and each spatial
stride 2 becomes stride 1 followed by a ``MaxPool3d((1, 2, 2))`` placed right after
that convolution's batch norm (the authors wrap the norm as ``Sequential(bn, pool)``,
hence keys such as ``b_bn.0.weight``). Stage 5 is removed. For the 32×224² input of
StyleFlow the trunk maps ``[N, 3, 32, 224, 224] -> [N, 1024, 16, 14, 14]``:

=========  ==========================================  ==========================
stage      layers                                      output (T × H × W)
=========  ==========================================  ==========================
``s1``     conv (5,1,1), BN, pool (1,2,2), ReLU,       64 @ 32 × 56²
           max pool (1,3,3)/2
``s2``     3 bottlenecks, temporal kernel 3            256 @ 32 × 56²
pool       ``pathway0_pool``: max pool (2,1,1)/2       256 @ 16 × 56²
``s3``     4 bottlenecks, kernels 3,1,3,1, pool /2     512 @ 16 × 28²
``s4``     6 bottlenecks, kernels 3,1,…, pool /2       1024 @ 16 × 14²
=========  ==========================================  ==========================

Key names are SlowFast's (``s1.pathway0_stem.conv.weight``,
``s3.pathway0_res0.branch2.b_bn.0.weight``, …) so the authors' checkpoints load as they
are. Batch norms use eps 1e-5 (eval: running statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class I3DTemporalConfig:
    """Shape of the trunk. Full size: ``width=64``, blocks ``(3, 4, 6)``.

    ``width`` is SlowFast's ``WIDTH_PER_GROUP`` (stem channels; stage ``i`` has inner
    width ``width·2^(i-2)`` and output ``4·width·2^(i-2)``, so ``s4`` outputs
    ``16·width`` channels). ``temporal_kernels[i]`` lists the temporal kernel sizes
    that repeat over the blocks of stage ``i+2`` (i3d: ``[3]``, ``[3, 1]``, ``[3, 1]``).
    """

    in_chans: int = 3
    width: int = 64
    blocks: tuple[int, int, int] = (3, 4, 6)
    stem_kernel_t: int = 5
    temporal_kernels: tuple[tuple[int, ...], ...] = ((3,), (3, 1), (3, 1))
    spatial_strides: tuple[int, int, int] = (1, 2, 2)

    @property
    def out_channels(self) -> int:
        return 4 * self.width * 2 ** (len(self.blocks) - 1)


def _norm(channels: int, downsample: bool) -> nn.Module:
    """BN, or ``Sequential(BN, MaxPool3d((1,2,2)))`` where FTCN moved a spatial stride 2."""
    bn = nn.BatchNorm3d(channels, eps=1e-5, momentum=0.1)
    return nn.Sequential(bn, nn.MaxPool3d((1, 2, 2))) if downsample else bn


def _tconv(c_in: int, c_out: int, kt: int) -> nn.Conv3d:
    """Temporal-only convolution ``(kt, 1, 1)``, 'same' temporal padding, no bias."""
    return nn.Conv3d(c_in, c_out, (kt, 1, 1), stride=1, padding=(kt // 2, 0, 0), bias=False)


class TemporalStem(nn.Module):
    """``[N, C, T, H, W] -> [N, width, T, H/4, W/4]`` (conv stride 2 → pool, then max pool)."""

    def __init__(self, in_chans: int, width: int, kernel_t: int) -> None:
        super().__init__()
        self.conv = _tconv(in_chans, width, kernel_t)
        self.bn = _norm(width, downsample=True)
        self.relu = nn.ReLU()
        self.pool_layer = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_layer(self.relu(self.bn(self.conv(x))))


class Bottleneck(nn.Module):
    """SlowFast ``BottleneckTransform`` made temporal: ``(kt,1,1)`` → 1×1×1 → 1×1×1.

    The stride of the middle convolution (stride_1x1 False) is a pool after ``b_bn``.
    """

    def __init__(self, c_in: int, c_out: int, c_inner: int, kernel_t: int, downsample: bool) -> None:
        super().__init__()
        self.a = _tconv(c_in, c_inner, kernel_t)
        self.a_bn = _norm(c_inner, downsample=False)
        self.a_relu = nn.ReLU()
        self.b = _tconv(c_inner, c_inner, 1)
        self.b_bn = _norm(c_inner, downsample)
        self.b_relu = nn.ReLU()
        self.c = _tconv(c_inner, c_out, 1)
        self.c_bn = _norm(c_out, downsample=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    """Residual block; a 1×1×1 projection (``branch1``) where channels or resolution change."""

    def __init__(self, c_in: int, c_out: int, c_inner: int, kernel_t: int, stride: int) -> None:
        super().__init__()
        downsample = stride != 1
        self.branch1: nn.Module | None = None
        self.branch1_bn: nn.Module | None = None
        if c_in != c_out or downsample:
            self.branch1 = _tconv(c_in, c_out, 1)
            self.branch1_bn = _norm(c_out, downsample)
        self.branch2 = Bottleneck(c_in, c_out, c_inner, kernel_t, downsample)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1 is None or self.branch1_bn is None else self.branch1_bn(self.branch1(x))
        return self.relu(shortcut + self.branch2(x))


class ResStage(nn.Module):
    """``blocks`` residual blocks named ``pathway0_res{i}``; the first one carries the stride.

    Temporal kernels cycle through ``kernels`` (SlowFast's ``NUM_BLOCK_TEMP_KERNEL`` equals
    the block count in FTCN's config, so every block takes its kernel from the cycle).
    """

    def __init__(self, c_in: int, c_out: int, c_inner: int, blocks: int, kernels: tuple[int, ...],
                 stride: int) -> None:
        super().__init__()
        self.num_blocks = blocks
        for i in range(blocks):
            block = ResBlock(c_in if i == 0 else c_out, c_out, c_inner, kernels[i % len(kernels)],
                             stride if i == 0 else 1)
            self.add_module(f"pathway0_res{i}", block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, f"pathway0_res{i}")(x)
        return x


class StemWrapper(nn.Module):
    """SlowFast's ``VideoModelStem`` holder: one pathway, hence ``s1.pathway0_stem.*``."""

    def __init__(self, stem: TemporalStem) -> None:
        super().__init__()
        self.pathway0_stem = stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pathway0_stem(x)


class I3DTemporalTrunk(nn.Module):
    """Stages ``s1``–``s4`` of FTCN's temporal I3D-R50.

    ``forward``: float32 ``[N, in_chans, T, H, W]`` (StyleFlow: RGB, ImageNet-normalised,
    T=32, H=W=224) -> features ``[N, 16·width, T/2, H/16, W/16]``.
    Subclasses add a ``head`` (the authors' ``ResNet`` keeps stages and head side by side,
    so their keys are ``resnet.s1.*`` … ``resnet.head.*``).
    """

    def __init__(self, cfg: I3DTemporalConfig) -> None:
        super().__init__()
        w = cfg.width
        self.s1 = StemWrapper(TemporalStem(cfg.in_chans, w, cfg.stem_kernel_t))
        c_in = w
        stages: list[ResStage] = []
        for i, (blocks, kernels, stride) in enumerate(zip(cfg.blocks, cfg.temporal_kernels, cfg.spatial_strides)):
            c_out, c_inner = 4 * w * 2 ** i, w * 2 ** i
            stages.append(ResStage(c_in, c_out, c_inner, blocks, kernels, stride))
            c_in = c_out
        self.s2 = stages[0]
        # i3d's temporal pool after res2 (the only temporal downsampling: 32 -> 16 steps).
        self.pathway0_pool = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
        self.s3 = stages[1]
        self.s4 = stages[2]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(self.s1(x))
        return self.s4(self.s3(self.pathway0_pool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
