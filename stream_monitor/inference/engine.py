"""The inference engine: models loaded once, one worker thread, one batching lane each for
face detection and for every detector, shared by all streams.

``analyse(frame)`` → face detection (batched across streams) and, on the worker thread
right after it, the stream's tracking/windowing (:class:`StreamAnalysis`), or ``None``
at once for a frame that no enabled detector samples (``faces.detect_fps``, the stream's
:class:`~stream_monitor.windows.DetectionGate`): face detection runs at the rate the
detectors need (CADDM's 8 fps, StA's 1.875 fps), not at the source's. Such a frame is
skipped, not dropped: it is in neither ``frames_analysed_total`` nor ``frames_dropped_total``.
Admitted frames are searched in full or, between full passes, only around their tracks'
predicted boxes (``faces.roi``, :class:`~stream_monitor.faces.roi.RegionDetector`; counted
in ``face_detections_total{mode}``).
``score(clip)`` → the clip's detector lane. The futures of both fail with
:class:`~stream_monitor.inference.batcher.Shed` when the lane sheds them under load
(counted in ``stream_monitor_frames_dropped_total{stage}``).

Worker threads (``detectors.worker_threads``): on a GPU every lane shares one thread (one
CUDA stream, batches never compete). On a CPU each lane gets its own thread: a full-size
StA window takes ~9 s and a StyleFlow window ~40 s on two cores (BENCHMARKS.md), and
sharing one thread would stall face detection and CADDM behind them; with a thread per
lane the cheap lanes keep flowing while the heavy ones compute (and shed what they cannot
keep up with). The clip detectors' threads also run at a lower CPU priority (nice 10), so
face detection and per-frame scoring get the cores first. ``auto`` picks by device.

Every lane is a :class:`~stream_monitor.inference.batcher.Batcher` keyed by stream:
batches mix streams round-robin, and under overload a lane sheds the oldest request of
its busiest stream, counted as ``frames_dropped_total{stream, stage}`` (stage ``faces``
or ``window_<detector>``), so one flooding stream cannot starve the others.

Faults (:mod:`~stream_monitor.inference.batcher`): a request that raises fails alone — a
failing batch is split and rerun down to the offending request(s), and a batch that runs out
of device memory is rerun in smaller pieces while the lane's batch size drops (and grows back
later). The face lane's per-stream tracking/windowing runs in its own ``try``: a stream whose
analysis raises gets an :class:`AnalysisError` for that frame and the other streams of the
batch keep their results and tracker updates. Failures are counted in
``stream_monitor_inference_errors_total{detector, kind}`` (``detector="faces"`` for face
detection; kinds :data:`~stream_monitor.metrics.INFERENCE_ERROR_KINDS`, and ``tracking`` for
the face lane), and a lane whose every request has failed for ``detectors.unhealthy_after_s``
is listed in :meth:`Engine.problems` (``/readyz`` answers 503) until it produces a result again.

Calibration (``detectors.calibration``): :meth:`Engine.load` reads and validates the file
before building any model and, once they are built, refuses it (:class:`CalibrationError`,
the service does not start) unless it was fitted for exactly the running detectors and
model ids (:func:`model_ids_for` computes them without building models, for
``stream-monitor calibrate``). The alert policy applies it (:mod:`stream_monitor.alerts.policy`).

Precision (``detectors.precision``) is applied by the runners (autocast, and
channels-last on CUDA; see :mod:`stream_monitor.inference.runners`); ``fp16`` without
CUDA falls back to fp32 with a warning, so one config serves GPU and CPU hosts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

import models

from ..calibration import Calibration, load_calibration
from ..config import Config, DetectorsConfig
from ..faces.detect import FaceDetector, create_detector
from ..faces.landmarks import Landmarker, create_landmarker
from ..faces.roi import RegionDetector
from ..metrics import FACE_ERROR_KINDS, INFERENCE_ERROR_KINDS, Metrics
from ..types import BBox, Clip, Frame
from ..weights import model_name, resolve_all
from ..windows import DetectionGate, Link, WindowSpec
from .analysis import FrameAnalysis, StreamAnalysis, resolve_align_device
from .batcher import Batcher
from .runners import DetectorRunner, model_fingerprint, runner_class
from .worker import InferenceWorker, resolve_device

log = logging.getLogger(__name__)

# Final windows need at least half a clip of real frames (StyleFlow's authors skip tracks
# shorter than 16 of 32 frames); per-frame models score whatever is left.
_MIN_FINAL_FRACTION = 0.5
# CPU priority of the clip detectors' threads when each lane has its own (see the docstring).
_HEAVY_NICE = 10


def window_spec(detector: str, card: models.ModelCard, sample_fps: float | str | None, window_len: int | None,
                window_stride: int | None) -> WindowSpec:
    """The card's windowing with the config's overrides applied (``sample_fps="all"``: every frame)."""
    length = window_len or card.window_len
    per_frame = card.clip_len == 1
    if not per_frame and length != card.clip_len:
        raise ValueError(f"{detector}: window_len must equal the model's clip length {card.clip_len}")
    return WindowSpec(detector=detector, window_len=length, stride=window_stride or card.window_stride,
                      sample_fps=card.sample_fps if sample_fps is None else
                      None if sample_fps == "all" else float(sample_fps),
                      min_final=1 if per_frame else max(1, int(length * _MIN_FINAL_FRACTION)),
                      pad_final=not per_frame, consecutive=card.consecutive)


def model_ids_for(dcfg: DetectorsConfig) -> dict[str, str]:
    """The ids :attr:`Engine.model_ids` will report for ``dcfg`` (``name@sha256 prefix`` of the
    resolved checkpoint files, ``name@random`` with random weights), without building models;
    raises ``WeightsError`` like :meth:`Engine.load` when files are missing."""
    resolved = {} if dcfg.random_weights else resolve_all(dcfg)
    return {d: model_fingerprint(model_name(d, dcfg), resolved[d].files if d in resolved else ())
            for d in dcfg.enabled}


class AnalysisError(Exception):
    """A stream's tracking/windowing of one frame raised (the cause is chained); counted as
    ``inference_errors_total{detector="faces", kind="tracking"}``. Only that stream's frame
    fails: the other streams of the face batch keep their results."""

    kind = "tracking"


@dataclass(frozen=True)
class DetectRequest:
    """A face-detection request: the frame and the detectors its stream's gate chose
    (``None``: each track's own samplers decide), and the gate's links for the
    consecutive-frame detectors that sample it (``None``: no gate)."""

    frame: Frame
    due: frozenset[str] | None
    links: Mapping[str, Link] | None = None

    @property
    def stream_id(self) -> str:  # the batcher's fairness key and the shed counter's label
        return self.frame.stream_id


class Engine:
    """Models, worker and lanes. Build with :meth:`load` (blocking), then :meth:`start`."""

    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.device = resolve_device(cfg.detectors.device)
        threads = cfg.detectors.worker_threads
        self.shared_worker = threads == "shared" or (threads == "auto" and self.device.type == "cuda")
        self.worker = InferenceWorker("inference")  # face detection, tracking, windows (and all lanes if shared)
        self._workers: dict[str, InferenceWorker] = {}
        self.runners: dict[str, DetectorRunner] = {}
        self.face_detector: FaceDetector | None = None
        self._streams: dict[str, StreamAnalysis] = {}
        self._gates: dict[str, DetectionGate] = {}  # loop thread only (analyse runs there)
        self.regions: RegionDetector | None = None
        self.landmarker: Landmarker | None = None  # faces.landmarks: dlib's fits for the authors' keypoints
        self._last_full: dict[str, float] = {}  # worker thread: pts of each stream's last full-frame pass
        self._faces: Batcher[DetectRequest, FrameAnalysis] | None = None
        self._lanes: dict[str, Batcher[Clip, float]] = {}
        self.calibration: Calibration | None = None  # detectors.calibration, checked against the models

    @property
    def calibrated(self) -> bool:
        """Whether scores are calibrated probabilities: only with a calibration file fitted on
        these models (``stream-monitor calibrate``). The authors' weights alone are not: their
        probabilities were never calibrated for live video, so 0.5 is no operating point."""
        return self.calibration is not None

    @property
    def model_ids(self) -> dict[str, str]:
        return {name: r.model_id for name, r in self.runners.items()}

    @property
    def align_device(self) -> torch.device | None:
        """Where face crops are warped (``faces.align_device``): the detectors' device
        (batched torch, one upload per frame) or ``None`` (OpenCV on the host)."""
        return resolve_align_device(self.cfg.faces.align_device, self.device)

    def load(self) -> None:
        """Resolve weights (``WeightsError`` if missing), build and load every model."""
        dcfg = self.cfg.detectors
        # A bad calibration file fails before minutes of model building.
        calibration = load_calibration(dcfg.calibration) if dcfg.calibration is not None else None
        resolved = {} if dcfg.random_weights else resolve_all(dcfg)
        if dcfg.random_weights:
            log.warning("RANDOM WEIGHTS: detectors are untrained; scores are meaningless and every alert says "
                        "\"calibrated\": %s", "false" if calibration is None else
                        "true only because the calibration file was fitted on these same random models")
        precision = dcfg.precision
        if precision == "fp16" and self.device.type != "cuda":
            log.warning("detectors.precision fp16 needs CUDA; running fp32 on %s (bf16 also runs on a CPU)",
                        self.device)
            precision = "fp32"
        for detector in dcfg.enabled:
            det_cfg = dcfg.detector(detector)
            name = model_name(detector, dcfg)
            weights = resolved.get(detector)
            torch.manual_seed(0)  # random weights are reproducible run to run
            model = models.create_model(name, checkpoint=weights.checkpoint if weights else None,
                                        **det_cfg.overrides)
            model = model.to(self.device).eval()
            card = model.card
            assert isinstance(card, models.ModelCard)
            spec = window_spec(detector, card, det_cfg.sample_fps, det_cfg.window_len, det_cfg.window_stride)
            fingerprint = model_fingerprint(name, weights.files if weights else ())
            runner_cls = runner_class(detector, model)
            self.runners[detector] = runner_cls(detector, model, card, fingerprint, spec, self.device, precision,
                                                align_on_device=self.align_device is not None,
                                                compile=dcfg.compile)
            log.info("detector %s: %s on %s (%s), window %d/%d at %s fps", detector,
                     self.runners[detector].model_id, self.device, precision, spec.window_len, spec.stride,
                     spec.sample_fps or "every")
        if calibration is not None:
            calibration.check_models(self.model_ids)
            log.info("calibration %s: thresholds at FPR %g (%s, %s level) replace alerts.threshold, fusion and "
                     "weights", dcfg.calibration, calibration.fpr_target, calibration.method, calibration.level)
            self.calibration = calibration
        self.face_detector = create_detector(self.cfg.faces, self.device)
        fc = self.cfg.faces
        self.landmarker = create_landmarker(fc.landmarks, {d: dcfg.detector(d).landmarks for d in dcfg.enabled},
                                            fc.dlib68_model, fc.dlib81_model)
        self.regions = RegionDetector(self.face_detector, self.cfg.faces)
        if self.cfg.faces.roi.enabled and not self.regions.enabled:
            log.info("faces.roi: backend %s detects at a fixed input size; every frame is detected in full",
                     self.cfg.faces.backend)

    @property
    def lane_workers(self) -> dict[str, InferenceWorker]:
        """The detectors' own worker threads (empty when every lane shares ``worker``)."""
        return dict(self._workers)

    def _worker_for(self, lane: str) -> InferenceWorker:
        if self.shared_worker:
            return self.worker
        if lane not in self._workers:
            per_frame = self.runners[lane].card.clip_len == 1
            self._workers[lane] = InferenceWorker(f"inference-{lane}", nice=0 if per_frame else _HEAVY_NICE)
            self._workers[lane].start()
        return self._workers[lane]

    async def start(self) -> None:
        self.worker.start()
        m = self.metrics
        fc = self.cfg.faces
        self._faces = Batcher("faces", self.worker, self._detect_batch, max_batch=fc.batch_size,
                              max_wait_s=0.02, max_pending=max(64, 4 * fc.batch_size), max_inflight=1,
                              on_batch=lambda n, s: self._observe("faces", n, s),
                              on_shed=lambda f: m.frames_dropped.labels(f.stream_id, "faces").inc(),
                              on_error=self._error_counter("faces"))
        for detector, runner in self.runners.items():
            self._lanes[detector] = self._lane(detector, runner)
        for lane in self.lanes:  # zero series: dashboards and alert rules see 0, not "no data"
            for kind in FACE_ERROR_KINDS if lane == "faces" else INFERENCE_ERROR_KINDS:
                m.inference_errors.labels(lane, kind)

    @property
    def lanes(self) -> dict[str, Batcher[Any, Any]]:
        """Every batching lane by name: ``faces`` and each enabled detector (after :meth:`start`)."""
        out: dict[str, Batcher[Any, Any]] = {} if self._faces is None else {"faces": self._faces}
        out.update(self._lanes)
        return out

    def _error_counter(self, lane: str) -> Callable[[str, BaseException], None]:
        def count(kind: str, exc: BaseException) -> None:
            self.metrics.inference_errors.labels(lane, kind).inc()
        return count

    def problems(self) -> list[str]:
        """Lanes whose every request has failed for ``detectors.unhealthy_after_s`` or longer,
        with their last error (for ``/readyz``); empty when every lane works."""
        limit = self.cfg.detectors.unhealthy_after_s
        now = time.monotonic()
        out = []
        for name, lane in self.lanes.items():
            since = lane.failing_since
            if since is not None and now - since >= limit:
                what = "face detection" if name == "faces" else f"detector {name}"
                out.append(f"{what} failing for {now - since:.0f}s: {lane.last_error}")
        return out

    def batch_size(self, detector: str) -> int:
        """``detectors.<d>.batch_size``, or its device default (see the config field)."""
        size = self.cfg.detectors.detector(detector).batch_size
        if size is not None:
            return size
        return 8 if self.device.type == "cuda" or self.runners[detector].card.clip_len == 1 else 1

    def _lane(self, detector: str, runner: DetectorRunner) -> Batcher[Clip, float]:
        dc = self.cfg.detectors.detector(detector)
        batch = self.batch_size(detector)

        def shed(clip: Clip) -> None:
            self.metrics.frames_dropped.labels(clip.stream_id, f"window_{detector}").inc()

        return Batcher(detector, self._worker_for(detector), runner.run, max_batch=batch,
                       max_wait_s=dc.max_wait_ms / 1000, max_pending=max(32, 8 * batch), max_inflight=1,
                       max_age_s=dc.max_queue_s,
                       on_batch=lambda n, s: self._observe(detector, n, s), on_shed=shed,
                       on_error=self._error_counter(detector))

    async def stop(self, timeout: float = 30.0) -> None:
        """Fail what waits in the lanes and end the worker threads, waiting at most ``timeout``
        seconds for them all. A thread inside a forward finishes it first (a torch call cannot
        be interrupted); one still busy at the timeout is left behind: it is a daemon, so it
        does not hold the process. Waits on the loop, not in an executor thread, which
        ``asyncio.run`` would join at exit."""
        for lane in [self._faces, *self._lanes.values()]:
            if lane is not None:
                lane.fail_pending("engine stopping")
        workers = [self.worker, *self._workers.values()]
        for worker in workers:
            worker.request_stop()
        deadline = time.monotonic() + timeout
        while any(w.alive for w in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        busy = [w.name for w in workers if w.alive]
        if busy:
            log.warning("engine stopped; %s still inside a forward (abandoned)", ", ".join(busy))

    def _observe(self, lane: str, n: int, seconds: float) -> None:
        self.metrics.inference_batch_size.labels(lane).observe(n)
        self.metrics.inference_seconds.labels(lane).observe(seconds)

    def _priors(self, frame: Frame) -> list[BBox] | None:
        """Where to look for faces in ``frame``: its tracks' predicted boxes (region
        detection), or ``None`` for a full-frame pass (see :mod:`stream_monitor.faces.roi`)."""
        assert self.regions is not None
        sid, pts = frame.stream_id, frame.pts
        state = self._streams.get(sid)
        last = self._last_full.get(sid)
        priors = None
        if self.regions.enabled and state is not None and last is not None and \
                0.0 <= pts - last < self.cfg.faces.roi.refresh_s:
            priors = state.tracker.predictions(pts)
        if priors is None:
            self._last_full[sid] = pts  # now, so later frames of this batch use regions
        return priors

    def _detect_batch(self, requests: list[DetectRequest]) -> list[FrameAnalysis | AnalysisError]:
        """Face detection of the batch, then each stream's tracking/windowing (worker thread).

        Detection runs for the whole batch before any tracker moves: when it raises, the lane
        reruns the batch in halves, and no frame has been tracked twice. Each stream's
        post-processing runs in its own ``try``: its failure is that frame's
        :class:`AnalysisError`, the other streams' frames are tracked and returned as usual."""
        assert self.regions is not None
        priors = [self._priors(r.frame) for r in requests]
        found = self.regions.detect([r.frame.image for r in requests], priors)
        out: list[FrameAnalysis | AnalysisError] = []
        for request, (faces, mode) in zip(requests, found):
            frame = request.frame
            self.metrics.face_detections.labels(mode).inc()
            if mode == "fallback":
                self._last_full[frame.stream_id] = frame.pts
            state = self._streams.get(frame.stream_id)
            if state is None:
                out.append(FrameAnalysis(frame.stream_id, frame.seq, frame.pts))
                continue
            try:
                out.append(state.process(frame, faces, request.due, request.links))
            except Exception as exc:  # noqa: BLE001 - one stream's fault must not cost the others their frames
                # No frame number in the message: the lane logs each distinct error's traceback
                # once (the cause's, chained), a stream failing every frame does not flood the log.
                error = AnalysisError(f"{frame.stream_id}: tracking/windowing failed: {exc!r}")
                error.__cause__ = exc
                out.append(error)
        return out

    async def _on_worker(self, fn: Any) -> Any:
        return await asyncio.wrap_future(self.worker.submit(fn))

    async def open_stream(self, stream_id: str, detectors: Sequence[str] | None = None) -> None:
        """Start tracking and windowing a stream. ``detectors``: the subset of the enabled ones
        that score it (a stream's own ``detectors`` setting; None: all). The others make no
        windows of it, and its frames are admitted only at the rates of its own detectors."""
        tc = self.cfg.faces.track
        runners = self.runners_for(detectors)

        def open_() -> None:
            self._streams[stream_id] = StreamAnalysis(stream_id, runners, tc.iou_threshold, tc.max_missed,
                                                      self.align_device, self.landmarker)

        await self._on_worker(open_)
        self._gates[stream_id] = self.detection_gate(detectors)

    def runners_for(self, detectors: Sequence[str] | None) -> dict[str, DetectorRunner]:
        """The runners of ``detectors`` (None: every enabled one); ValueError names one not enabled."""
        if detectors is None:
            return dict(self.runners)
        unknown = [d for d in detectors if d not in self.runners]
        if unknown or not detectors:
            raise ValueError(f"detectors {list(unknown)} are not enabled (enabled: {list(self.runners)})")
        return {d: r for d, r in self.runners.items() if d in detectors}

    def detection_gate(self, detectors: Sequence[str] | None = None) -> DetectionGate:
        """A fresh gate for one stream: its detectors' rates (default: every enabled one) and
        ``faces.detect_fps``."""
        return DetectionGate([r.spec for r in self.runners_for(detectors).values()], self.cfg.faces.detect_fps)

    async def close_stream(self, stream_id: str, forget: bool = True) -> FrameAnalysis:
        """End every track of the stream (final windows); ``forget`` drops its state."""

        def close_() -> FrameAnalysis:
            state = self._streams.get(stream_id)
            if state is None:
                return FrameAnalysis(stream_id, -1, -1.0)
            result = state.close()
            self._last_full.pop(stream_id, None)  # no tracks left to guide regions
            if forget:
                del self._streams[stream_id]
            return result

        if forget:
            self._gates.pop(stream_id, None)
        return await self._on_worker(close_)  # type: ignore[no-any-return]

    def admit(self, frame: Frame) -> DetectRequest | None:
        """The face-detection request for ``frame``, or ``None`` when its stream's gate
        skips it (no detector samples it). Call for every decoded frame, in order (the
        gate counts them), then :meth:`detect` the requests it returns."""
        gate = self._gates.get(frame.stream_id)
        if gate is None:
            return DetectRequest(frame, None)
        admission = gate.admit_frame(frame.seq, frame.pts)
        if admission is None:
            return None
        return DetectRequest(frame, None if gate.every_frame else admission.due, admission.links)

    def detect(self, request: DetectRequest, sheddable: bool = True) -> "asyncio.Future[FrameAnalysis]":
        """Face detection and tracking/windowing of an admitted frame (batched); ``sheddable``
        False for a source that is not live (its frame is never shed)."""
        assert self._faces is not None, "start() first"
        return self._faces.submit(request, sheddable)

    def analyse(self, frame: Frame) -> "asyncio.Future[FrameAnalysis] | None":
        """:meth:`admit` then :meth:`detect`: ``None`` for a skipped frame."""
        request = self.admit(frame)
        return None if request is None else self.detect(request)

    def video_score(self, detector: str, scores: Sequence[float]) -> float:
        """``detector``'s score of a whole video from its window scores (what :meth:`score`
        returned; per-frame detectors: their frames' probabilities): the mean, or the model's
        own definition (TrueMedia's StyleFlow: sigmoid of the mean clip logit); see
        :meth:`~stream_monitor.inference.runners.DetectorRunner.video_score`."""
        return self.runners[detector].video_score(scores)

    def score(self, clip: Clip, sheddable: bool = True) -> "asyncio.Future[float]":
        """The clip's probability from its detector lane; a sheddable (live) clip may fail with
        :class:`Shed` under overload (too many waiting, or waiting over ``max_queue_s``)."""
        return self._lanes[clip.detector].submit(clip, sheddable)
