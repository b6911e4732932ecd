"""Per-stream frame analysis after face detection: tracking, sampling, alignment, windows.

One :class:`StreamAnalysis` per stream, owned by the inference worker thread (it runs right
after the face-detection batch that produced its input, so the asyncio loop never warps
images). Frames reach it only when the stream's :class:`~stream_monitor.windows.DetectionGate`
admitted them (the engine skips the rest before face detection), with the set of detectors
whose stream-level sampler takes the frame. For every tracked face it asks the window bank
which detectors sample this frame (that set, or the track's own samplers when every frame
is analysed), cuts each such detector's patch (aligned crop or context region) and pushes it;
full windows and the final windows of ended tracks come back as clips. Consecutive-frame
detectors (StyleFlow) sample by the gate's links (:class:`~stream_monitor.windows.Link`), and
each frame first closes the runs it cannot continue (:meth:`WindowBank.open_frame`); runs
discarded for a gap come back in :attr:`FrameAnalysis.discarded`.

Alignment (``faces.align_device``, :func:`resolve_align_device`): with OpenCV on the host
every (face, detector) crop is one ``cv2.warpAffine`` of the frame. On the device path the
frame is uploaded once (only when some per-frame template, CADDM's or StA's, samples it;
counted in ``frames_uploaded``) and each per-frame template cuts all its faces' crops in one
batched warp (:meth:`~stream_monitor.faces.align.Aligner.patches`); the crops stay on the
device as the window items' patches. Per-clip templates (StyleFlow) keep a host copy of the
context region either way; their warp waits for the complete window (the runner's aligner).

Keypoints (``faces.landmarks``, :mod:`stream_monitor.faces.landmarks`): before the warps,
the faces sampled by a detector whose landmark source is dlib get dlib's landmarks, all of
a frame's faces in one pass per predictor (each face once, however many detectors use it);
each such detector's crop is then fitted to its authors' keypoints
(:data:`models.align.AUTHORS_CROPS`). A fit that fails the plausibility check falls back to
the detector's points for that face and frame, counted in :attr:`StreamAnalysis.landmark_fallbacks`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np
import torch

from models.align import authors_crop

from ..faces.align import to_device
from ..faces.landmarks import LandmarkFit, Landmarker, LandmarkSource
from ..faces.track import FaceTracker
from ..types import Clip, FaceObs, Frame, Patch, TrackedFace, WindowItem
from ..windows import Link, WindowBank
from .runners import DetectorRunner

log = logging.getLogger(__name__)


def resolve_align_device(setting: Literal["auto", "cpu", "device"], device: torch.device) -> torch.device | None:
    """``faces.align_device`` → where window crops are warped: ``device`` (batched torch on the
    detectors' device) or ``None`` (OpenCV on the host). ``"auto"`` picks the device only on
    CUDA: there it saves a warp per crop and an upload per batch; on a CPU OpenCV is faster."""
    if setting == "cpu":
        return None
    if setting == "device":
        return device
    if setting == "auto":
        return device if device.type == "cuda" else None
    raise ValueError(f"faces.align_device must be auto, cpu or device, not {setting!r}")


@dataclass(frozen=True)
class FrameAnalysis:
    """What one frame (or closing a stream) produced. ``discarded``: consecutive-frame runs
    discarded for a gap meanwhile, by ``(detector, reason)`` (:meth:`WindowBank.take_discarded`)."""

    stream_id: str
    seq: int
    pts: float
    faces: list[TrackedFace] = field(default_factory=list)
    tracks_active: int = 0
    clips: list[Clip] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    discarded: dict[tuple[str, str], int] = field(default_factory=dict)


class StreamAnalysis:
    """Tracker + window bank of one stream (worker thread only)."""

    def __init__(self, stream_id: str, runners: Mapping[str, DetectorRunner], iou_threshold: float,
                 max_missed: int, align_device: torch.device | None = None,
                 landmarker: Landmarker | None = None) -> None:
        self.stream_id = stream_id
        self.runners = runners
        self.tracker = FaceTracker(iou_threshold=iou_threshold, max_missed=max_missed)
        self.bank = WindowBank(stream_id, [r.spec for r in runners.values()])
        self.align_device = align_device  # None: OpenCV on the host (resolve_align_device)
        self.frames_uploaded = 0  # frames copied to align_device (at most one per frame), for tests/benchmarks
        self.landmarker = landmarker  # None: every crop from the face detector's points
        self.landmark_fits = 0  # dlib fits of this stream's faces
        self.landmark_fallbacks = 0  # of which implausible: the detector's points were used

    def process(self, frame: Frame, faces: list[FaceObs], due: frozenset[str] | None = None,
                links: Mapping[str, Link] | None = None) -> FrameAnalysis:
        """Track ``faces`` and window them. ``due``: the detectors the stream-level gate chose
        for this frame (``None``: each track's own samplers decide); ``links``: the gate's
        for consecutive-frame detectors (``None``: no gate, the bank decides from ``seq``/``pts``)."""
        tracked, ended = self.tracker.update(faces, frame.pts)
        clips: list[Clip] = self.bank.open_frame(frame.seq, frame.pts, links)
        # Every (face, detector) sample first, so the device path can batch the warps.
        wanted = [(face, detector) for face in tracked for detector in self.bank.sample(face.track_id, frame.pts, due)]
        keypoints = self._keypoints(frame, wanted)
        for (face, detector), kp, (patch, origin) in zip(wanted, keypoints, self._patches(frame, wanted, keypoints)):
            points = face.obs.points if kp is None else kp.astype(np.float32)
            item = WindowItem(frame.seq, frame.pts, frame.arrival, face.obs.box, points, patch, origin)
            clip = self.bank.push(face.track_id, detector, item)
            if clip is not None:
                clips.append(clip)
        for track_id in ended:
            clips.extend(self.bank.end_track(track_id))
        return FrameAnalysis(self.stream_id, frame.seq, frame.pts, tracked, self.tracker.active, clips, ended,
                             self.bank.take_discarded())

    def _keypoints(self, frame: Frame, wanted: list[tuple[TrackedFace, str]]) -> list[np.ndarray | None]:
        """Each sample's authors' five points from dlib's landmarks, or ``None`` (the
        detector's points: landmark source ``detector``, or an implausible dlib fit)."""
        out: list[np.ndarray | None] = [None] * len(wanted)
        if self.landmarker is None:
            return out
        # One fit per (face, predictor), whatever the number of detectors using it.
        needed: dict[LandmarkSource, dict[int, TrackedFace]] = {}
        for face, detector in wanted:
            source = self.landmarker.source(detector)
            if source != "detector":
                needed.setdefault(source, {})[face.track_id] = face
        fits: dict[tuple[LandmarkSource, int], LandmarkFit] = {}
        for source, faces in needed.items():
            results = self.landmarker.fit(frame.image, [f.obs for f in faces.values()], source)
            for track_id, result in zip(faces, results):
                fits[(source, track_id)] = result
                self.landmark_fits += 1
                self.landmark_fallbacks += result.shape is None
        for i, (face, detector) in enumerate(wanted):
            fit = fits.get((self.landmarker.source(detector), face.track_id))
            if fit is not None and fit.shape is not None:
                out[i] = authors_crop(self.runners[detector].aligner.template).keypoints(fit.shape)
        return out

    def _patches(self, frame: Frame, wanted: list[tuple[TrackedFace, str]],
                 keypoints: list[np.ndarray | None]) -> list[tuple[Patch, tuple[int, int]]]:
        """Each sample's ``(patch, origin)``: OpenCV per crop, or on the device one upload of
        the frame and one batched warp per per-frame template (crops ``[S, S, 3]`` views of
        that batch, left on the device)."""
        out: list[tuple[Patch, tuple[int, int]] | None] = [None] * len(wanted)
        batched: dict[str, list[int]] = {}
        for i, (face, detector) in enumerate(wanted):
            aligner = self.runners[detector].aligner
            if self.align_device is None or aligner.template.per_clip:
                out[i] = aligner.patch(frame.image, face.obs, keypoints[i])
            else:
                batched.setdefault(detector, []).append(i)
        if batched:
            assert self.align_device is not None
            image = to_device(frame.image, self.align_device)
            self.frames_uploaded += 1
            for detector, rows in batched.items():
                crops = self.runners[detector].aligner.patches(image, [wanted[i][0].obs for i in rows],
                                                               [keypoints[i] for i in rows])
                for i, crop in zip(rows, crops):
                    out[i] = (crop, (0, 0))
        return [p for p in out if p is not None]

    def close(self) -> FrameAnalysis:
        """End every track (stream stopped or reconnected): final windows and ended ids."""
        if self.landmark_fits:
            log.info("%s: %d dlib landmark fits, %d implausible (the face detector's points used)",
                     self.stream_id, self.landmark_fits, self.landmark_fallbacks)
        ended = self.tracker.close()
        clips = [clip for track_id in ended for clip in self.bank.end_track(track_id)]
        return FrameAnalysis(self.stream_id, -1, -1.0, [], 0, clips, ended, self.bank.take_discarded())
