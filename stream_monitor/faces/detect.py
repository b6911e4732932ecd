"""Face detection backends: the interface, the shared selection rule, the backend table.

A backend turns whole frames into :class:`~stream_monitor.types.FaceObs` lists. It runs in
the inference worker thread (torch or onnxruntime inside, nothing asyncio) and is handed a
batch of frames from any streams, so frames may differ in size.

Contract of every backend's ``detect(images)``:

* ``images``: uint8 RGB ``[H, W, 3]`` arrays of any sizes.
* returns one list per image, in input order, of faces with ``box`` ``(x1, y1, x2, y2)``
  in that image's float pixels (a box may reach past the image edge: the detectors
  regress it), ``points`` float32 ``[5, 2]`` in the same pixels, ordered image-left eye
  centre, image-right eye centre, nose tip, image-left mouth corner, image-right mouth
  corner (for a frontal face: the subject's right eye first), and ``score`` in ``[0, 1]``;
* filtered by :func:`select_faces`: ``score >= min_confidence``, both box sides
  ``>= min_size`` pixels, at most ``max_faces`` per image (highest score first, ties
  broken by the larger box), sorted in that order.

Backends come from the explicit table :data:`BACKENDS`; each builder imports its heavy
third-party package only when chosen (insightface pulls in onnxruntime, scikit-image
and more, which an MTCNN deployment never needs).
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
import torch

from ..config import FacesConfig
from ..errors import FaceBackendError
from ..types import FaceObs


class FaceDetector(Protocol):
    """Finds faces in a batch of frames; see the module docstring for the contract."""

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceObs]]:
        ...


def box_sides(face: FaceObs) -> tuple[float, float]:
    """(width, height) of a face box in pixels."""
    x1, y1, x2, y2 = face.box
    return x2 - x1, y2 - y1


def select_faces(faces: Iterable[FaceObs], cfg: FacesConfig) -> list[FaceObs]:
    """Apply the configured confidence, size and count limits to one image's faces.

    Keeps faces with ``score >= cfg.min_confidence`` whose box is at least
    ``cfg.min_size`` pixels on both sides, sorts them by descending score (ties: larger
    box area first) and keeps the first ``cfg.max_faces``.
    """
    kept = [f for f in faces if f.score >= cfg.min_confidence and min(box_sides(f)) >= cfg.min_size]
    kept.sort(key=lambda f: (-f.score, -box_sides(f)[0] * box_sides(f)[1]))
    return kept[: cfg.max_faces]


def make_face(box: Sequence[float], points: np.ndarray, score: float) -> FaceObs:
    """A :class:`FaceObs` from a backend's raw numbers (any float dtype, even ``object``)."""
    pts = np.asarray(points, dtype=np.float32).reshape(5, 2)
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    return FaceObs(box=(x1, y1, x2, y2), points=pts, score=float(np.clip(float(score), 0.0, 1.0)))


def check_images(images: Sequence[np.ndarray]) -> None:
    """Raise ``ValueError`` unless every image is uint8 ``[H, W, 3]`` (callers' bug, not data)."""
    for i, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {i}: expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")


def _build_mtcnn(cfg: FacesConfig, device: torch.device) -> FaceDetector:
    from .mtcnn import MtcnnDetector

    return MtcnnDetector(cfg, device)


def _build_scrfd(cfg: FacesConfig, device: torch.device) -> FaceDetector:
    from .scrfd import ScrfdDetector

    if cfg.scrfd_model is None:  # FacesConfig already refuses this; kept for direct callers
        raise FaceBackendError("faces.backend 'scrfd' needs faces.scrfd_model (e.g. buffalo_l's det_10g.onnx)")
    return ScrfdDetector(cfg.scrfd_model, cfg, device)


BACKENDS: dict[str, Callable[[FacesConfig, torch.device], FaceDetector]] = {
    "mtcnn": _build_mtcnn,
    "scrfd": _build_scrfd,
}


def create_detector(cfg: FacesConfig, device: torch.device) -> FaceDetector:
    """The backend ``cfg.backend`` names, on ``device`` (CPU or CUDA).

    Raises :class:`FaceBackendError` when the backend is unknown or cannot be built (for
    SCRFD: a missing, unreadable or non-SCRFD model file).
    """
    try:
        build = BACKENDS[cfg.backend]
    except KeyError:
        raise FaceBackendError(f"unknown face backend {cfg.backend!r}; choose one of {sorted(BACKENDS)}") from None
    return build(cfg, device)
