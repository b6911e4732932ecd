"""Blocks of StyleFlow's stage-2 classifier: its config, the SAM head and the ``resnet`` net.

The model class, its checkpoint filter and card are in :mod:`models.styleflow`, whose
docstring states how SAM is wired (our reading of the TrueMedia copy's commented lines).
Shapes at full size: trunk ``[N, 3, 32, 224, 224] -> [N, 1024, 16, 14, 14]``; spatial mean
-> 16 tokens × 1024 (time order); ``tokens + STA(tokens, E as 16 × 1024)`` -> ``time_T``
-> one logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .i3d_temporal import I3DTemporalConfig, I3DTemporalTrunk
from .style_attention import StyleAttention
from .time_transformer import TimeTransformer

__all__ = ["StyleFlowContentConfig", "StyleContentHead", "StyleFlowContentNet"]


@dataclass(frozen=True)
class StyleFlowContentConfig:
    """Stage-2 content branch; defaults are the authors' ``I3D8x8`` (``ftcn_tt.yaml``).

    ``width``/``blocks``: trunk (SlowFast ``WIDTH_PER_GROUP``, ResNet-50 stages 2–4).
    ``clip_len`` frames of ``input_size``² go in; the trunk halves time once, so there are
    ``clip_len // 2`` tokens of ``16·width`` channels, and the style embedding must have
    ``tokens × channels`` values (16 × 1024 = 16384 = StyleGRU's ``E``). The authors' token
    pool is ``AvgPool3d((1, 14, 14))`` on the 14² map of a 224² input, i.e. the spatial
    mean; we take the spatial mean at any ``input_size``. ``tte_*``: the temporal
    transformer (depth 1 per ``ftcn_tt.yaml``; 16 heads × 64, MLP 2048 are the head's
    defaults).
    """

    width: int = 64
    blocks: tuple[int, int, int] = (3, 4, 6)
    clip_len: int = 32
    input_size: int = 224
    tte_depth: int = 1
    tte_heads: int = 16
    tte_dim_head: int = 64
    tte_mlp_dim: int = 2048

    def __post_init__(self) -> None:
        if self.clip_len < 2 or self.clip_len % 2:
            raise ValueError(f"clip_len must be even and ≥ 2 (the trunk pools time by 2), got {self.clip_len}")

    @property
    def channels(self) -> int:
        return 16 * self.width

    @property
    def tokens(self) -> int:
        return self.clip_len // 2

    @property
    def style_dim(self) -> int:
        """Length of the style embedding SAM reads (``tokens × channels``)."""
        return self.tokens * self.channels

    def trunk(self) -> I3DTemporalConfig:
        return I3DTemporalConfig(width=self.width, blocks=self.blocks)


class StyleContentHead(nn.Module):
    """The authors' ``TransformerHead`` (patch type ``time``) with SAM switched on.

    ``forward(features [N, C, T', h, w], style [N, T'·C]) -> logit [N]``.
    """

    def __init__(self, cfg: StyleFlowContentConfig) -> None:
        super().__init__()
        self.tokens, self.channels = cfg.tokens, cfg.channels
        self.time_T = TimeTransformer(cfg.tokens, 1, cfg.channels, cfg.tte_depth, cfg.tte_heads,
                                      cfg.tte_mlp_dim, cfg.tte_dim_head)
        self.STA = StyleAttention(cfg.channels)

    def forward(self, features: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        tokens = features.mean(dim=(-2, -1)).transpose(1, 2)  # [N, T', C], time order
        codes = style.reshape(tokens.shape)  # consecutive C-chunks of E, see module docstring
        return self.time_T(tokens + self.STA(tokens, codes)).squeeze(-1)


class StyleFlowContentNet(I3DTemporalTrunk):
    """The authors' ``I3D8x8.resnet``: trunk stages ``s1``–``s4`` and the SAM head."""

    def __init__(self, cfg: StyleFlowContentConfig) -> None:
        super().__init__(cfg.trunk())
        self.head = StyleContentHead(cfg)

    def forward_head(self, video: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(video), style)
