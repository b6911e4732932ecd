"""StyleFlow's style attention module (SAM; the authors' class ``STA``).

Single-head cross-attention between token sequences of equal width ``d``::

    q = W_q(query), k = W_k(key), v = W_v(value)      each [N, ·, d]
    out = lp(softmax(q kᵀ / √d) v)                     [N, n_query, d]

Which sequence plays which part is the caller's choice: the authors' file tries three
(content tokens vs StyleGRU's embedding as tokens; see ``SAM_READINGS`` in
:mod:`models.layers.styleflow_content`). ``d`` in the scale is the width of ``key``
*before* projection (the authors read it from ``k.size()`` ahead of ``W_k``; equal to the
projected width here). ``lp`` starts with a zero weight (its bias keeps the default init),
so at initialisation SAM adds only ``lp.bias`` to the content tokens and stage-2 training
starts from the content-only model. Keys: ``w_q``, ``w_k``, ``w_v``, ``lp`` (``.weight``,
``.bias``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class StyleAttention(nn.Module):
    """``forward(query [N, n, d], key [N, m, d], value [N, m, d]) -> [N, n, d]`` (float32)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w_q = nn.Linear(dim, dim)
        self.w_k = nn.Linear(dim, dim)
        self.w_v = nn.Linear(dim, dim)
        self.lp = nn.Linear(dim, dim)
        nn.init.zeros_(self.lp.weight)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q, k, v = self.w_q(query), self.w_k(key), self.w_v(value)
        attn = torch.softmax((q @ k.transpose(1, 2)) / math.sqrt(key.shape[-1]), dim=-1)
        return self.lp(attn @ v)
