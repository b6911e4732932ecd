"""Multi-face tracking per stream (pure): greedy IoU matching with a short memory.

A face missed for up to ``max_missed`` consecutive frames keeps its track id (a blink
of the detector); a face that matches no live track starts a new id (a new person).
Matching is greedy by descending IoU, which for the handful of faces in a frame equals
the optimal assignment in practice and stays O(n·m). A track's box is extrapolated by
its last velocity while it is unmatched, so a face that moves fast during a miss is
still picked up again.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..types import BBox, FaceObs, TrackedFace


def iou(a: BBox, b: BBox) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    track_id: int
    box: BBox
    velocity: tuple[float, float] = (0.0, 0.0)
    missed: int = 0
    hits: int = 1

    def predicted(self) -> BBox:
        k = self.missed + 1
        dx, dy = self.velocity[0] * k, self.velocity[1] * k
        return (self.box[0] + dx, self.box[1] + dy, self.box[2] + dx, self.box[3] + dy)

    def update(self, box: BBox) -> None:
        k = self.missed + 1
        cx0, cy0 = (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2
        cx1, cy1 = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        self.velocity = ((cx1 - cx0) / k, (cy1 - cy0) / k)
        self.box = box
        self.missed = 0
        self.hits += 1


class FaceTracker:
    """Assigns stable ids to faces across the frames of one stream.

    ``update(faces)`` returns the tracked faces of this frame and the ids of tracks that
    ended (missed more than ``max_missed`` frames in a row). ``close()`` ends every track
    (the stream stopped).
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 2) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError("iou_threshold must be in (0, 1]")
        if max_missed < 0:
            raise ValueError("max_missed must be >= 0")
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1

    @property
    def active(self) -> int:
        """Number of live tracks (including ones currently missed)."""
        return len(self._tracks)

    def update(self, faces: list[FaceObs]) -> tuple[list[TrackedFace], list[int]]:
        pairs = sorted(
            ((iou(t.predicted(), f.box), tid, fi) for tid, t in self._tracks.items() for fi, f in enumerate(faces)),
            reverse=True,
        )
        matched_tracks: set[int] = set()
        assignment: dict[int, int] = {}
        for overlap, tid, fi in pairs:
            if overlap < self.iou_threshold:
                break
            if tid in matched_tracks or fi in assignment:
                continue
            matched_tracks.add(tid)
            assignment[fi] = tid
        out: list[TrackedFace] = []
        for fi, face in enumerate(faces):
            known = assignment.get(fi)
            if known is None:
                known = self._next_id
                self._next_id += 1
                self._tracks[known] = _Track(known, face.box)
            else:
                self._tracks[known].update(face.box)
            out.append(TrackedFace(known, face))
        seen = {t.track_id for t in out}
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
