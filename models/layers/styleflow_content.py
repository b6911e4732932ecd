"""Blocks of StyleFlow's stage-2 classifier: configs, heads and the ``resnet`` nets.

Two heads sit on FTCN's fully temporal I3D trunk (:mod:`models.layers.i3d_temporal`):

* :class:`ContentHead` — the authors' ``TransformerHead`` as released (TrueMedia's
  ``model/ftcn.py``, the module their server runs): spatial mean → 16 time tokens ×
  1024 → ``time_T`` → one logit. Keys ``head.time_T.*``.
* :class:`StyleContentHead` — the same with the style attention module (SAM, class
  ``STA``) switched on as the commented lines of ``model/ftcn (for Styleflow).py``
  describe: ``tokens + STA(q, k, v)`` → ``time_T``. Keys ``head.time_T.*`` and
  ``head.STA.*``. Which of the file's three ``STA`` calls is the one the authors trained
  is not recorded anywhere (``SAM_READINGS``; all three need the same weights), so the
  reading is a config field.

The model classes, checkpoint filters and cards are in :mod:`models.styleflow` (style
enabled, a reconstruction) and :mod:`models.styleflow_truemedia` (content only, as
deployed). Shapes at full size: trunk ``[N, 3, 32, 224, 224] -> [N, 1024, 16, 14, 14]``;
spatial mean -> 16 tokens × 1024 (time order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from .i3d_temporal import I3DTemporalConfig, I3DTemporalTrunk
from .style_attention import StyleAttention
from .time_transformer import TimeTransformer

__all__ = ["ContentBranchConfig", "StyleFlowContentConfig", "SamReading", "SAM_READINGS", "ContentHead",
           "ContentNet", "StyleContentHead", "StyleFlowContentNet"]

#: The three ``STA`` calls in the commented lines of TrueMedia's ``model/ftcn (for
#: Styleflow).py`` → which sequence is (query, key, value). ``x_c`` there is the content
#: tokens, ``codes`` StyleGRU's embedding reshaped to the tokens' shape; the result is
#: added to the content tokens in every case (``x = x + codes``).
#:
#: * ``content_style_style``: ``STA(x_c, codes, codes)``, the line labelled ``SAM``
#:   (content queries style keys/values; the paper's description) — the default;
#: * ``content_content_style``: ``STA(x_c, x_c, codes)``, labelled an experiment on the
#:   kind of SAM ("SAM 종류변경 실험");
#: * ``style_style_content``: ``STA(codes, codes, x_c)``, the same experiment block.
SamReading = Literal["content_style_style", "content_content_style", "style_style_content"]
SAM_READINGS: dict[str, tuple[str, str, str]] = {
    "content_style_style": ("content", "style", "style"),
    "content_content_style": ("content", "content", "style"),
    "style_style_content": ("style", "style", "content"),
}
assert set(SAM_READINGS) == set(get_args(SamReading))


@dataclass(frozen=True)
class ContentBranchConfig:
    """FTCN's content branch (trunk + temporal transformer); defaults are the authors'
    ``I3D8x8`` (``ftcn_tt.yaml``).

    ``width``/``blocks``: trunk (SlowFast ``WIDTH_PER_GROUP``, ResNet-50 stages 2–4).
    ``clip_len`` frames of ``input_size``² go in; the trunk halves time once, so there are
    ``clip_len // 2`` tokens of ``16·width`` channels. The authors' token pool is
    ``AvgPool3d((1, 14, 14))`` on the 14² map of a 224² input, i.e. the spatial mean; we
    take the spatial mean at any ``input_size``. ``tte_*``: the temporal transformer
    (depth 1 per ``ftcn_tt.yaml``; 16 heads × 64, MLP 2048 are the head's defaults).
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

    def trunk(self) -> I3DTemporalConfig:
        return I3DTemporalConfig(width=self.width, blocks=self.blocks)


@dataclass(frozen=True)
class StyleFlowContentConfig(ContentBranchConfig):
    """The content branch with SAM: the style embedding must have ``tokens × channels``
    values (16 × 1024 = 16384 = StyleGRU's ``E``); ``sam_reading`` picks one of
    ``SAM_READINGS`` (same weights for all three)."""

    sam_reading: SamReading = "content_style_style"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sam_reading not in SAM_READINGS:
            raise ValueError(f"sam_reading must be one of {sorted(SAM_READINGS)}, got {self.sam_reading!r}")

    @property
    def style_dim(self) -> int:
        """Length of the style embedding SAM reads (``tokens × channels``)."""
        return self.tokens * self.channels


def _time_transformer(cfg: ContentBranchConfig) -> TimeTransformer:
    return TimeTransformer(cfg.tokens, 1, cfg.channels, cfg.tte_depth, cfg.tte_heads, cfg.tte_mlp_dim,
                           cfg.tte_dim_head)


def time_tokens(features: torch.Tensor) -> torch.Tensor:
    """Trunk features ``[N, C, T', h, w]`` → tokens ``[N, T', C]`` (spatial mean, time order)."""
    return features.mean(dim=(-2, -1)).transpose(1, 2)


class ContentHead(nn.Module):
    """The authors' ``TransformerHead`` (patch type ``time``) as ``model/ftcn.py`` runs it.

    ``forward(features [N, C, T', h, w]) -> logit [N]``.
    """

    def __init__(self, cfg: ContentBranchConfig) -> None:
        super().__init__()
        self.time_T = _time_transformer(cfg)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.time_T(time_tokens(features)).squeeze(-1)


class StyleContentHead(nn.Module):
    """The authors' ``TransformerHead`` with SAM switched on (reading ``cfg.sam_reading``).

    ``forward(features [N, C, T', h, w], style [N, T'·C]) -> logit [N]``.
    """

    def __init__(self, cfg: StyleFlowContentConfig) -> None:
        super().__init__()
        self.reading = SAM_READINGS[cfg.sam_reading]
        self.time_T = _time_transformer(cfg)
        self.STA = StyleAttention(cfg.channels)

    def forward(self, features: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        tokens = time_tokens(features)
        # Consecutive C-chunks of E become the style "tokens" (see models.styleflow).
        sources = {"content": tokens, "style": style.reshape(tokens.shape)}
        q, k, v = (sources[s] for s in self.reading)
        return self.time_T(tokens + self.STA(q, k, v)).squeeze(-1)


class ContentNet(I3DTemporalTrunk):
    """The authors' ``I3D8x8.resnet`` as ``model/ftcn.py`` builds it: stages ``s1``–``s4``
    and the content-only head."""

    def __init__(self, cfg: ContentBranchConfig) -> None:
        super().__init__(cfg.trunk())
        self.head = ContentHead(cfg)

    def forward_head(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(video))


class StyleFlowContentNet(I3DTemporalTrunk):
    """The authors' ``I3D8x8.resnet`` from ``model/ftcn (for Styleflow).py``: trunk stages
    ``s1``–``s4`` and the SAM head."""

    def __init__(self, cfg: StyleFlowContentConfig) -> None:
        super().__init__(cfg.trunk())
        self.head = StyleContentHead(cfg)

    def forward_head(self, video: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(video), style)
