"""One stream's path on the asyncio loop: frames → engine → scores → alert policy → sink.

``on_frame`` submits each frame to the engine and returns at once unless
``max_inflight`` frames are already in the engine (then it waits: the supervisor's bounded
buffer drops the oldest frames of a live source meanwhile). A source that is not live (a
file without ``ingest.realtime``) also waits while ``max_pending_windows`` of its windows are
unscored, and its frames and windows go to the lanes as not sheddable: its work is held back,
never shed. A live source's windows are shed when a lane is overloaded (too many waiting, or
waiting longer than ``detectors.<d>.max_queue_s``), which bounds its alert latency. A frame
that no detector samples is skipped by the engine before face detection (``faces.detect_fps``): it takes
no place in flight, is not counted as analysed, and leaves the operator page's picture
(the last *analysed* frame, whose faces the page draws) as it was. Analyses are handled strictly
in frame order by a done-callback chain, so tracks, windows and alert events keep the
stream's order; window scores reach the alert policy as their lanes finish them (each lane in
its windows' order; between detectors, as the lanes' timing has it). A
track's end event waits until every window of that track submitted before it has been
scored (at most ``end_wait_s``; a source that is not live waits for all of them), so the final
windows can still update the incident; scores that arrive after a track's end are ignored, so
an ended incident is never reopened by a straggler. ``on_window(clip, probability)``, when
given, sees every score the policy gets, just before it does (``stream-monitor predict``
collects its windows so).

Consecutive-frame detectors (StyleFlow) make windows only of unbroken runs of frames
(:mod:`stream_monitor.windows`); each run closed by a gap before it filled a window counts once
in ``windows_discarded_total{detector,reason}``, whose series exist at zero for every enabled
detector from the first stream on.

A frame or window whose inference raised (not one shed under load) is logged and counted in
:attr:`StreamStats.inference_errors` with :attr:`StreamStats.last_inference_error` (the stream's
status in the API); the engine counts it per lane in ``inference_errors_total``.

Stopping is in budgets. ``stop_by(deadline, reason)`` gives the stream's remaining work until
``deadline`` (``time.monotonic()``); ``close()`` (after ingest stopped) finishes in-flight
frames, closes the tracks (their final windows) and waits for their end events — until that
deadline, if any. Whatever is unfinished then is abandoned: queued frames and windows are
cancelled (a forward already running on a worker thread cannot be interrupted; its result is
ignored), counted in ``work_abandoned_total{kind}``, and every incident of the stream still
open ends with the stop's reason (``shutdown``, ``stream_removed``; ``stream_ended`` when the
source ran out). That last step runs even when ``close()`` is cancelled, so no ``start`` is
left without its ``end``.

``abort()`` (the stream's fleet lease is lost) stops the stream's processing at once: frames
and windows still queued in the engine are abandoned, results that arrive anyway are ignored,
and ``close()`` then only ends the open incidents (reason ``lease_lost``; no final windows).

Per-track state lives only as long as the track: a track's scores and pending windows go
with its end, and its id stays in the set of ended tracks only until the callbacks of its
last windows have run (windows still unscored ``end_wait_s`` after the end are abandoned).

Evidence (``evidence``, an :class:`~stream_monitor.alerts.evidence.EvidenceStore`, when
``alerts.evidence_dir`` is set): a ``start`` or ``end`` event caused by a window gets the frame
in which that window ended and the window's crops; an ``end`` caused by the track ending gets
the track's last scored window and its frame (kept per open track, one frame each).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .alerts.evidence import EvidenceStore
from .alerts.policy import AlertEvent, AlertPolicy, EndReason
from .alerts.publisher import AlertSink
from .inference.analysis import FrameAnalysis
from .inference.batcher import Shed
from .inference.engine import Engine
from .metrics import Metrics
from .types import Clip, Frame, Score, TrackedFace
from .windows import GAP_REASONS

log = logging.getLogger(__name__)


@dataclass
class StreamStats:
    """Live figures for ``GET /streams/{id}`` and ``run``'s summary. ``tracks``: active now;
    ``tracks_seen``: distinct tracks so far; ``faces``: face detections summed over frames;
    ``shed``: frames and windows dropped under load (a live source only)."""

    frames_analysed: int = 0
    tracks: int = 0
    windows: int = 0
    alerts: int = 0
    faces: int = 0
    tracks_seen: int = 0
    shed: int = 0
    last_scores: dict[str, float] = field(default_factory=dict)
    # Frames and windows of this stream whose inference raised (not those shed under load), and
    # the latest such error: a failing detector otherwise shows only as missing scores.
    inference_errors: int = 0
    last_inference_error: str | None = None


class StreamPipeline:
    def __init__(self, stream_id: str, engine: Engine, policy: AlertPolicy, sink: AlertSink, metrics: Metrics,
                 max_inflight: int = 4, end_wait_s: float = 5.0, max_pending_windows: int = 8,
                 evidence: EvidenceStore | None = None, detectors: list[str] | None = None,
                 lease_epoch: int | None = None,
                 on_window: Callable[[Clip, float], None] | None = None) -> None:
        """``detectors``: the subset of the enabled detectors that score this stream (None: all)."""
        self.stream_id = stream_id
        # The fleet lease this run holds (fleet.py), stamped on every alert event it emits so
        # that Redis refuses them once a later owner has claimed the stream. Fixed for the run:
        # an aborted run's last events must keep the epoch they were made under.
        self.lease_epoch = lease_epoch
        self.engine = engine
        self.policy = policy
        self.sink = sink
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.end_wait_s = end_wait_s
        self.max_pending_windows = max_pending_windows
        self.evidence = evidence
        self.detectors = detectors
        # Per track: its last scored window and the frame it ended in (evidence of an end event).
        self._last_window: dict[int, tuple[Frame | None, Clip]] = {}
        self.on_window = on_window
        # A source that is not live (a file or synthetic video without ingest.realtime) waits
        # for its windows instead of letting the lanes shed them: nothing of it is lost.
        self.lossless = False
        self._ended: set[int] = set()
        self._seen_tracks: set[int] = set()  # active tracks already counted in tracks_seen
        self.stats = StreamStats()
        self._inflight: deque[tuple[Frame, asyncio.Future[FrameAnalysis]]] = deque()
        # What the operator page shows: the newest analysed frame and its faces' scores.
        self.last_frame: Frame | None = None
        self.last_faces: list[TrackedFace] = []
        self._scores: dict[int, dict[str, float]] = {}
        self._pending_scores: dict[int, set[asyncio.Future[Any]]] = {}
        self._unscored: set[asyncio.Future[float]] = set()  # every window submitted and not yet scored
        self._tasks: set[asyncio.Future[Any]] = set()
        self._aborted = False
        self.closed = False
        self._deadline: float | None = None  # time.monotonic() by which close() gives up (stop_by)
        self._stop_reason: EndReason | None = None
        self._deadline_moved = asyncio.Event()
        for detector in engine.runners:  # zero series, so a dashboard shows "none discarded", not "no data"
            for reason in GAP_REASONS:
                metrics.windows_discarded.labels(detector, reason)
            # Windows the detector's lane sheds under load (engine.py's stage name): 0, not absent.
            metrics.frames_dropped.labels(stream_id, f"window_{detector}")

    async def open(self) -> None:
        await self.engine.open_stream(self.stream_id, self.detectors)

    async def on_frame(self, frame: Frame) -> None:
        if self._aborted:
            return
        request = self.engine.admit(frame)
        if request is None:
            return  # skipped (no enabled detector samples this frame): it takes no place in flight
        while len(self._inflight) >= self.max_inflight:
            await asyncio.wait({self._inflight[0][1]})
        while self.lossless and not self._aborted and len(self._unscored) >= self.max_pending_windows:
            await asyncio.wait(set(self._unscored), return_when=asyncio.FIRST_COMPLETED)
        if self._aborted:
            return
        fut = self.engine.detect(request, sheddable=not self.lossless)
        self._inflight.append((frame, fut))
        fut.add_done_callback(lambda _: self._drain())

    def on_session(self, session: int, live: bool = True) -> None:
        """A new connection: timestamps restart, so every track of the old one ends.
        ``live``: whether the source is live (see :attr:`lossless`)."""
        self.lossless = not live
        if session > 1:
            self._spawn(self._close_tracks(forget=False))

    def abort(self) -> None:
        """Stop processing now: abandon queued frames and windows, ignore whatever still arrives."""
        self._stop_reason = self._stop_reason or "lease_lost"
        self._abandon()

    def stop_by(self, deadline: float, reason: EndReason) -> None:
        """The stream is stopping: :meth:`close` may use until ``deadline`` (``time.monotonic()``),
        then abandons what is left; open incidents end with ``reason``. A later call can only
        bring the deadline forward (a shutdown while a removal finishes); the first reason stays."""
        self._stop_reason = self._stop_reason or reason
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline
            self._deadline_moved.set()

    async def close(self) -> None:
        """Stream stopped (ingest ended): finish in-flight frames, end all tracks, wait for their
        alerts, within the :meth:`stop_by` deadline (none set: until done; each track's end waits
        at most ``end_wait_s`` for its windows). Then abandon what is left and end every incident
        still open, also when cancelled. After :meth:`abort`: only the last step."""
        reason: EndReason = self._stop_reason or "stream_ended"
        closing: asyncio.Future[FrameAnalysis] | None = None
        try:
            if not self._aborted and await self._until_deadline({fut for _, fut in self._inflight}):
                self._drain()
                closing = asyncio.ensure_future(self.engine.close_stream(self.stream_id, forget=True))
                if await self._until_deadline({closing}):
                    self._handle(closing.result(), None, reason)
                while True:
                    ending = {t for t in self._tasks if not t.done()}
                    if not ending or not await self._until_deadline(ending):
                        break
        finally:
            close_unfinished = closing is not None and not closing.done()
            if closing is None:  # the engine forgets the stream (its tracks' final windows are not wanted)
                closing = asyncio.ensure_future(self.engine.close_stream(self.stream_id, forget=True))
            if not closing.done():
                closing.add_done_callback(_quiet)  # the worker still runs it; the result is not wanted
            if close_unfinished:
                self.metrics.work_abandoned.labels("close").inc()
            if not self._aborted:
                gone = self._abandon()
                gone["track closing"] = int(close_unfinished)
                if any(gone.values()):
                    log.warning("%s: stopping (%s): abandoned at the end of the grace: %s", self.stream_id, reason,
                                ", ".join(f"{n} {what}" for what, n in gone.items() if n))
            self._emit(self.policy.end_stream(self.stream_id, reason))
            self._ended.clear()
            self._scores.clear()
            self._pending_scores.clear()
            self._last_window.clear()
            self._seen_tracks.clear()
            self.closed = True

    def _abandon(self) -> dict[str, int]:
        """Give up every frame and window still in the engine (counted) and the end-of-track
        tasks; nothing that arrives afterwards is used. Returns how many of each were given up."""
        self._aborted = True
        frames = sum(1 for _, fut in self._inflight if fut.cancel())  # batches skip cancelled requests
        windows = sum(1 for fut in list(self._unscored) if fut.cancel())
        tasks = sum(1 for task in list(self._tasks) if task.cancel())
        if frames:
            self.metrics.work_abandoned.labels("frame").inc(frames)
        if windows:
            self.metrics.work_abandoned.labels("window").inc(windows)
        return {"frames": frames, "windows": windows, "track ends": tasks}

    async def _until_deadline(self, waiting: set[asyncio.Future[Any]]) -> bool:
        """Wait until everything in ``waiting`` is done (True) or the stop deadline passes
        (False). A deadline set or moved meanwhile (:meth:`stop_by`) applies at once."""
        while True:
            waiting = {f for f in waiting if not f.done()}
            if not waiting:
                return True
            remaining = None if self._deadline is None else self._deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._deadline_moved.clear()
            moved = asyncio.ensure_future(self._deadline_moved.wait())
            try:
                await asyncio.wait(waiting | {moved}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                moved.cancel()

    async def _close_tracks(self, forget: bool) -> None:
        self._handle(await self.engine.close_stream(self.stream_id, forget=forget))

    def _drain(self) -> None:
        while self._inflight and self._inflight[0][1].done():
            frame, fut = self._inflight.popleft()
            if fut.cancelled():
                continue
            exc = fut.exception()
            if isinstance(exc, Shed):
                self.stats.shed += 1
                continue
            if exc is not None:
                log.error("%s: frame analysis failed: %r", self.stream_id, exc)
                self._failed("faces", exc)
                continue
            analysis = fut.result()
            self.last_frame, self.last_faces = frame, analysis.faces
            self._handle(analysis, frame)

    def live(self) -> dict[str, Any]:
        """The newest analysed frame's faces with their latest scores (JSON-ready, for the page).

        ``box`` in frame pixels; ``scores`` the latest probability per detector for the track
        and ``fused`` their fusion, both as the alert policy sees them (:meth:`AlertPolicy.assess`:
        calibrated probabilities with a calibration file), and ``threshold`` what ``fused`` is
        compared with (with a calibration it depends on the detectors present); ``None`` before
        any score. The top-level ``threshold`` is ``alerts.threshold``.
        """
        frame = self.last_frame
        cfg = self.policy.config
        own = self.policy.threshold_for(self.stream_id)
        faces = []
        for face in self.last_faces:
            scores = self._scores.get(face.track_id, {})
            seen = self.policy.assess(scores, self.stream_id) if scores else None
            faces.append({"track_id": face.track_id, "box": [round(float(v), 1) for v in face.obs.box],
                          "scores": {d: round(p, 4) for d, p in sorted(seen.detectors.items())} if seen else {},
                          "fused": round(seen.score, 4) if seen else None,
                          "threshold": seen.threshold if seen else None})
        return {"stream_id": self.stream_id, "seq": frame.seq if frame else None, "pts": frame.pts if frame else None,
                "width": frame.size[0] if frame else None, "height": frame.size[1] if frame else None,
                "threshold": cfg.threshold if own is None else own, "faces": faces}

    def _handle(self, analysis: FrameAnalysis, frame: Frame | None = None, end_reason: EndReason = "track_ended") -> None:
        """``frame``: the frame analysed (None for the final analysis of closing tracks), in
        which the clips that ``analysis`` completes end; ``end_reason``: of the tracks it ends."""
        if self._aborted:
            return
        m, sid = self.metrics, self.stream_id
        if analysis.seq >= 0:
            m.frames_analysed.labels(sid).inc()
            m.faces_detected.labels(sid).inc(len(analysis.faces))
            self.stats.frames_analysed += 1
            self.stats.faces += len(analysis.faces)
            for face in analysis.faces:
                if face.track_id not in self._seen_tracks:
                    self._seen_tracks.add(face.track_id)
                    self.stats.tracks_seen += 1
        m.tracks_active.labels(sid).set(analysis.tracks_active)
        for (detector, reason), runs in analysis.discarded.items():
            m.windows_discarded.labels(detector, reason).inc(runs)
        self.stats.tracks = analysis.tracks_active
        for clip in analysis.clips:
            self._submit(clip, frame)
        for track_id in analysis.ended:
            self._seen_tracks.discard(track_id)  # an ended id is not seen again: bounded by active tracks
            pending = self._pending_scores.pop(track_id, set())
            self._spawn(self._end_track(track_id, pending, end_reason))

    def _submit(self, clip: Clip, frame: Frame | None) -> None:
        fut = self.engine.score(clip, sheddable=not self.lossless)
        self._pending_scores.setdefault(clip.track_id, set()).add(fut)
        self._unscored.add(fut)
        fut.add_done_callback(lambda f: self._on_score(clip, f, frame))

    def _on_score(self, clip: Clip, fut: "asyncio.Future[float]", frame: Frame | None = None) -> None:
        self._pending_scores.get(clip.track_id, set()).discard(fut)
        self._unscored.discard(fut)
        if not fut.cancelled() and isinstance(fut.exception(), Shed):
            self.stats.shed += 1
            return
        if self._aborted or fut.cancelled() or clip.track_id in self._ended:
            return
        exc = fut.exception()
        if exc is not None:
            log.error("%s: %s window failed: %r", self.stream_id, clip.detector, exc)
            self._failed(clip.detector, exc)
            return
        probability = fut.result()
        if self.on_window is not None:
            self.on_window(clip, probability)
        self._scores.setdefault(clip.track_id, {})[clip.detector] = probability
        self.metrics.windows_scored.labels(clip.detector).inc()
        self.metrics.window_score.labels(clip.detector).observe(probability)
        self.stats.windows += 1
        self.stats.last_scores[clip.detector] = round(probability, 4)
        score = Score(self.stream_id, clip.track_id, clip.detector, probability, clip.start_pts, clip.end_pts,
                      len({id(it) for it in clip.items}), clip.last_arrival, clip.bbox)
        # The final windows of closing tracks have no frame of their own: the newest analysed one.
        window = (frame if frame is not None else self.last_frame, clip)
        if self.evidence is not None:
            self._last_window[clip.track_id] = window
        self._emit(self.policy.on_score(score), window)

    def _failed(self, lane: str, exc: BaseException) -> None:
        self.stats.inference_errors += 1
        self.stats.last_inference_error = f"{lane}: {exc!r}"

    async def _end_track(self, track_id: int, pending: set[asyncio.Future[Any]], reason: EndReason) -> None:
        if pending:
            # A source that is not live is scored in full: its track ends once every window is
            # (a CPU may take far longer than end_wait_s per window). Stop bounds this wait.
            await asyncio.wait(pending, timeout=None if self.lossless else self.end_wait_s)
        self._ended.add(track_id)
        self._scores.pop(track_id, None)
        self._emit(self.policy.on_track_end(self.stream_id, track_id, reason), self._last_window.pop(track_id, None))
        late = sum(1 for fut in pending if fut.cancel())  # their scores would be ignored: free the lane
        if late:
            self.metrics.work_abandoned.labels("window").inc(late)
        # Every callback of the track's windows is queued by now (a result or a cancel queues it at
        # once, in order); once they have run, nothing of the track can arrive any more.
        asyncio.get_running_loop().call_soon(self._ended.discard, track_id)

    def _emit(self, events: list[AlertEvent], window: tuple[Frame | None, Clip] | None = None) -> None:
        for event in events:
            self.stats.alerts += 1
            if self.lease_epoch is not None:
                event.payload["lease_epoch"] = self.lease_epoch
            if self.evidence is not None and window is not None:
                self.evidence.attach(event, *window)
            self.sink.publish(event)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _quiet(fut: "asyncio.Future[Any]") -> None:
    """Retrieve an abandoned future's exception, so asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        fut.exception()
