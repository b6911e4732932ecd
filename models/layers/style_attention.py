"""StyleFlow's style attention module (SAM; the authors' class ``STA``).

Single-head cross-attention from content tokens to style tokens::

    q = W_q(content)              content: [N, n, d]   (16 time tokens × 1024)
    k = W_k(style), v = W_v(style)  style: [N, m, d]   (StyleGRU embedding as 16 × 1024)
    out = lp(softmax(q kᵀ / √d) v)                      [N, n, d]

``d`` in the scale is the width of ``style`` *before* projection (the authors read it
from ``k.size()`` ahead of ``W_k``; equal to the projected width here). ``lp`` starts
with a zero weight (its bias keeps the default init), so at initialisation SAM adds only
``lp.bias`` to the content tokens and stage-2 training starts from the content-only model.
Keys: ``w_q``, ``w_k``, ``w_v``, ``lp`` (``.weight``, ``.bias``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class StyleAttention(nn.Module):
    """``forward(content [N, n, d], style [N, m, d]) -> [N, n, d]`` (float32)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w_q = nn.Linear(dim, dim)
        self.w_k = nn.Linear(dim, dim)
        self.w_v = nn.Linear(dim, dim)
        self.lp = nn.Linear(dim, dim)
        nn.init.zeros_(self.lp.weight)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        q, k, v = self.w_q(content), self.w_k(style), self.w_v(style)
        attn = torch.softmax((q @ k.transpose(1, 2)) / math.sqrt(style.shape[-1]), dim=-1)
        return self.lp(attn @ v)
