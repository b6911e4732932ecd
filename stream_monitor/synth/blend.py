"""Self-blending: a frame's face replaced by a slightly altered copy of itself.

The recipe of self-blended images (Shiohara & Yamasaki, CVPR 2022), which StA's
Video-level Blending extends to clips: the *source* is the frame itself, changed in colour
(RGB shift, hue, saturation, brightness, contrast), in frequency content (blur, sharpen or
down-and-up scaling) and in geometry (a small scaling and shift about the face centre);
the *mask* is the face hull (:func:`~.geometry.face_hull`), stretched, feathered with a
Gaussian and scaled by a blend ratio; the output is ``mask·source + (1 − mask)·frame``.
What is left are blending artifacts only: a colour/sharpness seam and a slightly
misregistered face, with the identity unchanged.

* **video-level** (StA's VB): one :class:`BlendParams` for the whole clip, expressed
  relative to the face (shift and blur in face sizes), so every frame gets the same
  alteration, following the face: the artifacts are temporally consistent;
* **per-frame** (the contrast): new parameters every frame, so the seam flickers.

StA's generator is not released (DETECTORS.md §2.2); this is the recipe as the papers
describe it, with SBI's ranges, not a copy of anyone's code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from .geometry import face_hull, hull_box

FREQUENCY = ("none", "blur", "sharpen", "downscale")
RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # SBI's blend ratios (full blends most often)


@dataclass(frozen=True)
class BlendParams:
    """One draw of the self-blending alteration (see :func:`draw_blend`)."""

    rgb_shift: tuple[float, float, float]  # added to R, G, B (grey levels)
    hue: float  # OpenCV hue units (degrees / 2)
    saturation: float  # multiplier
    brightness: float  # added, fraction of 255
    contrast: float  # multiplier about the mean
    frequency: str  # one of FREQUENCY
    frequency_amount: float  # blur sigma / sharpen weight / downscale factor
    scale: tuple[float, float]  # source scaling about the face centre (x, y)
    shift: tuple[float, float]  # source shift in face sizes (x, y)
    mask_scale: tuple[float, float]  # mask stretch about the face centre (x, y)
    mask_blur: float  # mask feathering sigma in face sizes
    ratio: float  # blend ratio

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def draw_blend(rng: np.random.Generator) -> BlendParams:
    """Random parameters in SBI's ranges."""
    frequency = str(rng.choice(FREQUENCY))
    amount = {"none": 0.0, "blur": float(rng.uniform(0.6, 1.6)), "sharpen": float(rng.uniform(0.3, 1.0)),
              "downscale": float(rng.uniform(0.35, 0.7))}[frequency]
    return BlendParams(
        rgb_shift=tuple(float(v) for v in rng.uniform(-20, 20, 3)),  # type: ignore[arg-type]
        hue=float(rng.uniform(-5, 5)), saturation=float(rng.uniform(0.85, 1.15)),
        brightness=float(rng.uniform(-0.1, 0.1)), contrast=float(rng.uniform(0.9, 1.1)),
        frequency=frequency, frequency_amount=amount,
        scale=(float(rng.uniform(0.95, 1.05)), float(rng.uniform(0.95, 1.05))),
        shift=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
        mask_scale=(float(rng.uniform(0.85, 1.05)), float(rng.uniform(0.85, 1.05))),
        mask_blur=float(rng.uniform(0.02, 0.07)), ratio=float(rng.choice(RATIOS)))


def _colour(img: np.ndarray, p: BlendParams) -> np.ndarray:
    x = img.astype(np.float32) + np.asarray(p.rgb_shift, np.float32)
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = (x - mean) * p.contrast + mean + 255.0 * p.brightness
    hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + p.hue) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * p.saturation, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _frequency(img: np.ndarray, p: BlendParams) -> np.ndarray:
    if p.frequency == "blur":
        return cv2.GaussianBlur(img, (0, 0), p.frequency_amount)
    if p.frequency == "sharpen":
        soft = cv2.GaussianBlur(img, (0, 0), 1.0)
        return cv2.addWeighted(img, 1.0 + p.frequency_amount, soft, -p.frequency_amount, 0)
    if p.frequency == "downscale":
        h, w = img.shape[:2]
        small = cv2.resize(img, (max(1, round(w * p.frequency_amount)), max(1, round(h * p.frequency_amount))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return img


def blend_mask(shape: tuple[int, int], hull: np.ndarray, centre: tuple[float, float], stretch: tuple[float, float],
               sigma: float) -> np.ndarray:
    """float32 ``[h, w]`` in [0, 1]: the hull stretched about ``centre``, feathered by ``sigma`` px."""
    pts = (hull.astype(np.float64) - centre) * np.asarray(stretch) + centre
    mask: np.ndarray = np.zeros(shape, np.float32)
    cv2.fillConvexPoly(mask, np.round(pts).astype(np.int32), 1.0)
    if sigma > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
        mask = mask / max(float(mask.max()), 1e-6)
    return mask


def self_blend(frame: np.ndarray, points: np.ndarray, p: BlendParams) -> np.ndarray:
    """``frame`` (uint8 RGB) with its face at ``points`` self-blended by ``p``; work is done in
    a box of twice the face around it, the rest of the frame is untouched."""
    hull = face_hull(points)
    x1, y1, x2, y2 = hull_box(hull)
    size = max(x2 - x1, y2 - y1, 1.0)
    h, w = frame.shape[:2]
    bx1, by1 = max(0, int(x1 - 0.5 * size)), max(0, int(y1 - 0.5 * size))
    bx2, by2 = min(w, int(x2 + 0.5 * size) + 1), min(h, int(y2 + 0.5 * size) + 1)
    if bx2 - bx1 < 4 or by2 - by1 < 4:
        return frame
    roi = frame[by1:by2, bx1:bx2]
    local = hull - np.array([bx1, by1])
    cx, cy = (x1 + x2) / 2 - bx1, (y1 + y2) / 2 - by1
    source = _frequency(_colour(roi, p), p)
    sx, sy = p.scale
    m = np.array([[sx, 0, (1 - sx) * cx + p.shift[0] * size], [0, sy, (1 - sy) * cy + p.shift[1] * size]])
    source = cv2.warpAffine(source, m, (roi.shape[1], roi.shape[0]), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
    mask = blend_mask(roi.shape[:2], local, (cx, cy), p.mask_scale, p.mask_blur * size)[..., None] * p.ratio
    out = frame.copy()
    out[by1:by2, bx1:bx2] = np.clip(mask * source + (1 - mask) * roi + 0.5, 0, 255).astype(np.uint8)
    return out
