"""StA's spatiotemporal adapter (Yan et al., arXiv 2408.17065), one per ViT block.

The adapter sits after each CLIP block's MLP. It projects the tokens down, rebuilds the
patch tokens of a clip as a video volume ``[B, C, T, H, W]``, runs two streams of
depthwise 3D convolutions (spatial kernels ``(1,k,k)``, temporal kernels ``(k,1,1)``),
lets each stream attend to the other over all ``T·H·W`` tokens of the clip, fuses,
projects back up and adds the result to its input. The class token bypasses the
convolutions and the attention.

Cross-attention is computed **per clip**. The authors' module folds the batch into the
sequence axis in a way that is only right for one clip per forward pass (their demo
runs batch 1); here every clip of a batch gets exactly its batch-1 result, so clips from
different streams can share a batch.

Submodule names follow the authors' state dict (``down``, ``up``, ``s_conv{1,2,3}``,
``t_conv{1,2,3}``, ``cross_attention.{spatial_to_temporal,temporal_to_spatial}``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .packed_mha import PackedMultiheadAttention


class DepthwiseStack3d(nn.Module):
    """Three depthwise ``Conv3d`` (bias, "same" padding) + ``BatchNorm3d``, ReLU after the
    first two. ``[B, C, T, H, W]`` → same shape."""

    def __init__(self, channels: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        pad = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
        self.conv1 = nn.Conv3d(channels, channels, kernel, padding=pad, groups=channels)
        self.bn1 = nn.BatchNorm3d(channels)
        self.conv2 = nn.Conv3d(channels, channels, kernel, padding=pad, groups=channels)
        self.bn2 = nn.BatchNorm3d(channels)
        self.conv3 = nn.Conv3d(channels, channels, kernel, padding=pad, groups=channels)
        self.bn3 = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


class SpatioTemporalCrossAttention(nn.Module):
    """Each stream attends to the other within one clip.

    ``forward(spatial, temporal)`` takes two ``[B, C, T, H, W]`` volumes and returns two
    token tensors ``[B, T·H·W, C]`` ordered (t, h, w): temporal queries over spatial
    keys/values (``spatial_to_temporal``) and spatial queries over temporal keys/values
    (``temporal_to_spatial``).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.spatial_to_temporal = PackedMultiheadAttention(dim, num_heads)
        self.temporal_to_spatial = PackedMultiheadAttention(dim, num_heads)

    def forward(self, spatial: torch.Tensor, temporal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = spatial.flatten(2).transpose(1, 2)  # [B, T*H*W, C], one sequence per clip
        t = temporal.flatten(2).transpose(1, 2)
        return self.spatial_to_temporal(t, s), self.temporal_to_spatial(s, t)


class SpatioTemporalAdapter(nn.Module):
    """Bottleneck adapter with depthwise 3D conv streams and per-clip cross-attention.

    ``forward(x, num_frames)``: ``x`` float ``[B·T, 1 + H·W, D]`` (class token first, patch
    tokens row-major, frames of a clip consecutive along the first axis) → same shape,
    ``x + GELU(up(fused))``.
    """

    def __init__(self, dim: int, adapter_dim: int, num_heads: int = 2,
                 spatial_kernels: Sequence[int] = (3, 5, 7), temporal_kernels: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__()
        self.down = nn.Linear(dim, adapter_dim)
        for i, k in enumerate(spatial_kernels, 1):
            self.add_module(f"s_conv{i}", DepthwiseStack3d(adapter_dim, (1, k, k)))
        for i, k in enumerate(temporal_kernels, 1):
            self.add_module(f"t_conv{i}", DepthwiseStack3d(adapter_dim, (k, 1, 1)))
        self.spatial = [f"s_conv{i}" for i in range(1, len(spatial_kernels) + 1)]
        self.temporal = [f"t_conv{i}" for i in range(1, len(temporal_kernels) + 1)]
        self.cross_attention = SpatioTemporalCrossAttention(adapter_dim, num_heads)
        self.up = nn.Linear(adapter_dim, dim)

    def _stream(self, names: list[str], vol: torch.Tensor) -> torch.Tensor:
        # Mean of the kernel-size branches plus an identity path.
        total = self.get_submodule(names[0])(vol)
        for name in names[1:]:
            total = total + self.get_submodule(name)(vol)
        return total / len(names) + vol

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = F.gelu(self.down(x))
        cls, patches = h[:, :1], h[:, 1:]
        bt, hw, c = patches.shape
        side = math.isqrt(hw)
        if side * side != hw or bt % num_frames:
            raise ValueError(f"adapter expects [B*{num_frames}, 1+S*S, C] tokens, got {tuple(x.shape)}")
        vol = patches.reshape(bt // num_frames, num_frames, side, side, c).permute(0, 4, 1, 2, 3)
        s2t, t2s = self.cross_attention(self._stream(self.spatial, vol), self._stream(self.temporal, vol))
        fused = F.gelu((s2t + t2s) / 2).reshape(bt, hw, c)  # clip tokens (t, h, w) -> frames
        return x + F.gelu(self.up(torch.cat([cls, fused], dim=1)))
