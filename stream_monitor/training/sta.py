"""StA's training: which parameters learn, its loss and its per-clip augmentations.

Trainable (the paper's recipe; the released code never calls its freezing, see DETECTORS.md
§2.2): the spatiotemporal adapters of every block (``backbone.transformer.resblocks.*.Adapter.*``,
their BatchNorm statistics included) and the head (``head.*``); the CLIP tower stays
frozen. Loss: cross-entropy on the two logits (index 1 = fake). Optimiser: Adam, lr 2e-4,
weight decay 5e-4 (StA ``clip_adapter.yaml`` / DeepfakeBench), constant rate.

Augmentations: DeepfakeBench's ``data_aug`` with one draw per clip, applied alike to its
frames (the authors replay one albumentations draw over a video's frames): horizontal flip
0.5, rotation ±10° 0.5, Gaussian blur kernel 3–7 0.5, brightness and contrast ±0.1 0.5, JPEG
quality 40–100 0.5.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.sta import StA

LR = 2e-4
WEIGHT_DECAY = 5e-4


def is_trainable(key: str) -> bool:
    """Whether the parameter or buffer ``key`` of :class:`models.sta.StA` is trained."""
    return ".Adapter." in key or key.startswith("head.")


def select_trainable(model: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but the adapters and head; return the trainable parameters."""
    params = []
    for key, p in model.named_parameters():
        p.requires_grad_(is_trainable(key))
        if p.requires_grad:
            params.append(p)
    return params


class StaObjective:
    """Cross-entropy of the logits on a batch of preprocessed clips ``[N, T, 3, 224, 224]``."""

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if not isinstance(model, StA):
            raise TypeError(f"StA's objective needs a StA model, got {type(model).__name__}")
        logits = model.forward_logits(x)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"cls": float(loss.detach())}


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
    return img if decoded is None else np.asarray(decoded)


def augment_clip(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[T, S, S, 3]`` → the same, one draw of every augmentation for all frames."""
    size = clip.shape[1]
    flip = rng.random() < 0.5
    angle = float(rng.uniform(-10, 10)) if rng.random() < 0.5 else 0.0
    blur = int(rng.choice([3, 5, 7])) if rng.random() < 0.5 else 0
    bc = rng.random() < 0.5
    alpha = 1.0 + float(rng.uniform(-0.1, 0.1)) if bc else 1.0  # contrast
    beta = 255.0 * float(rng.uniform(-0.1, 0.1)) if bc else 0.0  # brightness
    quality = int(rng.integers(40, 101)) if rng.random() < 0.5 else 0
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    out = []
    for frame in clip:
        img = np.ascontiguousarray(frame)
        if flip:
            img = img[:, ::-1].copy()
        if angle:
            img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        if blur:
            img = cv2.GaussianBlur(img, (blur, blur), 0)
        if bc:
            img = np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
        if quality:
            img = _jpeg(img, quality)
        out.append(img)
    return np.stack(out)


def augment_batch(clips: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``[N, T, S, S, 3]`` uint8: each clip augmented with its own draw."""
    return np.stack([augment_clip(c, rng) for c in clips])
