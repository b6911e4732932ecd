"""Face geometry for the synth recipes: a face outline from five points, similarity fits,
and which face of a frame a clip follows.

The five points (image-left eye, image-right eye, nose tip, image-left and image-right
mouth corner; :mod:`stream_monitor.types`) say where the face is but not its outline, which
the blending masks need. So a fixed outline — the jaw from cheek to cheek through the chin,
closed over the eyebrows — is drawn once in a canonical 112×112 face frame (the ArcFace
five-point template, the one DETECTORS.md gives for StA), mapped onto the frame by the
similarity that takes the template's points to the detected ones, and closed with the
points themselves into a convex hull. It covers what a 68-point hull covers on a frontal
face (brows to chin, cheek to cheek) and turns, scales and moves with the five points.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from ..faces.track import iou
from ..types import FaceObs

# ArcFace 112x112 five-point template (x already shifted by +8 for the square crop).
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def _outline_112(n: int = 32) -> np.ndarray:
    """A superellipse (exponent 2.6: squarer than an ellipse at the brow line) from the brows
    (y 38) to the chin (y 118) and cheek to cheek (x 19..93) in the template's frame."""
    cx, cy, a, b, e = 56.0, 78.0, 37.0, 40.0, 2.6
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = cx + a * np.sign(c) * np.abs(c) ** (2 / e)
    y = cy + b * np.sign(s) * np.abs(s) ** (2 / e)
    return np.stack([x, y], axis=1)


OUTLINE_112 = _outline_112()


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 least-squares similarity (rotation, uniform scale, translation) taking the
    points ``src`` onto ``dst`` (Umeyama's closed form, no reflection)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s0, d0 = src - ms, dst - md
    cov = d0.T @ s0 / len(src)
    u, sv, vt = np.linalg.svd(cov)
    fix = np.diag([1.0, 1.0 if np.linalg.det(u @ vt) >= 0 else -1.0])
    rot = u @ fix @ vt
    var = (s0 ** 2).sum() / len(src)
    scale = float(np.trace(np.diag(sv) @ fix) / var) if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = md - scale * rot @ ms
    return m


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def face_hull(points: np.ndarray) -> np.ndarray:
    """The face's convex hull in frame pixels, int32 ``[k, 2]`` (see the module docstring)."""
    m = similarity(TEMPLATE_112, points)
    outline = apply(m, OUTLINE_112)
    hull = cv2.convexHull(np.concatenate([outline, np.asarray(points, np.float64)]).astype(np.float32))
    return np.round(hull.reshape(-1, 2)).astype(np.int32)


def hull_box(hull: np.ndarray) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` of a hull."""
    return (float(hull[:, 0].min()), float(hull[:, 1].min()), float(hull[:, 0].max()), float(hull[:, 1].max()))


def face_size(points: np.ndarray) -> float:
    """A face's scale in pixels: the side of its outline's bounding box (larger side)."""
    x1, y1, x2, y2 = hull_box(face_hull(points))
    return max(x2 - x1, y2 - y1, 1.0)


def follow(faces: Sequence[FaceObs], previous: FaceObs | None, min_iou: float = 0.3) -> FaceObs | None:
    """The face a clip follows in this frame: the one overlapping the previous choice most
    (IoU ≥ ``min_iou``), else the most confident; ``None`` without faces."""
    if not faces:
        return None
    if previous is not None:
        best = max(faces, key=lambda f: iou(f.box, previous.box))
        if iou(best.box, previous.box) >= min_iou:
            return best
    return faces[0]  # select_faces sorts by confidence
