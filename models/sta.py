"""StA: CLIP ViT-L/14 (first 14 blocks) with spatiotemporal adapters, a video-level
deepfake detector (Yan et al., "Generalizing Deepfake Video Detection with Plug-and-Play:
Video-Level Blending and Spatiotemporal Adapter Tuning", arXiv 2408.17065, CVPR 2025;
code: github.com/YZY-stack/StA4Deepfake, ``training/detectors/clip_adapter_detector.py``).

Input: float32 ``[N, T=8, 3, 224, 224]``, RGB, ``(x/255 - CLIP mean) / CLIP std``, faces
aligned per frame to DeepfakeBench's ArcFace template with margin 1.3 (``card.preprocess``
turns aligned uint8 crops into this). Output: fake probability ``[N]`` =
``softmax(logits)[:, 1]``.

Canonical keys are the authors' (``backbone.*``, ``head.fc_cls.*``; 2110 at full size),
so ``sta_best.pth`` loads as it is, with or without DDP's ``module.`` prefix.

Unlike the authors' module, which is only correct with one clip per forward pass, every
clip of a batch here gets its batch-1 result (see :mod:`models.layers.st_adapter`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ._loading import only_tensors, strip_prefix
from ._factory import apply_overrides
from ._registry import register_model
from .card import AlignTemplate, CheckpointSpec, ModelCard, Points5, normalize_crops
from .layers.packed_mha import PackedMultiheadAttention
from .layers.st_adapter import SpatioTemporalAdapter

__all__ = ["StA", "StaConfig", "STA_CARD", "checkpoint_filter_fn", "deepfakebench_template", "sta_clip_vitl14"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# InsightFace's ArcFace 112×112 five points (eyes, nose, mouth corners; image-left first).
ARCFACE_112: Points5 = ((30.2946, 51.6963), (65.5318, 51.5014), (48.0252, 71.7366),
                        (33.5493, 92.3655), (62.7299, 92.2041))


def deepfakebench_template(res: int, margin: float = 1.3) -> Points5:
    """DeepfakeBench's crop template at ``res``×``res`` (StA's ``img_align_crop``).

    ArcFace points, x shifted by 8 (112×96 → 112×112 layout), scaled to ``res``, then a
    margin of ``(margin-1)/2·res`` added on each side and the whole shrunk back to ``res``.
    """
    pad = res * (margin - 1.0) / 2.0
    shrink = res / (res + 2.0 * pad)

    def place(x: float, y: float) -> tuple[float, float]:
        return ((x + 8.0) * res / 112.0 + pad) * shrink, (y * res / 112.0 + pad) * shrink

    a, b, c, d, e = (place(x, y) for x, y in ARCFACE_112)
    return (a, b, c, d, e)


# --------------------------------------------------------------------------- blocks


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (CLIP's, so fp16/bf16 runs keep its accuracy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class ClipMlp(nn.Module):
    """``c_fc`` → QuickGELU (x·σ(1.702x), CLIP's) → ``c_proj``; ``[..., D]`` → ``[..., D]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))


class AdapterBlock(nn.Module):
    """CLIP residual block followed by the spatiotemporal adapter.

    ``[B·T, 1+S², D]`` → same: ``x += attn(ln_1 x)`` (within each frame),
    ``x += mlp(ln_2 x)``, ``x = Adapter(x)`` (across the clip's frames).
    """

    def __init__(self, cfg: "StaConfig") -> None:
        super().__init__()
        self.ln_1 = LayerNorm32(cfg.width)
        self.attn = PackedMultiheadAttention(cfg.width, cfg.heads)
        self.ln_2 = LayerNorm32(cfg.width)
        self.mlp = ClipMlp(cfg.width, cfg.width * cfg.mlp_ratio)
        self.Adapter = SpatioTemporalAdapter(cfg.width, cfg.adapter_width, cfg.adapter_heads,
                                             cfg.spatial_kernels, cfg.temporal_kernels)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return self.Adapter(x, num_frames)


class _Blocks(nn.Module):
    """Holds ``resblocks`` so keys read ``backbone.transformer.resblocks.{i}.*``."""

    def __init__(self, cfg: "StaConfig") -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(AdapterBlock(cfg) for _ in range(cfg.layers))


class ClipVideoBackbone(nn.Module):
    """CLIP ViT image tower (no ``proj``) with a learned temporal embedding and adapters.

    ``forward(x)``: float ``[N, T, 3, S, S]`` → per-frame class features after ``ln_post``,
    ``[N, T, D]``.
    """

    def __init__(self, cfg: "StaConfig") -> None:
        super().__init__()
        grid = cfg.img_size // cfg.patch_size
        self.num_frames = cfg.num_frames
        self.conv1 = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = cfg.width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, cfg.width))
        self.temporal_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, cfg.width))
        self.ln_pre = LayerNorm32(cfg.width)
        self.transformer = _Blocks(cfg)
        self.ln_post = LayerNorm32(cfg.width)

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame tokens (patch embedding, class token, positions): ``[M, 3, S, S]`` →
        ``[M, 1+S'², D]``. Depends on one frame only, so a stream can cache it."""
        x = self.conv1(frames).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.num_frames or x.shape[2] != 3:
            raise ValueError(f"expected [N, {self.num_frames}, 3, H, W] clips, got {tuple(x.shape)}")
        n, t = x.shape[:2]
        tokens = self.embed_frames(x.flatten(0, 1))
        # The temporal embedding of frame t is added to every token of that frame.
        tokens = (tokens.unflatten(0, (n, t)) + self.temporal_embedding[:, :, None].to(tokens.dtype)).flatten(0, 1)
        tokens = self.ln_pre(tokens)
        for block in self.transformer.resblocks:
            tokens = block(tokens, t)
        return self.ln_post(tokens[:, 0]).unflatten(0, (n, t))


class ClipHead(nn.Module):
    """Mean over frames → (dropout, identity in eval) → ``fc_cls``: ``[N, T, D]`` → ``[N, classes]``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc_cls = nn.Linear(dim, num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc_cls(feats.mean(dim=1))


# ---------------------------------------------------------------------------- model


def checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map ``sta_best.pth`` (flat state dict, optional DDP ``module.`` prefix) or our
    canonical safetensors to canonical keys. Unknown tensor keys pass through, so a strict
    load reports them."""
    state = only_tensors(strip_prefix(checkpoint, "module."))
    if not state:
        raise ValueError("expected a flat state dict of tensors (keys backbone.*, head.fc_cls.*); "
                         f"found no tensors among keys {sorted(checkpoint)[:8]}")
    return state


class StA(nn.Module):
    """StA detector: ``forward(x)`` with x float32 ``[N, T, 3, S, S]`` (RGB, CLIP-normalised,
    aligned crops) → fake probability ``[N]`` in [0, 1]; batches of clips are independent."""

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(self, cfg: "StaConfig", card: ModelCard) -> None:
        super().__init__()
        self.cfg = cfg
        self.card = card
        self.backbone = ClipVideoBackbone(cfg)
        self.head = ClipHead(cfg.width, cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame class features ``[N, T, D]`` (after ``ln_post``)."""
        return self.backbone(x)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, 2]`` (index 1 = fake), before softmax."""
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward_logits(x).float(), dim=1)[:, 1]


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class StaConfig:
    """Architecture; defaults are the released model (CLIP ViT-L/14, first 14 blocks)."""

    img_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 14
    heads: int = 16
    mlp_ratio: int = 4
    adapter_width: int = 512
    adapter_heads: int = 2
    num_frames: int = 8
    num_classes: int = 2
    spatial_kernels: tuple[int, ...] = (3, 5, 7)
    temporal_kernels: tuple[int, ...] = (3, 5, 7)


# ------------------------------------------------------------------------------ card

_SIZE = 224

STA_TEMPLATE = AlignTemplate(
    name="deepfakebench_arcface_m1.3",
    size=_SIZE,
    points=deepfakebench_template(_SIZE),
    fit="umeyama",  # skimage SimilarityTransform.estimate: least squares in crop space
    per_clip=False,
    keypoints=("dlib HOG detector (RGB, upsample 1, largest box) + 81-point predictor, 0-indexed parts "
               "37 and 44 (outer upper eyelid of the image-left/right eye), 30 (nose tip), 49 (upper lip "
               "beside the image-left mouth corner), 55 (lower lip beside the image-right corner)"),
    mapping=("Approximate: no generic 5-point detector gives dlib parts 37/44/30/49/55. Eye centres and "
             "mouth corners used as they are: face ≈6.5% larger, ≈2.5° rotated, ≈8 px mean (15 px max) "
             "displacement at 224. keypoint_offsets (mean offsets in unit inter-ocular distance, "
             "simulated on a frontal, closed-mouth mean face) remove that bias for a neutral face; the "
             "residual is expression-dependent (a mouth opening of 0.2 IOD rotates the true crop ≈2.5° "
             "and makes the face ≈7% smaller). Exact only with dlib HOG + the 81-point predictor."),
    keypoint_offsets=((-0.07, -0.07), (0.07, -0.07), (0.0, 0.0), (0.16, -0.07), (-0.16, 0.17)),
)

STA_CARD = ModelCard(
    name="sta_clip_vitl14",
    family="sta",
    paper="Yan et al., Generalizing Deepfake Video Detection with Plug-and-Play: Video-Level Blending "
          "and Spatiotemporal Adapter Tuning, arXiv 2408.17065 (CVPR 2025)",
    code="https://github.com/YZY-stack/StA4Deepfake",
    template=STA_TEMPLATE,
    input_size=_SIZE,
    colour_order="RGB",
    value_range=(0.0, 1.0),
    mean=CLIP_MEAN,
    std=CLIP_STD,
    clip_len=8,
    window_len=8,
    window_stride=4,
    sample_fps=1.875,
    sampling=("Training clips are 8 consecutive frames of the 32 that DeepfakeBench stores per video "
              "(np.linspace over the whole video), i.e. about (N-1)/31 source frames apart: ≈16 on "
              "FF++ at 25-30 fps, ≈0.53 s. The demo feeds consecutive frames and the authors leave the "
              "spacing open, so the default follows the training data: 1.875 fps (one frame every "
              "≈0.53 s; an 8-frame window spans ≈3.7 s). Consecutive frames (sample_fps=None) are the "
              "alternative to validate. Alignment is per frame."),
    checkpoints=(CheckpointSpec(
        filename="sta_best.pth",
        part="model",
        source="https://drive.google.com/file/d/1WdmyPWKSR1kFE5dIsQvbb0MOGBUqUyjN/view (linked from "
               "the StA4Deepfake README)",
        licence="CC BY-NC 4.0 (README badge; the repository has no LICENSE file)",
        layout="flat state dict, 2110 tensors: backbone.* and head.fc_cls.*, possibly with DDP's "
               "'module.' prefix",
    ),),
    preprocess=functools.partial(normalize_crops, crop_size=_SIZE, input_size=_SIZE, colour_order="RGB",
                                 scale=255.0, mean=CLIP_MEAN, std=CLIP_STD),
    notes=("The authors' CrossAttention is only correct for one clip per forward pass (their demo); "
           "this implementation gives every clip of a batch its batch-1 result. Video score: mean of "
           "the clip fake probabilities."),
)


# ----------------------------------------------------------------------- entry points


@register_model
def sta_clip_vitl14(**overrides: Any) -> StA:
    """StA on CLIP ViT-L/14 (14 blocks), 8×224² clips; ``overrides`` replace
    :class:`StaConfig` fields (small configurations for tests)."""
    return StA(apply_overrides(StaConfig(), overrides, "sta_clip_vitl14"), STA_CARD)
