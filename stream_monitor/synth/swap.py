"""CADDM's Multi-scale Facial Swap, fed from real videos only.

CADDM (``lib/data_preprocess/mfs.py``, ``preprocess.py``) pastes a region of one face into
another at several scales and trains its anchors to find the region: a *global* swap
(probability 0.8) takes the whole face hull, a *partial* swap (0.2) a rectangle of
(h, w) ∈ {(40, 80), (80, 120), (120, 160)} pixels of a 224 face crop, placed where the two
faces differ most (the window with the largest DSSIM sum inside the hull, scanned in steps
of a fifth of the crop). Either is blended by Poisson editing (``cv2.seamlessClone``) or by
alpha with a 5×5, σ 3 Gaussian-feathered mask, half the time each (alpha when Poisson
fails, as theirs does).

CADDM swaps between a fake and its source video. With real videos only, the other face is
a *donor*: the same-numbered frame of another real video, warped by the similarity that
takes the donor's five points onto this frame's. The choices (level, window size,
blending) are drawn once per clip, and the partial window is placed on the clip's first
frame with a face and kept there, in face-relative coordinates, so the swap stays on the
same part of the face for the whole clip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import cv2
import numpy as np

from .geometry import face_hull, hull_box, similarity

WINDOWS = ((40, 80), (80, 120), (120, 160))  # CADDM's sliding_win.prior_bbox (h, w at 224), without the global one
_CROP = 224.0
_CUT_ALPHA = 1.2  # CADDM cut_face: the landmark box grown 1.2x


@dataclass(frozen=True)
class SwapParams:
    """One clip's swap choices; ``anchor`` is set on the clip's first face frame."""

    level: str  # "global" or "partial"
    window: tuple[int, int] | None  # (h, w) in 224-crop pixels, partial only
    blending: str  # "poisson" or "alpha"
    anchor: tuple[float, float] | None = None  # window top-left as a fraction of the cut box (x, y)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def draw_swap(rng: np.random.Generator) -> SwapParams:
    partial = rng.random() < 0.2
    window = WINDOWS[int(rng.integers(len(WINDOWS)))] if partial else None
    return SwapParams("partial" if partial else "global", window, "poisson" if rng.random() < 0.5 else "alpha")


def dssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel structural dissimilarity (1 − SSIM) / 2 of two uint8 images (11-tap Gaussian, σ 1.5)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = a.astype(np.float64), b.astype(np.float64)

    def g(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (11, 11), 1.5)

    mx, my = g(x), g(y)
    vx, vy, cxy = g(x * x) - mx * mx, g(y * y) - my * my, g(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return np.abs((1.0 - ssim) / 2.0)


def _cut_box(hull: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = hull_box(hull)
    bw, bh = (x2 - x1) * _CUT_ALPHA, (y2 - y1) * _CUT_ALPHA
    ox, oy = x1 - (x2 - x1) * (_CUT_ALPHA - 1) / 2, y1 - (y2 - y1) * (_CUT_ALPHA - 1) / 2
    return max(0, int(ox)), max(0, int(oy)), min(w, int(ox + bw)), min(h, int(oy + bh))


def _window_px(box: tuple[int, int, int, int], window: tuple[int, int]) -> tuple[int, int]:
    bx1, by1, bx2, by2 = box
    wh, ww = window
    return max(1, int(ww * (bx2 - bx1) / _CROP)), max(1, int(wh * (by2 - by1) / _CROP))


def place_window(frame: np.ndarray, donor: np.ndarray, hull: np.ndarray, params: SwapParams) -> SwapParams:
    """``params`` with ``anchor`` where the window covers the most DSSIM inside the hull."""
    assert params.window is not None
    h, w = frame.shape[:2]
    box = _cut_box(hull, w, h)
    bx1, by1, bx2, by2 = box
    if bx2 - bx1 < 8 or by2 - by1 < 8:
        return replace(params, anchor=(0.0, 0.0))
    d = dssim(frame[by1:by2, bx1:bx2], donor[by1:by2, bx1:bx2]).sum(axis=2)
    inside = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(inside, hull, 1)
    d[inside[by1:by2, bx1:bx2] == 0] = 0
    ww, wh = _window_px(box, params.window)
    sy, sx = max(1, (by2 - by1) // 5), max(1, (bx2 - bx1) // 5)
    best, anchor = -1.0, (0, 0)
    for y in range(0, d.shape[0], sy):
        for x in range(0, d.shape[1], sx):
            if y + wh <= d.shape[0] and x + ww <= d.shape[1]:
                total = float(d[y:y + wh, x:x + ww].sum())
                if total > best:
                    best, anchor = total, (x, y)
    return replace(params, anchor=(anchor[0] / (bx2 - bx1), anchor[1] / (by2 - by1)))


def warp_donor(donor: np.ndarray, donor_points: np.ndarray, points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The donor frame moved so its face lies on ``points`` (``size`` = (w, h) of the frame)."""
    m = similarity(donor_points, points)
    return cv2.warpAffine(donor, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def swap_mask(shape: tuple[int, int], hull: np.ndarray, params: SwapParams) -> np.ndarray:
    """uint8 ``[h, w]`` 0/255: the hull (global) or the anchored window (partial)."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    if params.level == "global" or params.window is None or params.anchor is None:
        cv2.fillConvexPoly(mask, hull, 255)
        return mask
    box = _cut_box(hull, w, h)
    ww, wh = _window_px(box, params.window)
    x = box[0] + int(params.anchor[0] * (box[2] - box[0]))
    y = box[1] + int(params.anchor[1] * (box[3] - box[1]))
    mask[max(0, y):min(h, y + wh), max(0, x):min(w, x + ww)] = 255
    return mask


def facial_swap(frame: np.ndarray, points: np.ndarray, donor: np.ndarray, donor_points: np.ndarray,
                params: SwapParams) -> np.ndarray:
    """``frame`` with the donor's face (warped onto ``points``) pasted per ``params``."""
    h, w = frame.shape[:2]
    hull = face_hull(points)
    warped = warp_donor(donor, donor_points, points, (w, h))
    mask = swap_mask((h, w), hull, params)
    if not mask.any():
        return frame
    if params.blending == "poisson":
        x, y, bw, bh = cv2.boundingRect(mask)
        try:
            return cv2.seamlessClone(warped, frame, mask, (x + bw // 2, y + bh // 2), cv2.NORMAL_CLONE)
        except cv2.error:
            pass  # the region touches the frame edge: alpha, as CADDM falls back
    alpha = cv2.GaussianBlur(mask, (5, 5), 3).astype(np.float32)[..., None] / 255.0
    return np.clip(alpha * warped + (1 - alpha) * frame + 0.5, 0, 255).astype(np.uint8)
