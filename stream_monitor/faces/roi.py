"""Track-guided face detection: look for known faces only where their tracks predict them.

Full-frame detection dominates the per-frame cost of a stream (MTCNN: 60–90 ms for a 720p
frame, 110–125 ms at 1080p on the 2-core dev box, a region 2.3–3.3× less; BENCHMARKS.md,
``tools/bench_front.py``), although between two
sampled frames a tracked face moves a fraction of its size. So, per frame, when every live
track of the stream was seen on its last analysed frame and a full-frame pass happened less
than ``faces.roi.refresh_s`` ago, the detector runs on one *region* per track instead of
the frame:

* the region is a square of side ``faces.roi.scale`` × the larger side of the track's
  predicted box (:meth:`~stream_monitor.faces.track.FaceTracker.predictions`), centred on
  it, rounded up to a multiple of :data:`SIDE_STEP` pixels (so regions of similar faces
  batch together) and cut at the frame's **native resolution** (black where it passes the
  frame edge) — the detector sees the face's pixels exactly as in the full frame, and its
  landmarks agree with full-frame ones to within MTCNN's own frame-to-frame jitter
  (``tests/stream_monitor/test_roi.py`` bounds the difference);
* the detector's smallest face is ``1 / (2 × scale)`` of the region side (half the
  predicted face: a face does not halve between two sampled frames), so its image pyramid
  starts at the face's scale instead of at ``faces.min_size``;
* of the faces found in a region, the one that overlaps the predicted box most is kept
  (a neighbour cut by the region's edge would have a truncated box); regions' faces are
  mapped back by the region's offset, duplicates (IoU > 0.5, two tracks' regions finding
  one face) keep the higher score, and :func:`~stream_monitor.faces.detect.select_faces`
  applies the configured limits in frame pixels as for a full frame.

A region that yields no face (the face turned, left, or moved further than the margin)
sends its frame to full-frame detection at once (``fallback``), so losing the face costs
one full pass, never a track. New faces appear within ``refresh_s`` (a full pass at least
that often per stream). The backend must accept a per-call smallest face size
(``supports_regions``: MTCNN does; SCRFD runs at a fixed input size, where a region saves
nothing, so it always detects full frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, cast

import numpy as np

from ..config import FacesConfig
from ..types import BBox, FaceObs
from .detect import FaceDetector, select_faces
from .track import iou

SIDE_STEP = 32  # region sides are multiples of this many pixels (batchable groups)
_DUPLICATE_IOU = 0.5
_MIN_MATCH_IOU = 0.1  # a region's face must overlap the predicted box at least this much

Mode = Literal["full", "region", "fallback"]


class RegionCapable(FaceDetector, Protocol):
    """A backend that can be told the smallest face to look for on each call."""

    supports_regions: bool

    def detect_sized(self, images: Sequence[np.ndarray], min_face: float) -> list[list[FaceObs]]:
        """As ``detect``, with the pyramid starting at ``min_face`` pixels; faces are not
        filtered by ``faces.min_size`` (the caller selects in frame pixels)."""
        ...


@dataclass(frozen=True)
class Region:
    """A square cut of a frame: top-left ``(x, y)`` in frame pixels, ``side`` pixels."""

    x: int
    y: int
    side: int
    prior: BBox  # the track's predicted box, frame pixels

    def cut(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB ``[side, side, 3]``: the frame's pixels, black outside the frame."""
        h, w = image.shape[:2]
        out = np.zeros((self.side, self.side, 3), dtype=np.uint8)
        x1, y1 = max(self.x, 0), max(self.y, 0)
        x2, y2 = min(self.x + self.side, w), min(self.y + self.side, h)
        if x2 > x1 and y2 > y1:
            out[y1 - self.y:y2 - self.y, x1 - self.x:x2 - self.x] = image[y1:y2, x1:x2]
        return out

    def to_frame(self, face: FaceObs) -> FaceObs:
        """A face found in the cut, in frame pixels."""
        x1, y1, x2, y2 = face.box
        return FaceObs((x1 + self.x, y1 + self.y, x2 + self.x, y2 + self.y),
                       (face.points + np.array([self.x, self.y], dtype=np.float32)).astype(np.float32), face.score)


def region_for(prior: BBox, scale: float) -> Region:
    """The region around a predicted box (see the module docstring)."""
    x1, y1, x2, y2 = prior
    size = max(x2 - x1, y2 - y1, 1.0) * scale
    side = max(SIDE_STEP, int(math.ceil(size / SIDE_STEP)) * SIDE_STEP)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return Region(int(round(cx - side / 2)), int(round(cy - side / 2)), side, prior)


def _best_match(faces: list[FaceObs], prior: BBox) -> FaceObs | None:
    best = max(faces, key=lambda f: iou(f.box, prior), default=None)
    return best if best is not None and iou(best.box, prior) >= _MIN_MATCH_IOU else None


def _dedupe(faces: list[FaceObs]) -> list[FaceObs]:
    kept: list[FaceObs] = []
    for face in sorted(faces, key=lambda f: -f.score):
        if all(iou(face.box, k.box) <= _DUPLICATE_IOU for k in kept):
            kept.append(face)
    return kept


class RegionDetector:
    """Full-frame or region detection per image, batched; see the module docstring.

    ``detect(images, priors)``: ``priors[i]`` is ``None`` for a full-frame pass, else the
    predicted boxes of the image's tracks (frame pixels). Returns, per image, the selected
    faces (the :mod:`.detect` contract) and how they were found.
    """

    def __init__(self, detector: FaceDetector, cfg: FacesConfig) -> None:
        self.detector = detector
        self.cfg = cfg
        self.enabled = cfg.roi.enabled and bool(getattr(detector, "supports_regions", False))

    def detect(self, images: Sequence[np.ndarray],
               priors: Sequence[Sequence[BBox] | None]) -> list[tuple[list[FaceObs], Mode]]:
        if len(images) != len(priors):
            raise ValueError(f"{len(images)} images but {len(priors)} prior lists")
        out: list[tuple[list[FaceObs], Mode]] = [([], "full")] * len(images)  # every slot set below
        regions = {i: [region_for(b, self.cfg.roi.scale) for b in p]
                   for i, p in enumerate(priors) if self.enabled and p}
        full = [i for i in range(len(images)) if i not in regions]
        fallback: list[int] = []
        for i, found in self._detect_regions(images, regions).items():
            if any(f is None for f in found):
                fallback.append(i)
            else:
                out[i] = (select_faces(_dedupe([f for f in found if f is not None]), self.cfg), "region")
        todo = full + fallback
        if todo:
            for i, faces in zip(todo, self.detector.detect([images[i] for i in todo])):
                out[i] = (faces, "fallback" if i in fallback else "full")
        return out

    def _detect_regions(self, images: Sequence[np.ndarray],
                        regions: dict[int, list[Region]]) -> dict[int, list[FaceObs | None]]:
        """Per image, the matched face of each region (``None``: not found), in region order."""
        detector = cast(RegionCapable, self.detector)  # enabled only when it supports regions
        by_side: dict[int, list[tuple[int, int]]] = {}
        for i, rs in regions.items():
            for k, r in enumerate(rs):
                by_side.setdefault(r.side, []).append((i, k))
        found: dict[int, list[FaceObs | None]] = {i: [None] * len(rs) for i, rs in regions.items()}
        for side, members in by_side.items():
            cuts = [regions[i][k].cut(images[i]) for i, k in members]
            results = detector.detect_sized(cuts, side / (2.0 * self.cfg.roi.scale))
            for (i, k), faces in zip(members, results):
                region = regions[i][k]
                match = _best_match([region.to_frame(f) for f in faces], region.prior)
                found[i][k] = match
        return found
