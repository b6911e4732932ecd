"""FTCN's temporal transformer (``TimeTransformer``): a small pre-LN ViT over time tokens.

Input ``[N, n, dim]`` (StyleFlow: 16 time tokens × 1024 channels). A learned CLS token is
prepended, a learned position embedding ``[1, n+1, dim]`` added, ``depth`` pre-LN blocks
(multi-head self-attention with ``heads × dim_head`` inner width and a bias-free fused
``to_qkv``; GELU MLP) run, and the CLS token goes through LayerNorm + Linear to
``num_classes`` logits. Dropouts are identity in eval and are not modelled.

Key names follow the authors' module (lucidrains-style ``Residual(PreNorm(fn))``
wrappers): ``transformer.layers.{i}.0.fn.norm.*``, ``…0.fn.fn.to_qkv.weight``,
``…0.fn.fn.to_out.0.*``, ``…1.fn.fn.net.{0,3}.*``, ``mlp_head.{0,1}.*``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention, ``[N, n, dim] -> [N, n, dim]``; softmax(q·kᵀ/√dim_head)·v."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        # The authors skip the output projection only for one head spanning the full width.
        self.to_out: nn.Module = (nn.Sequential(nn.Linear(inner, dim)) if not (heads == 1 and dim_head == dim)
                                  else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_batch, n_tok, _ = x.shape
        q, k, v = (t.reshape(n_batch, n_tok, self.heads, -1).transpose(1, 2)
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n_batch, n_tok, -1)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Linear → GELU (erf) → Linear; ``net.0`` and ``net.3`` as in the authors' Sequential
    (their indices 2 and 4 are dropouts)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.ModuleDict({"0": nn.Linear(dim, hidden), "3": nn.Linear(hidden, dim)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net["3"](F.gelu(self.net["0"](x)))


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class Residual(nn.Module):
    """``x + fn(x)``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class TransformerStack(nn.Module):
    """``depth`` × (pre-LN attention residual, pre-LN MLP residual), in ``layers.{i}.{0,1}``."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Residual(PreNorm(dim, SelfAttention(dim, heads, dim_head))),
                           Residual(PreNorm(dim, FeedForward(dim, mlp_dim)))])
            for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            assert isinstance(block, nn.ModuleList)
            for sub in block:
                x = sub(x)
        return x


class TimeTransformer(nn.Module):
    """CLS-token transformer over ``num_patches`` time tokens.

    ``forward``: float32 ``[N, n, dim]`` with ``n <= num_patches`` -> logits
    ``[N, num_classes]``.
    """

    def __init__(self, num_patches: int, num_classes: int, dim: int, depth: int, heads: int,
                 mlp_dim: int, dim_head: int = 64) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.pos_embedding = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.pos_embedding)
        nn.init.normal_(self.cls_token)
        self.transformer = TransformerStack(dim, depth, heads, dim_head, mlp_dim)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_tok = x.shape[1]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embedding[:, : n_tok + 1]
        x = self.transformer(x)
        return self.mlp_head(x[:, 0])
