"""Shared value types of the pipeline: frames, face observations, window items, clips, scores.

Units: ``pts`` is stream time in seconds (from the container/RTP clock, starting near 0);
``arrival`` is wall-clock time (``time.time()``, seconds since the epoch) when the frame left
the decoder. Images are uint8 RGB ``[H, W, 3]``; boxes are ``(x1, y1, x2, y2)`` in frame
pixels; five facial points are float32 ``[5, 2]`` in frame pixels, ordered image-left eye
centre, image-right eye centre, nose tip, image-left mouth corner, image-right mouth corner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:  # only for annotations: this module stays importable without loading torch
    import torch

BBox = tuple[float, float, float, float]
# A window item's pixels: a host array (OpenCV alignment) or a device tensor (batched alignment).
Patch = Union[np.ndarray, "torch.Tensor"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded video frame of one stream."""

    stream_id: str
    seq: int
    pts: float
    arrival: float
    image: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass(frozen=True, slots=True)
class FaceObs:
    """One detected face: box, five points and detector confidence in [0, 1]."""

    box: BBox
    points: np.ndarray
    score: float


@dataclass(frozen=True, slots=True)
class TrackedFace:
    """A face observation assigned to a track id (unique per stream)."""

    track_id: int
    obs: FaceObs


@dataclass(eq=False, slots=True)
class WindowItem:
    """One sampled frame of one track, as a detector's window holds it.

    ``patch`` is the pixels the detector's alignment needs: an aligned crop for per-frame
    templates, or the face's context region (``patch_origin`` its top-left corner in the
    frame) for per-clip templates that fit one transform over the whole window. Always
    uint8 RGB ``[h, w, 3]``; its kind depends on ``faces.align_device``: a per-frame crop is
    a NumPy array on the OpenCV path and a torch tensor on the detectors' device on the
    batched path (no download; :func:`stream_monitor.faces.align.stack_on_device` takes
    either); a per-clip context region is always a NumPy array (warped when the window is
    complete, :meth:`~stream_monitor.faces.align.Aligner.clip_tensor`).
    ``cache`` holds per-frame results (a CADDM probability, a pSp latent, ...) written by
    the inference worker the first time a window containing this item is scored, so
    overlapping windows do not recompute them. Only the worker thread touches ``cache``.
    """

    seq: int
    pts: float
    arrival: float
    box: BBox
    points: np.ndarray
    patch: Patch
    patch_origin: tuple[int, int] = (0, 0)
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Clip:
    """A window of one track for one detector, ready for inference.

    ``final`` marks a window emitted at track end from a partial buffer (see
    :mod:`stream_monitor.windows` for the policy); ``padded`` how many items were added
    by reflection to reach the detector's window length.
    """

    stream_id: str
    track_id: int
    detector: str
    items: tuple[WindowItem, ...]
    final: bool = False
    padded: int = 0

    @property
    def start_pts(self) -> float:
        return self.items[0].pts

    @property
    def end_pts(self) -> float:
        return max(item.pts for item in self.items)

    @property
    def last_arrival(self) -> float:
        return max(item.arrival for item in self.items)

    @property
    def bbox(self) -> BBox:
        last = max(self.items, key=lambda item: item.seq)
        return last.box


@dataclass(frozen=True, slots=True)
class Score:
    """A detector's fake probability for one window of one track."""

    stream_id: str
    track_id: int
    detector: str
    probability: float
    start_pts: float
    end_pts: float
    frames: int
    last_arrival: float
    bbox: BBox
