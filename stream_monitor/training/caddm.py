"""CADDM's training objective and augmentations, after the authors (megvii-research/CADDM
``train.py``, ``configs/caddm_train.cfg``, ``detection_layers/*``, ``lib/data_preprocess/*``).

Objective: ``CE(logits, label) + 0.1 × (L_loc + L_conf)``, the multi-box loss of the ADM's
anchor heads (SSD style). Anchors: on the ADM maps 7, 5, 3, 1 (steps 32, 45, 75, 224 px of
a 224 crop), per cell two boxes, ``min × max`` and ``max × min`` with (min, max) = (40, 80),
(80, 120), (120, 160), (224, 224) px — 168 anchors, in the heads' output order (map, row,
column, box). Targets: a real crop has none (every anchor is background); a fake crop's
manipulated box — here the whole crop, the authors' target for a fake they do not re-swap,
since Multi-scale Facial Swap needs the source video's frame, which a dataset of videos
lacks — is matched to anchors of IoU ≥ 0.5 (and its best anchor), offsets encoded with
variances 0.1 / 0.2. ``L_loc``: smooth-L1 over positive anchors; ``L_conf``: cross-entropy
over positives and the hardest negatives (2 per positive) of images with positives; both
divided by the number of positives. So real crops train only the classifier, as in the
authors' code.

Augmentations (``prepare_train_input`` / ``add_noise``) are applied to the live path's
aligned crop rather than to the full frame: the alignment jitter (scale × N(1, 0.1/0.9),
shift ±25 px, rotation 30·u³°, u ∈ [−1, 1]) becomes a similarity warp of the crop about its
centre, black outside (the frame's surroundings are not kept). Then, with the authors'
probabilities: half-resolution round trip 0.3, JPEG quality 15–80 0.3, min-max stretch 0.5,
low-frequency quantisation noise 0.5, saturation/brightness 0.25, gamma 0.6–1.4 always,
Gaussian blur 0.3, Gaussian noise 0.3. Left out as the authors' code leaves them out:
the mirror (``image_h_mirror`` returns its input) and the random re-interpolation (its result
is discarded). Motion blur and colour tone are not reproduced.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.caddm import CADDM

CROP = 224
FEATURE_MAPS = (7, 5, 3, 1)
STEPS = (32, 45, 75, 224)
SIZES = ((40, 80), (80, 120), (120, 160), (224, 224))
VARIANCES = (0.1, 0.2)
MATCH_IOU = 0.5
NEG_PER_POS = 2
DET_WEIGHT = 0.1
LR = 3.6e-4  # the authors' first phase
WEIGHT_DECAY = 4e-3
GRAD_CLIP_VALUE = 2.0


def anchors() -> torch.Tensor:
    """``[168, 4]`` anchors ``(cx, cy, w, h)`` in units of the crop, clipped to [0, 1]."""
    out = []
    for fmap, step, (lo, hi) in zip(FEATURE_MAPS, STEPS, SIZES):
        cells = CROP / step
        for i in range(fmap):
            for j in range(fmap):
                cx, cy = (j + 0.5) / cells, (i + 0.5) / cells
                out.append((cx, cy, lo / CROP, hi / CROP))
                out.append((cx, cy, hi / CROP, lo / CROP))
    return torch.tensor(out, dtype=torch.float32).clamp(0.0, 1.0)


def _corners(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], dim=1)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU ``[A, B]`` of corner boxes ``a [A, 4]`` and ``b [B, 4]``."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)[:, None]
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)[None, :]
    return inter / (area_a + area_b - inter)


def anchor_targets(fake_box: torch.Tensor | None, priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc [A, 4] float, conf [A] long)`` for one crop: ``fake_box`` (corners in crop units)
    or ``None`` for a real crop (all background, zero offsets)."""
    n = priors.shape[0]
    if fake_box is None:
        return torch.zeros(n, 4), torch.zeros(n, dtype=torch.long)
    iou = _iou(fake_box.view(1, 4), _corners(priors))[0]
    conf = (iou >= MATCH_IOU).long()
    conf[int(iou.argmax())] = 1  # every truth keeps its best anchor
    matched = fake_box.view(1, 4).expand(n, 4)
    centre = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (VARIANCES[0] * priors[:, 2:])
    size = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / VARIANCES[1]
    return torch.cat([centre, size], dim=1), conf


def batch_targets(labels: torch.Tensor, priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked :func:`anchor_targets` for a batch; a fake's box is the whole crop."""
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0])
    pairs = [anchor_targets(whole if int(y) else None, priors) for y in labels.tolist()]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def train_outputs(model: CADDM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits [N, 2], loc [N, 168, 4], conf [N, 168, 2])`` of :class:`models.caddm.CADDM`
    on preprocessed input ``x`` (BGR 0–255 ``[N, 3, 224, 224]``): the eval path's logits plus
    the ADM's anchor heads on each of its four maps (heads in ``models.caddm`` are
    training-only modules that ``forward`` never runs)."""
    features, pooled = model.base_model(x)
    maps = []
    h = features
    for layer in model.adm.adm_extra_layers:
        h = layer(h)
        maps.append(h)
    logits = model.fc((pooled + h).flatten(1))
    heads = model.adm.multi_scale_detection_module
    n = x.shape[0]
    loc = torch.cat([det(m).permute(0, 2, 3, 1).reshape(n, -1) for m, det in zip(maps, heads.ms_dets)], 1)
    conf = torch.cat([cls(m).permute(0, 2, 3, 1).reshape(n, -1) for m, cls in zip(maps, heads.ms_cls)], 1)
    return logits, loc.view(n, -1, 4), conf.view(n, -1, 2)


def multibox_loss(loc: torch.Tensor, conf: torch.Tensor, loc_t: torch.Tensor,
                  conf_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_loc, L_conf)`` (see the module docstring); zero when the batch has no positive."""
    pos = conf_t > 0
    num_pos = pos.sum(dim=1, keepdim=True)
    loss_l = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    flat = conf.reshape(-1, 2).float()
    per_anchor = (torch.logsumexp(flat, 1) - flat.gather(1, conf_t.reshape(-1, 1)).squeeze(1)).view_as(conf_t)
    ranked = per_anchor.detach().masked_fill(pos, 0.0)
    rank = ranked.argsort(1, descending=True).argsort(1)
    num_neg = (NEG_PER_POS * num_pos).clamp(max=pos.shape[1] - 1)
    neg = rank < num_neg
    keep = pos | neg
    loss_c = F.cross_entropy(conf[keep].float(), conf_t[keep], reduction="sum")
    n = max(int(num_pos.sum()), 1)
    return loss_l / n, loss_c / n


class CaddmObjective:
    """CE + 0.1 × multi-box loss on a batch of preprocessed crops (``[N, 3, 224, 224]``)."""

    def __init__(self) -> None:
        self.priors = anchors()

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if not isinstance(model, CADDM):
            raise TypeError(f"CADDM's objective needs a CADDM model, got {type(model).__name__}")
        logits, loc, conf = train_outputs(model, x)
        loc_t, conf_t = batch_targets(labels.cpu(), self.priors)
        loss_l, loss_c = multibox_loss(loc.float(), conf, loc_t.to(x.device), conf_t.to(x.device))
        cls = F.cross_entropy(logits.float(), labels)
        loss = cls + DET_WEIGHT * (loss_l + loss_c)
        return loss, {"cls": float(cls.detach()), "loc": float(loss_l.detach()), "conf": float(loss_c.detach())}


def lr_factor(step: int, total: int) -> float:
    """The authors' piecewise schedule (3.6e-4 → 1e-4 at epoch 4 → 5e-5 at epoch 10 of 20) as
    a factor of the base rate, by the fraction of ``total`` steps done."""
    done = step / max(total, 1)
    return 1.0 if done < 0.2 else (1e-4 / 3.6e-4 if done < 0.5 else 5e-5 / 3.6e-4)


# ---------------------------------------------------------------------------------------
# Augmentations (uint8 RGB [S, S, 3] in and out)


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    scale = max(0.5, rng.normal(0.9, 0.1)) / 0.9  # the authors' crop scale N(0.9, 0.1) around the test's 0.9
    angle = 30.0 * rng.uniform(-1.0, 1.0) ** 3
    shift = rng.uniform(-25.0, 25.0, size=2) * size / CROP
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    m[:, 2] += shift
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
    return img if decoded is None else np.asarray(decoded)


def augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One training crop, augmented (see the module docstring); channel order is kept."""
    img = _jitter(np.ascontiguousarray(crop), rng)
    size = img.shape[0]
    if rng.random() < 0.3:
        small = cv2.resize(img, (size // 2, size // 2), interpolation=cv2.INTER_LINEAR)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.3:
        img = _jpeg(img, int(15 + rng.random() * 65))
    f = img.astype(np.float32)
    if rng.random() < 0.5:
        f = (f - f.min()) / (f.max() - f.min() + 1.0) * 255.0
    if rng.random() < 0.5:
        noise = cv2.resize(rng.standard_normal((size // 4, size // 4)).astype(np.float32) * 2.0, (size, size))
        f = np.clip(f + noise[:, :, None], 0, 255)
    if rng.random() < 0.25:
        hsv = cv2.cvtColor(f.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        if rng.random() < 0.5:
            hsv[:, :, 1] *= 1.0 - 0.5 * rng.random() if rng.random() < 0.5 else 1.0 + 0.15 * rng.random()
        if rng.random() < 0.5:
            hsv[:, :, 2] *= 1.0 + rng.random() if rng.random() < 0.5 else 1.0 - 0.5 * rng.random()
        f = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    gamma = 0.6 + rng.random() * 0.8
    f = 255.0 * np.power(np.clip(f, 0, 255) / 255.0, 1.0 / gamma)
    if rng.random() < 0.3:
        f = cv2.GaussianBlur(f, (3, 3), float(rng.integers(3)))
    if rng.random() < 0.3:
        sigma = float(rng.integers(15, 22) if rng.random() < 0.5 else rng.integers(0, 5))
        f = f + rng.standard_normal(f.shape).astype(np.float32) * sigma
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def augment_batch(crops: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``[N, S, S, 3]`` uint8: each crop augmented on its own."""
    return np.stack([augment(c, rng) for c in crops])

