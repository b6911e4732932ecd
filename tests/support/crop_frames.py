"""The frames the crop-parity goldens are cut from (``tests/stream_monitor/data/crops``):
synthetic astronaut frames (scikit-image's public-domain photo), one of them rotated, so the
crops exercise a non-trivial rotation. Deterministic; ``frame_digest`` lets the test tell a
changed frame (new scikit-image or OpenCV) from a changed crop path."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from stream_monitor.ingest.synthetic import SyntheticScene, SyntheticSpec

# (synthetic frame index, rotation in degrees about the frame centre)
FRAMES: tuple[tuple[int, float], ...] = ((0, 0.0), (40, 9.0))


def crop_frames() -> list[np.ndarray]:
    """uint8 RGB ``[480, 640, 3]`` frames, one per :data:`FRAMES` entry."""
    scene = SyntheticScene(SyntheticSpec(width=640, height=480))
    out = []
    for index, angle in FRAMES:
        frame = scene.render(index)
        if angle:
            m = cv2.getRotationMatrix2D((320.0, 240.0), angle, 1.0)
            frame = cv2.warpAffine(frame, m, (640, 480), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out.append(frame)
    return out


def frame_digest(frame: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest()[:16]
