"""CADDM (CVPR 2023, "Implicit Identity Leakage", arXiv 2210.14457; megvii-research/CADDM).

A per-frame detector: a backbone (EfficientNet-B4/B3 or ResNet-34) gives a 7×7 feature
map; the Artifact Detection Module (ADM) shrinks it 7 → 7 → 5 → 3 → 1 with residual
blocks; ``fc(global average + ADM's 1×1 feature)`` gives two logits (real, fake). In the
authors' eval path the output is ``softmax(logits)[:, 1]``, the fake probability.

The ADM's multi-scale anchor heads (``ms_dets``/``ms_cls``: offsets and scores of 168
anchors on the 7/5/3/1 maps) only feed the training loss; they stay as modules so the
authors' checkpoints load strictly, and ``forward`` does not run them.

Canonical keys are the authors' (``backbones/caddm.py``): ``base_model.*`` (the backbone,
including its unused ImageNet classifier), ``adm.adm_extra_layers.*``,
``adm.multi_scale_detection_module.ms_dets/ms_cls.*``, ``fc.*``.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._loading import only_tensors, strip_prefix
from ._factory import apply_overrides
from ._registry import register_model
from .card import AlignTemplate, CheckpointSpec, ModelCard, Points5, normalize_crops
from .layers.efficientnet import EfficientNet, EfficientNetConfig
from .layers.resnet2d import ResNet, ResNetConfig

BackboneConfig = EfficientNetConfig | ResNetConfig

# ---------------------------------------------------------------------------------------
# Artifact Detection Module


class AdmExtraBlock(nn.Module):
    """Residual block that may shrink the map: unpadded k×k conv (with bias) + BN + ReLU,
    padded 3×3 conv + BN, plus an unpadded k×k conv + BN shortcut; ReLU after the sum.

    ``k = 1`` keeps the size (block 0: 7 → 7); ``k = 3`` removes a 1-pixel border (7 → 5 → 3).
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = nn.Sequential(nn.Conv2d(channels, channels, kernel, bias=False),
                                        nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.downsample(x))


class AdmEndBlock(nn.Module):
    """Last ADM block, no BatchNorm: unpadded 3×3 conv + ReLU + 1×1 conv, plus an unpadded
    3×3 conv shortcut; ReLU after the sum (3×3 map → 1×1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.downsample = nn.Conv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.downsample(x))


class MultiScaleHeads(nn.Module):
    """Anchor heads of the ADM (training loss only): per map, 2 anchors × (2 scores, 4 offsets).

    3×3 padded convs on the 7/5/3 maps, 1×1 on the final map. Kept for the key layout.
    """

    def __init__(self, channels: int, anchors_per_cell: int = 2, classes: int = 2) -> None:
        super().__init__()
        kernels = (3, 3, 3, 1)
        self.ms_dets = nn.ModuleList(nn.Conv2d(channels, anchors_per_cell * 4, k, padding=k // 2) for k in kernels)
        self.ms_cls = nn.ModuleList(nn.Conv2d(channels, anchors_per_cell * classes, k, padding=k // 2)
                                    for k in kernels)


class ArtifactDetectionModule(nn.Module):
    """ADM trunk: ``[N, C, 7, 7]`` → ``[N, C, 1, 1]`` (ADM's final feature).

    ``adm_extra_layers`` holds three one-block ``nn.Sequential`` stages (kernels 1, 3, 3)
    and the end block, so keys read ``adm_extra_layers.0.0.conv1.weight`` and
    ``adm_extra_layers.3.conv1.weight`` as in the authors' checkpoints.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.adm_extra_layers = nn.ModuleList([
            nn.Sequential(AdmExtraBlock(channels, 1)),
            nn.Sequential(AdmExtraBlock(channels, 3)),
            nn.Sequential(AdmExtraBlock(channels, 3)),
            AdmEndBlock(channels),
        ])
        self.multi_scale_detection_module = MultiScaleHeads(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.adm_extra_layers:
            x = layer(x)
        return x


# ---------------------------------------------------------------------------------------
# Checkpoint layouts (defined before the model, which holds it as a static method)


def checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map every CADDM layout to canonical keys.

    Accepts the authors' ``{'network': state_dict, 'opt_state': ..., 'epoch': n}`` (their
    ``train.py`` saves the bare model's keys; a DataParallel-wrapped save adds ``module.``,
    which is stripped), a bare state dict with or without ``module.``, and our canonical
    safetensors. Non-tensor entries are dropped; unknown tensor keys pass through so a
    strict load reports them.
    """
    state = checkpoint["network"] if "network" in checkpoint else checkpoint
    if not isinstance(state, Mapping):
        raise TypeError(f"'network' must be a state dict, found {type(state).__name__}")
    return only_tensors(strip_prefix(state, "module."))


# ---------------------------------------------------------------------------------------
# Model


class CADDM(nn.Module):
    """CADDM detector (eval path).

    Input: float32 ``[N, 3, 224, 224]``, **BGR, 0–255, no mean/std** — aligned crops from
    ``card.preprocess``. The backbone map must be 7×7 (EfficientNet: 224–255 px,
    ResNet-34: 193–224 px inputs); anything else raises ``ValueError``.
    ``forward`` → fake probability ``[N]`` in [0, 1]; ``forward_logits`` → ``[N, 2]``
    (index 0 real, 1 fake).
    """

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(self, backbone: BackboneConfig, card: ModelCard) -> None:
        super().__init__()
        self.backbone_cfg = backbone
        self.base_model: EfficientNet | ResNet = (EfficientNet(backbone) if isinstance(backbone, EfficientNetConfig)
                                                  else ResNet(backbone))
        channels = self.base_model.out_channels
        self.adm = ArtifactDetectionModule(channels)
        self.fc = nn.Linear(channels, 2)
        self.card = card

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax logits ``[N, 2]`` (real, fake)."""
        features, pooled = self.base_model(x)
        if features.shape[-2:] != (7, 7):
            raise ValueError(f"CADDM needs a 7x7 backbone map (224x224 crops); input {tuple(x.shape[-2:])} "
                             f"gave {tuple(features.shape[-2:])}")
        return self.fc((pooled + self.adm(features)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake probability ``[N]`` in [0, 1] (softmax index 1, as the authors' eval)."""
        return self.forward_logits(x).softmax(dim=-1)[:, 1]


# ---------------------------------------------------------------------------------------
# Default configs (full size); entry-point overrides replace fields for small test copies.

EFFICIENTNET_B4 = EfficientNetConfig(width_coefficient=1.4, depth_coefficient=1.8, design_size=380, dropout_rate=0.4)
EFFICIENTNET_B3 = EfficientNetConfig(width_coefficient=1.2, depth_coefficient=1.4, design_size=300, dropout_rate=0.3)
RESNET34 = ResNetConfig(layers=(3, 4, 6, 3), widths=(64, 128, 256, 512))

# ---------------------------------------------------------------------------------------
# Alignment template: lib/data_preprocess/cropface.py, test settings of configs/caddm_test.cfg

# Eye pupils, nose tip, mouth corners in unit face coordinates (image-left first).
MEAN_FACE = ((-0.17607, -0.172844), (0.1736, -0.17356), (-0.00182, 0.0357164),
             (-0.14617, 0.20185), (0.14496, 0.19943))
FACE_WIDTH = 80
CANVAS_SIZE = 224
TEST_SCALE = 0.9


def mean_face_points(face_width: float = FACE_WIDTH, canvas: int = CANVAS_SIZE,
                     scale: float = TEST_SCALE) -> Points5:
    """The five target points of CADDM's test-time crop, in pixels of a ``canvas`` square.

    The mean face is scaled by ``scale``, then by ``face_width / (0.34967 · canvas)`` and
    centred; y is further divided by the left eye's relative height × 2.42, which puts the
    eyes at ≈41 % of the height and the face low in the crop.
    """
    mf = np.asarray(MEAN_FACE, dtype=np.float64) * scale
    ratio = face_width / (canvas * 0.34967)
    y_norm = (mf[0, 1] * ratio + 0.5) * 2.42
    x = (mf[:, 0] * ratio + 0.5) * canvas
    y = (mf[:, 1] * ratio + 0.5) * canvas / y_norm
    p = [(float(a), float(b)) for a, b in zip(x, y)]
    return p[0], p[1], p[2], p[3], p[4]


TEMPLATE = AlignTemplate(
    name="caddm_mean_face_224",
    size=CANVAS_SIZE,
    points=mean_face_points(),
    fit="umeyama",
    per_clip=False,
    keypoints=("dlib 81-point landmarks (HOG detector on RGB, upsample 1, largest face): eye centres = "
               "means of points 36-41 and 42-47 truncated to int, nose tip 30, mouth corners 48 and 54; "
               "closed-form least-squares similarity, cv2.warpPerspective bilinear, black border, per frame"),
    mapping=("A generic 5-point detector's eye centres, nose tip and mouth corners have the same meaning: "
             "use them directly. Approximate: the remaining difference is annotation convention (pupil vs "
             "eye-contour centre, where the nose tip sits), size [unverified]; 1% of the inter-ocular distance "
             "is about 0.7 px at 224. Heavy training jitter (scale N(0.9, 0.1), +-25 px, rotation) suggests "
             "tolerance [unverified]. Measure your detector's mean offset from dlib-81 and the AUC change on "
             "calibration frames before deploying."),
    keypoint_offsets=None,
)

_SAMPLING = ("CADDM was trained on one frame per video (frame 0 of each FF++ video), so it has no "
             "training frame spacing and any sampling rate matches training. 8 fps is a cost/latency "
             "choice (B4: about 100 GFLOP/s per face); a window of 8 sampled frames (1 s) scores the mean "
             "frame probability, like the authors' video score (mean P(fake) over a video's frames), and "
             "windows step 4 frames (0.5 s). Every frame is scored on its own, so results cache per frame.")

_DRIVE = ("https://drive.google.com/file/d/1JNMI4RGssgCOl9t05jkUa6imnw5XR5id/view "
          "(megvii-research/CADDM README, 'Pretrained weights')")
_LICENCE = "Apache-2.0 (megvii-research/CADDM LICENSE; the weights carry no separate licence)"
_LAYOUT = ("torch.save dict {'network': state_dict with the bare model's keys (no 'module.'), "
           "'opt_state': AdamW state, 'epoch': n}; only 'network' is read. Also accepted: the same with "
           "'module.' keys, a bare state dict, our canonical safetensors")


def _card(name: str, backbone: str, filename: str) -> ModelCard:
    return ModelCard(
        name=name,
        family="caddm",
        paper="Implicit Identity Leakage: The Stumbling Block to Improving Deepfake Detection "
              "Generalization (CVPR 2023, arXiv 2210.14457)",
        code="https://github.com/megvii-research/CADDM (b3f7619)",
        template=TEMPLATE,
        input_size=CANVAS_SIZE,
        colour_order="BGR",
        value_range=(0.0, 255.0),
        mean=None,
        std=None,
        clip_len=1,
        window_len=8,
        window_stride=4,
        sample_fps=8.0,
        sampling=_SAMPLING,
        checkpoints=(CheckpointSpec(filename=filename, part="model", source=_DRIVE, licence=_LICENCE,
                                    layout=_LAYOUT, sha256=None),),
        preprocess=functools.partial(normalize_crops, crop_size=CANVAS_SIZE, input_size=CANVAS_SIZE,
                                     colour_order="BGR", scale=1.0, mean=None, std=None),
        notes=(f"Backbone {backbone}. File names per CADDM issue #23 [unverified]; the Drive link is one "
               "release for all three backbones. Trained on raw FF++ with JPEG augmentation: validate on "
               "compressed streams. Video AUC (README, trained FF++): B4 FF++ 99.79 / Celeb-DF 93.88 / "
               "DFDC 73.85; B3 99.78 / 93.08 / 73.34; R34 99.70 / 91.15 / 71.49."),
    )


CARD_B4 = _card("caddm_efficientnet_b4", "EfficientNet-B4", "efficientnet-b4.pkl")
CARD_B3 = _card("caddm_efficientnet_b3", "EfficientNet-B3", "efficientnet-b3.pkl")
CARD_R34 = _card("caddm_resnet34", "ResNet-34", "resnet34.pkl")


def _create(default: BackboneConfig, card: ModelCard, overrides: Mapping[str, Any]) -> CADDM:
    return CADDM(apply_overrides(default, overrides, card.name), card)


@register_model
def caddm_efficientnet_b4(**overrides: Any) -> CADDM:
    """CADDM on EfficientNet-B4 (≈290M parameters, 270M of them in the ADM at 1792 channels).

    Overrides: fields of :class:`~models.layers.efficientnet.EfficientNetConfig`.
    """
    return _create(EFFICIENTNET_B4, CARD_B4, overrides)


@register_model
def caddm_efficientnet_b3(**overrides: Any) -> CADDM:
    """CADDM on EfficientNet-B3 (≈211M parameters). Overrides: ``EfficientNetConfig`` fields."""
    return _create(EFFICIENTNET_B3, CARD_B3, overrides)


@register_model
def caddm_resnet34(**overrides: Any) -> CADDM:
    """CADDM on ResNet-34 (≈44M parameters). Overrides: ``layers``, ``widths``, ``imagenet_classes``."""
    return _create(RESNET34, CARD_R34, overrides)
