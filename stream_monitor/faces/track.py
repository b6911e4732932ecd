"""Multi-face tracking per stream (pure): greedy matching with motion and a short memory.

A face missed for up to ``max_missed`` consecutive analysed frames keeps its track id (a
blink of the detector); a face that matches no live track starts a new id (a new person).
``max_missed`` counts analysed frames (face-detection passes), not decoded frames or
seconds, deliberately: a detector's blink is an event per pass, and face detection runs
only at the rate the detectors sample (``faces.detect_fps``: 8 fps for CADDM, 1.875 fps
for StA alone), so the same count tolerates a proportionally longer gap (3 misses: 0.375 s,
1.6 s) where a time budget scaled from 30 fps (0.1 s) would end a track on its first miss
and restart its windows. The cost is a later end event at sparse rates.

Matching, per frame: each live track predicts its box from its last velocity (in pixels
per second of stream time when timestamps are given, so irregular gaps between analysed
frames — frames dropped under load — are handled), then pairs are taken greedily by
descending IoU with the prediction (≥ ``iou_threshold``); tracks and faces left over are
paired by centre distance when the centres are within ``max_shift`` box widths and the
sizes agree within a factor of two (a fast face between two sparse frames can have no
overlap at all). Greedy matching equals the optimal assignment in practice for the
handful of faces in a frame and stays O(n·m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..types import BBox, FaceObs, TrackedFace


def iou(a: BBox, b: BBox) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre(b: BBox) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _width(b: BBox) -> float:
    return max(b[2] - b[0], 1e-6)


@dataclass
class _Track:
    track_id: int
    box: BBox
    t: float
    velocity: tuple[float, float] = (0.0, 0.0)  # centre motion per unit of t
    missed: int = 0

    def predicted(self, t: float) -> BBox:
        dt = t - self.t
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        return (self.box[0] + dx, self.box[1] + dy, self.box[2] + dx, self.box[3] + dy)

    def update(self, box: BBox, t: float) -> None:
        dt = t - self.t
        if dt > 0:
            (cx0, cy0), (cx1, cy1) = _centre(self.box), _centre(box)
            self.velocity = ((cx1 - cx0) / dt, (cy1 - cy0) / dt)
        self.box, self.t, self.missed = box, t, 0


class FaceTracker:
    """Assigns stable ids to faces across the frames of one stream.

    ``update(faces, t)`` returns the tracked faces of this frame and the ids of tracks that
    ended (missed more than ``max_missed`` analysed frames in a row). ``t`` is the frame's
    stream time in seconds; without it, frames count as one time unit apart. ``close()``
    ends every track (the stream stopped).
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 2, max_shift: float = 1.0) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError("iou_threshold must be in (0, 1]")
        if max_missed < 0:
            raise ValueError("max_missed must be >= 0")
        if max_shift < 0:
            raise ValueError("max_shift must be >= 0")
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.max_shift = max_shift
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._frames = 0

    @property
    def active(self) -> int:
        """Number of live tracks (including ones currently missed)."""
        return len(self._tracks)

    def predictions(self, t: float) -> list[BBox] | None:
        """Predicted boxes of every live track at stream time ``t``, or ``None`` when some
        track was missed on its last frame (or there is none): then only a full-frame pass
        can say where its face went (region detection, :mod:`stream_monitor.faces.roi`)."""
        if not self._tracks or any(tr.missed for tr in self._tracks.values()):
            return None
        return [tr.predicted(t) for tr in self._tracks.values()]

    def _match(self, faces: list[FaceObs], t: float) -> dict[int, int]:
        """Face index → track id."""
        predicted = {tid: tr.predicted(t) for tid, tr in self._tracks.items()}
        assignment: dict[int, int] = {}
        used: set[int] = set()
        by_iou = sorted(((iou(p, f.box), tid, fi) for tid, p in predicted.items() for fi, f in enumerate(faces)),
                        reverse=True)
        for overlap, tid, fi in by_iou:
            if overlap < self.iou_threshold:
                break
            if tid not in used and fi not in assignment:
                used.add(tid)
                assignment[fi] = tid
        by_distance = []
        for tid, p in predicted.items():
            if tid in used:
                continue
            (px, py), pw = _centre(p), _width(p)
            for fi, f in enumerate(faces):
                if fi in assignment or not 0.5 <= _width(f.box) / pw <= 2.0:
                    continue
                (fx, fy) = _centre(f.box)
                shift = math.hypot(fx - px, fy - py) / max(pw, _width(f.box))
                if shift <= self.max_shift:
                    by_distance.append((shift, tid, fi))
        for _, tid, fi in sorted(by_distance):
            if tid not in used and fi not in assignment:
                used.add(tid)
                assignment[fi] = tid
        return assignment

    def update(self, faces: list[FaceObs], t: float | None = None) -> tuple[list[TrackedFace], list[int]]:
        now = float(self._frames) if t is None else t
        self._frames += 1
        assignment = self._match(faces, now)
        out: list[TrackedFace] = []
        for fi, face in enumerate(faces):
            known = assignment.get(fi)
            if known is None:
                known = self._next_id
                self._next_id += 1
                self._tracks[known] = _Track(known, face.box, now)
            else:
                self._tracks[known].update(face.box, now)
            out.append(TrackedFace(known, face))
        seen = {f.track_id for f in out}
        ended = []
        for tid, track in list(self._tracks.items()):
            if tid in seen:
                continue
            track.missed += 1
            if track.missed > self.max_missed:
                ended.append(tid)
                del self._tracks[tid]
        return out, ended

    def close(self) -> list[int]:
        """End every live track; returns their ids."""
        ended = sorted(self._tracks)
        self._tracks.clear()
        return ended
