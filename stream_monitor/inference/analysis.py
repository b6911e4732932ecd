"""Per-stream frame analysis after face detection: tracking, sampling, alignment, windows.

One :class:`StreamAnalysis` per stream, owned by the inference worker thread (it runs right
after the face-detection batch that produced its input, so the asyncio loop never warps
images). Frames reach it only when the stream's :class:`~stream_monitor.windows.DetectionGate`
admitted them (the engine skips the rest before face detection), with the set of detectors
whose stream-level sampler takes the frame. For every tracked face it asks the window bank
which detectors sample this frame (that set, or the track's own samplers when every frame
is analysed), cuts each such detector's patch (aligned crop or context region) and pushes it;
full windows and the final windows of ended tracks come back as clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..faces.track import FaceTracker
from ..types import Clip, FaceObs, Frame, TrackedFace, WindowItem
from ..windows import WindowBank
from .runners import DetectorRunner


@dataclass(frozen=True)
class FrameAnalysis:
    """What one frame (or closing a stream) produced."""

    stream_id: str
    seq: int
    pts: float
    faces: list[TrackedFace] = field(default_factory=list)
    tracks_active: int = 0
    clips: list[Clip] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)


class StreamAnalysis:
    """Tracker + window bank of one stream (worker thread only)."""

    def __init__(self, stream_id: str, runners: Mapping[str, DetectorRunner], iou_threshold: float,
                 max_missed: int) -> None:
        self.stream_id = stream_id
        self.runners = runners
        self.tracker = FaceTracker(iou_threshold=iou_threshold, max_missed=max_missed)
        self.bank = WindowBank(stream_id, [r.spec for r in runners.values()])

    def process(self, frame: Frame, faces: list[FaceObs], due: frozenset[str] | None = None) -> FrameAnalysis:
        """Track ``faces`` and window them. ``due``: the detectors the stream-level gate chose
        for this frame (``None``: each track's own samplers decide)."""
        tracked, ended = self.tracker.update(faces, frame.pts)
        clips: list[Clip] = []
        for face in tracked:
            for detector in self.bank.sample(face.track_id, frame.pts, due):
                patch, origin = self.runners[detector].aligner.patch(frame.image, face.obs)
                item = WindowItem(frame.seq, frame.pts, frame.arrival, face.obs.box, face.obs.points, patch, origin)
                clip = self.bank.push(face.track_id, detector, item)
                if clip is not None:
                    clips.append(clip)
        for track_id in ended:
            clips.extend(self.bank.end_track(track_id))
        return FrameAnalysis(self.stream_id, frame.seq, frame.pts, tracked, self.tracker.active, clips, ended)

    def close(self) -> FrameAnalysis:
        """End every track (stream stopped or reconnected): final windows and ended ids."""
        ended = self.tracker.close()
        clips = [clip for track_id in ended for clip in self.bank.end_track(track_id)]
        return FrameAnalysis(self.stream_id, -1, -1.0, [], 0, clips, ended)
