"""pSp ``GradualStyleEncoder`` on IR-SE-50: a face crop in, StyleGAN2 W+ codes out.

StyleFlow's style branch encodes every frame with the frozen pSp encoder
(eladrich/pixel2style2pixel, ``psp_ffhq_encode.pt``) and feeds the frame-to-frame
differences of the codes to StyleGRU (:mod:`models.layers.stylegru`).

Input contract (the TrueMedia pSp hook, ``EXPERIMENT_DATA_ARGS['ffhq_encode']``): RGB,
``Resize((256, 256))``, ``ToTensor()``, ``Normalize(mean=(0.5, 0.5, 0.5),
std=(0.5, 0.5, 0.5))``, i.e. ``x = uint8 / 127.5 - 1`` in ``[-1, 1]``, float32
``[N, 3, 256, 256]``.

Output: float32 ``[N, 18, 512]`` — what pSp's ``forward`` hands the generator (and
returns with ``return_latents=True``): the encoder's codes plus ``latent_avg`` (the
``ffhq_encode`` model is trained with ``--start_from_latent_avg``). ``latent_avg`` is
the same vector for every frame, so it cancels in StyleFlow's differences
``S_{t+1} - S_t``; it is kept so that the W+ codes equal pSp's.

Architecture (layout and key names are the authors'; the code is ours):

* ``input_layer``: conv 3×3 ``in_chans → widths[0]`` (no bias), BatchNorm, PReLU.
* ``body``: IR-SE bottlenecks, ``units`` per stage, the first unit of each stage with
  stride 2: maps of 128/64/32/16 at 256 input. Taps ``c1, c2, c3`` at the ends of
  stages 2, 3 and 4 (body indices 6, 20, 23 at full size).
* FPN: ``p2 = up(c3) + latlayer1(c2)``, ``p1 = up(p2) + latlayer2(c1)``; ``up`` is
  bilinear with ``align_corners=True`` to the lateral map's size.
* ``styles``: one :class:`GradualStyleHead` per W+ row; rows 0–2 read ``c3``
  (16², 4 stride-2 convs), rows 3–6 read ``p2`` (32², 5 convs), rows 7–17 read ``p1``
  (64², 6 convs); each ends in an ``EqualLinear`` (runtime weight scale ``1/sqrt(512)``).

Checkpoints (:func:`psp_checkpoint_filter_fn`): pSp's ``{'state_dict': {encoder.*,
decoder.*}, 'opts': {...}, 'latent_avg': [18, 512]}``, a bare encoder state dict, or
our canonical safetensors (encoder keys without ``encoder.`` plus ``latent_avg``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .._loading import only_tensors

__all__ = ["PSPEncoderConfig", "PSPEncoder", "psp_checkpoint_filter_fn", "PSP_MEAN", "PSP_STD"]

#: ``transforms.Normalize`` constants of the pSp input (RGB, after ``ToTensor``).
PSP_MEAN = (0.5, 0.5, 0.5)
PSP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PSPEncoderConfig:
    """Sizes of the encoder; the defaults are pSp's ``GradualStyleEncoder(50, 'ir_se')``.

    ``units``/``widths``: IR-SE bottlenecks and output channels of the 4 stages.
    ``n_styles`` W+ rows of ``style_dim`` values; rows ``[0, coarse_styles)`` come from the
    1/16 map, the next ``middle_styles`` from the 1/8 map, the rest from the 1/4 map.
    ``input_size``: square input side; a power of two ≥ 16, because each style head
    halves its map down to exactly 1×1 (the authors reshape ``[N, C, 1, 1]`` to ``[N, C]``).
    """

    units: tuple[int, ...] = (3, 4, 14, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    n_styles: int = 18
    style_dim: int = 512
    input_size: int = 256
    in_chans: int = 3
    se_reduction: int = 16
    coarse_styles: int = 3
    middle_styles: int = 4

    def __post_init__(self) -> None:
        if len(self.units) != 4 or len(self.widths) != 4:
            raise ValueError("units and widths need one entry per stage (4 stages)")
        if min(self.units) < 1:
            raise ValueError(f"every stage needs at least one unit, got {self.units}")
        if min(self.widths) < self.se_reduction:
            raise ValueError(f"widths {self.widths} must be ≥ se_reduction {self.se_reduction}")
        size = self.input_size
        if size < 16 or size & (size - 1):
            raise ValueError(f"input_size must be a power of two ≥ 16, got {size}")
        if self.n_styles < 1:
            raise ValueError("n_styles must be ≥ 1")

    @property
    def taps(self) -> tuple[int, int, int]:
        """Body indices whose outputs feed the FPN: ends of stages 2, 3 and 4."""
        ends = [sum(self.units[: i + 1]) - 1 for i in range(4)]
        return ends[1], ends[2], ends[3]


class SqueezeExcite(nn.Module):
    """Channel gate: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``, 1×1 convs without bias."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class Subsample(nn.Module):
    """Identity shortcut at a stride: keeps every ``stride``-th pixel (a 1×1 max-pool)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class BottleneckIRSE(nn.Module):
    """ArcFace IR-SE unit: ``res_layer(x) + shortcut_layer(x)``.

    ``res_layer`` (indices are key names): 0 BN(in), 1 conv3×3 in→out, 2 PReLU(out),
    3 conv3×3 out→out at ``stride``, 4 BN(out), 5 squeeze-excite. The shortcut subsamples
    when the width is unchanged, otherwise it is conv1×1 at ``stride`` + BN.
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int, se_reduction: int) -> None:
        super().__init__()
        self.shortcut_layer: nn.Module
        if in_chans == out_chans:
            self.shortcut_layer = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chans),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_chans),
            nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PReLU(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_chans),
            SqueezeExcite(out_chans, se_reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """StyleGAN2's equalised-learning-rate linear layer (``lr_mul=1``, no activation).

    The stored ``weight`` ``[out, in]`` is multiplied by ``1/sqrt(in)`` at run time, so
    checkpoint values are not the effective weights.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = 1.0 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class GradualStyleHead(nn.Module):
    """One W+ row: stride-2 conv3×3 + LeakyReLU(0.01) until the map is 1×1, then EqualLinear.

    ``spatial`` is the side of the input map; ``max(1, log2(spatial))`` convs (keys
    ``convs.0``, ``convs.2``, … with the activations in between).
    """

    def __init__(self, in_chans: int, out_chans: int, spatial: int) -> None:
        super().__init__()
        n_convs = max(1, int(math.log2(spatial)))
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [nn.Conv2d(in_chans if i == 0 else out_chans, out_chans, kernel_size=3, stride=2, padding=1),
                       nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_chans, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


_ENCODER = "encoder."
_DECODER = "decoder."


def psp_checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a pSp checkpoint to :class:`PSPEncoder`'s canonical keys.

    Accepted layouts:

    * pSp's training checkpoint ``{'state_dict': {...}, 'opts': {...}, 'latent_avg'}``
      (``psp_ffhq_encode.pt``): ``encoder.*`` keys lose the prefix; ``decoder.*`` (the
      StyleGAN2 generator, which StyleFlow does not run) is dropped; ``latent_avg`` is
      taken from the top level. Any other tensor key is kept and reported as unexpected.
    * a flat ``encoder.*``/``decoder.*`` dict (``pSp.state_dict()``), treated the same way;
    * a bare ``GradualStyleEncoder`` state dict, and our canonical safetensors.

    ``latent_avg``: ``[n_styles, style_dim]``, or ``[style_dim]`` (broadcast to every row, as
    pSp's ``repeat`` does). When the file has none because pSp would not add one (its
    ``opts`` say ``start_from_latent_avg`` is false) or because it is a bare encoder dict,
    zeros are used: the codes are then the encoder's raw output, which StyleFlow's
    differences do not notice. A pSp checkpoint whose opts say ``start_from_latent_avg``
    but that lacks ``latent_avg`` is left incomplete so a strict load fails on that key.
    Raises ``ValueError`` for a pSp checkpoint of another encoder type.
    """
    raw = dict(checkpoint)
    opts = raw.get("opts")
    opts = opts if isinstance(opts, Mapping) else None
    if opts is not None and opts.get("encoder_type", "GradualStyleEncoder") != "GradualStyleEncoder":
        raise ValueError(f"pSp checkpoint of encoder_type {opts['encoder_type']!r}; "
                         "StyleFlow uses GradualStyleEncoder (psp_ffhq_encode.pt)")
    nested = raw.get("state_dict")
    state = only_tensors(nested) if isinstance(nested, Mapping) else only_tensors(raw)
    if isinstance(nested, Mapping) and isinstance(raw.get("latent_avg"), torch.Tensor):
        state["latent_avg"] = raw["latent_avg"]

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DECODER):
            continue  # the StyleGAN2 generator: documented drop
        out[key[len(_ENCODER):] if key.startswith(_ENCODER) else key] = value

    own = getattr(model, "latent_avg", None)
    avg = out.get("latent_avg")
    if avg is not None and own is not None and avg.dim() == 1:
        out["latent_avg"] = avg.unsqueeze(0).expand(own.shape[0], -1).clone()
    elif avg is None and own is not None:
        wants_avg = bool(opts.get("start_from_latent_avg", False)) if opts is not None else False
        if not wants_avg:
            out["latent_avg"] = torch.zeros(own.shape, dtype=torch.float32)
    return out


class PSPEncoder(nn.Module):
    """pSp GradualStyleEncoder (IR-SE-50 + FPN + 18 style heads), plus ``latent_avg``.

    ``forward(x)``: float32 ``[N, in_chans, S, S]`` RGB in ``[-1, 1]`` (``S =
    cfg.input_size``) → float32 ``[N, n_styles, style_dim]`` W+ codes, ``latent_avg``
    included (see the module docstring). Each frame is encoded independently (BatchNorm
    uses running statistics in eval), so batching does not change a frame's codes.
    """

    checkpoint_filter_fn = staticmethod(psp_checkpoint_filter_fn)

    def __init__(self, cfg: PSPEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.input_layer = nn.Sequential(
            nn.Conv2d(cfg.in_chans, w[0], kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.PReLU(w[0]),
        )
        units: list[nn.Module] = []
        in_chans = w[0]
        for n_units, out_chans in zip(cfg.units, w):
            for i in range(n_units):
                units.append(BottleneckIRSE(in_chans, out_chans, 2 if i == 0 else 1, cfg.se_reduction))
                in_chans = out_chans
        self.body = nn.Sequential(*units)

        # Map sides at the taps: stage k (1-based) ends at input / 2**k.
        side_c1, side_c2, side_c3 = cfg.input_size // 4, cfg.input_size // 8, cfg.input_size // 16
        coarse_end = cfg.coarse_styles
        middle_end = cfg.coarse_styles + cfg.middle_styles
        self.styles = nn.ModuleList(
            GradualStyleHead(w[3], cfg.style_dim,
                             side_c3 if i < coarse_end else side_c2 if i < middle_end else side_c1)
            for i in range(cfg.n_styles)
        )
        self.latlayer1 = nn.Conv2d(w[2], w[3], kernel_size=1)
        self.latlayer2 = nn.Conv2d(w[1], w[3], kernel_size=1)
        # pSp keeps latent_avg beside its state dict; as a buffer it travels with ours.
        self.latent_avg: torch.Tensor
        self.register_buffer("latent_avg", torch.zeros(cfg.n_styles, cfg.style_dim))
        self._coarse_end, self._middle_end = coarse_end, middle_end

    @staticmethod
    def _upsample_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.cfg.input_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.cfg.in_chans, size, size):
            raise ValueError(f"expected [N, {self.cfg.in_chans}, {size}, {size}], got {list(x.shape)}")
        tap1, tap2, tap3 = self.cfg.taps
        x = self.input_layer(x)
        feats: dict[int, torch.Tensor] = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in (tap1, tap2, tap3):
                feats[i] = x
        c1, c2, c3 = feats[tap1], feats[tap2], feats[tap3]
        p2 = self._upsample_add(c3, self.latlayer1(c2))
        p1 = self._upsample_add(p2, self.latlayer2(c1))
        rows = []
        for i, head in enumerate(self.styles):
            source = c3 if i < self._coarse_end else p2 if i < self._middle_end else p1
            rows.append(head(source))
        codes = torch.stack(rows, dim=1)
        return codes + self.latent_avg
