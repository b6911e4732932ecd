"""StyleGRU: StyleFlow's stage-1 temporal encoder of W+ style flow (Choi et al., CVPR 2024).

Input, the *style flow* of a 32-frame clip (:func:`style_flow`): the pSp W+ codes
``S_t`` ``[18, 512]`` of consecutive frames, flattened style-major (row ``s`` occupies
columns ``512 s … 512 s + 511``: coarse rows 0–2 are columns 0–1535, middle rows 3–6
1536–3583, fine rows 7–17 3584–9215) and differenced, ``ΔS_t = S_{t+1} - S_t``: float32
``[N, 31, 9216]``. The authors' loaders read per-clip ``[32, 9216]`` latent pickles and
difference them (``get_diff``) exactly so.

Model (layout and key names are the authors' ``StyleGRU``; the code is ours):

* ``bn``: ``BatchNorm1d(31)`` over the time axis (each time step is a channel).
* ``gru``: bidirectional 2-layer ``nn.GRU(9216 → 4096, batch_first, dropout 0.1)``
  started from the learned ``hidden_state`` ``[4, 1, 4096]``, the same for every clip.
* Embedding ``E`` ``[N, 16384]``: the final hidden states concatenated in ``nn.GRU``'s
  order (layer 0 forward, layer 0 backward, layer 1 forward, layer 1 backward). Stage 2
  (the content branch's style attention) reads ``E``.
* Stage-1 head ``dense``: Dropout(0.5) → residual FeedForward (Linear 16384→4096, ReLU,
  Dropout, Linear 4096→16384) → Dropout → Linear 16384→1: one logit.

The logit is trained with ``BCEWithLogitsLoss`` against label 1 = fake (any FF++
manipulation), 0 = real (``Origin``), so the fake probability is ``sigmoid(logit)``.
(``train.py`` logs accuracy by thresholding the raw logit at 0.5; that is a logging quirk,
not the model's output.) The train-only ``LatentDropout`` is not part of inference.

Checkpoints (:func:`stylegru_checkpoint_filter_fn`): stage-1 training files
``{'epoch', 'state_dict'}`` of ``DataParallel(TripletNet(StyleGRU))`` (keys
``module.model.*``), bare ``StyleGRU`` state dicts, and our canonical safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .._loading import only_tensors

__all__ = ["StyleGRUConfig", "StyleGRU", "style_flow", "stylegru_checkpoint_filter_fn"]


@dataclass(frozen=True)
class StyleGRUConfig:
    """Sizes of StyleGRU; the defaults are the authors' ``StyleGRU(feature_size=9216)``.

    ``steps``: flow steps per clip (``BatchNorm1d`` channels; 31 = 32 frames − 1).
    ``input_size``: values per step (9216 = 18 × 512 for the authors' ``dtype='total'``).
    ``hidden_size`` and ``num_layers`` of the GRU, ``res_hidden`` of the head's
    feed-forward block. The dropout rates only matter in training; they are recorded so
    the module mirrors the authors'.
    """

    steps: int = 31
    input_size: int = 9216
    hidden_size: int = 4096
    num_layers: int = 2
    bidirectional: bool = True
    res_hidden: int = 4096
    rnn_dropout: float = 0.1
    fc_dropout: float = 0.5

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def embed_dim(self) -> int:
        """Length of ``E``: one hidden state per layer and direction."""
        return self.hidden_size * self.num_directions * self.num_layers


def style_flow(latents: torch.Tensor) -> torch.Tensor:
    """Frame-to-frame differences of W+ codes, flattened style-major.

    ``latents``: float ``[N, T, n_styles, style_dim]`` (pSp codes of ``T`` consecutive
    frames; ``latent_avg`` cancels here). Returns ``[N, T - 1, n_styles * style_dim]``
    with ``out[:, t] = flatten(latents[:, t + 1]) - flatten(latents[:, t])``.
    """
    if latents.dim() != 4 or latents.shape[1] < 2:
        raise ValueError(f"expected [N, T >= 2, n_styles, style_dim], got {list(latents.shape)}")
    flat = latents.flatten(2)
    return flat[:, 1:] - flat[:, :-1]


class FeedForward(nn.Module):
    """``Linear(dim → hidden) → ReLU → Dropout → Linear(hidden → dim)`` (keys ``net.0``, ``net.3``)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Residual(nn.Module):
    """``fn(x) + x`` (key prefix ``fn.``)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


_PREFIXES = ("module.", "model.")


def stylegru_checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a StyleGRU checkpoint to canonical (bare ``StyleGRU``) keys.

    Accepts the stage-1 training file ``{'epoch': int, 'state_dict': {...}}`` whose keys
    carry ``module.`` (``nn.DataParallel``) and ``model.`` (``TripletNet``), either wrapper
    alone, a bare state dict (``--ckp`` / ``g.load_state_dict`` layout, TrueMedia's
    ``style_best.pth``) and our canonical safetensors. Non-tensor entries (``epoch``) are
    dropped; every tensor key is kept, so strays show up as unexpected in a strict load.
    """
    raw = dict(checkpoint)
    nested = raw.get("state_dict")
    state = only_tensors(nested) if isinstance(nested, Mapping) else only_tensors(raw)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in _PREFIXES:  # DataParallel wraps TripletNet, so module. comes first
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


class StyleGRU(nn.Module):
    """StyleGRU with its stage-1 head.

    ``embed(flow)``: float32 ``[N, steps, input_size]`` style flow → ``E`` ``[N, embed_dim]``
    (16384 at full size). ``forward_logits(flow)`` → ``[N]`` head logits;
    ``forward(flow)`` → ``[N]`` fake probability ``sigmoid(logit)``. Clips are
    independent (BatchNorm uses running statistics in eval; the learned initial state is
    broadcast over the batch), so a batch gives each clip its batch-1 result.
    """

    checkpoint_filter_fn = staticmethod(stylegru_checkpoint_filter_fn)

    def __init__(self, cfg: StyleGRUConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden_state = nn.Parameter(torch.randn(cfg.num_directions * cfg.num_layers, 1, cfg.hidden_size))
        self.gru = nn.GRU(cfg.input_size, cfg.hidden_size, num_layers=cfg.num_layers,
                          dropout=cfg.rnn_dropout if cfg.num_layers > 1 else 0.0,
                          batch_first=True, bidirectional=cfg.bidirectional)
        dim = cfg.embed_dim
        self.dense = nn.Sequential(
            nn.Dropout(cfg.fc_dropout),
            Residual(FeedForward(dim, cfg.res_hidden, cfg.fc_dropout)),
            nn.Dropout(cfg.fc_dropout),
            nn.Linear(dim, 1),
        )
        self.bn = nn.BatchNorm1d(cfg.steps)

    def embed(self, flow: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if flow.dim() != 3 or tuple(flow.shape[1:]) != (cfg.steps, cfg.input_size):
            raise ValueError(f"expected style flow [N, {cfg.steps}, {cfg.input_size}], got {list(flow.shape)}")
        x = self.bn(flow)
        # The authors repeat the learned [L*D, 1, H] state along the batch axis.
        h0 = self.hidden_state.expand(-1, flow.shape[0], -1).contiguous()
        _, h_n = self.gru(x, h0)
        # h_n [L*D, N, H] → [N, L*D*H], layer-major, forward before backward.
        return h_n.transpose(0, 1).reshape(flow.shape[0], -1)

    def forward_logits(self, flow: torch.Tensor) -> torch.Tensor:
        return self.dense(self.embed(flow)).squeeze(-1)

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(flow))
