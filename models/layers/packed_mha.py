"""Multi-head attention with ``nn.MultiheadAttention``'s parameter layout, batch-first.

The parameters are named and shaped as torch's ``nn.MultiheadAttention`` stores them
(``in_proj_weight`` ``[3C, C]`` holding Q, K, V projections stacked in that order,
``in_proj_bias`` ``[3C]``, ``out_proj.{weight,bias}``), so checkpoints written from
CLIP-style models load unchanged. The computation runs through
``F.scaled_dot_product_attention`` on batch-first tensors, which picks fused kernels on
the GPU; the result equals ``nn.MultiheadAttention`` (scale ``1/sqrt(head_dim)``, no
mask, no dropout in eval).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PackedMultiheadAttention(nn.Module):
    """Self- or cross-attention over batch-first token tensors.

    ``forward(query, context=None)``: ``query`` float ``[B, Lq, C]``; ``context`` float
    ``[B, Lk, C]`` supplies keys and values (``None``: self-attention on ``query``).
    Returns ``[B, Lq, C]``. Each batch row attends only within itself.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as nn.MultiheadAttention (only matters without a checkpoint).
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            c = self.dim
            q = F.linear(query, self.in_proj_weight[:c], self.in_proj_bias[:c])
            k, v = F.linear(context, self.in_proj_weight[c:], self.in_proj_bias[c:]).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.dim))
