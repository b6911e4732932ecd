"""Offline scoring of one video (``stream-monitor predict`` and ``POST /predict``).

The video goes through the same code as a live stream — a
:class:`~stream_monitor.pipeline.StreamPipeline` on the same engine (detection, tracking, the
detectors' sampling and windows) feeding an alert policy built from the same ``alerts``
settings — read as fast as the engine takes it (no real-time pacing, and as a source that is
not live nothing is dropped or shed). So a video played to ``run`` in real time with nothing
shed gets the same window scores and alert decisions as here
(tests/stream_monitor/test_streaming_offline.py pins it).

Video scores follow the authors: per-frame detectors (CADDM) average their frame
probabilities, clip detectors average their clip probabilities; the fused
``fake_probability`` uses the configured fusion, and the label is ``FAKE`` when it reaches
the alert threshold.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections import defaultdict
from typing import Any, Callable

from .alerts.policy import AlertEvent, AlertPolicy, PolicyConfig, fuse
from .config import Config
from .inference.engine import Engine
from .ingest.base import open_source
from .ingest.policy import SourceGuard
from .metrics import Metrics
from .pipeline import StreamPipeline
from .types import Clip

_END = object()
_MAX_UNSCORED = 32  # windows of one video queued in the lanes at most (memory: crops ride along)


async def _frames(stream_id: str, url: str, cfg: Config, queue: "asyncio.Queue[Any]",
                  guard: SourceGuard | None) -> None:
    """Decode in a thread into ``queue`` (bounded: backpressure), then put ``_END``.

    If the consumer goes away (this task is cancelled), the thread notices ``stop`` within
    half a second even while it waits for room in the queue, and closes the source.
    """
    loop = asyncio.get_running_loop()
    ingest = cfg.ingest.model_copy(update={"realtime": False})
    stop = threading.Event()

    def decode() -> None:
        source = open_source(stream_id, url, ingest, guard)
        try:
            for frame in source.frames():
                put = asyncio.run_coroutine_threadsafe(queue.put(frame), loop)
                while True:
                    try:
                        put.result(timeout=0.5)
                        break
                    except concurrent.futures.TimeoutError:
                        if stop.is_set():
                            put.cancel()
                            return
                if stop.is_set():
                    return
        finally:
            source.close()

    try:
        await asyncio.to_thread(decode)
    except asyncio.CancelledError:
        stop.set()
        raise
    except BaseException:
        await queue.put(_END)  # the consumer is still reading; it re-raises via the task
        raise
    await queue.put(_END)


class _Findings:
    """What the pipeline found in one video: the alert sink it publishes to (events kept in
    order) and its ``on_window`` hook (every window score, in the order the policy got them)."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.windows: list[dict[str, Any]] = []
        self.clip_scores: dict[str, list[float]] = defaultdict(list)
        # Per-frame detectors cache each frame's probability on the item; a frame is in several
        # windows, so it is keyed by (track, seq) to count it once.
        self.frame_scores: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)

    async def start(self) -> None:
        pass

    def publish(self, event: AlertEvent) -> None:
        self.alerts.append(event.payload)

    async def close(self, timeout: float = 5.0) -> None:
        pass

    def problems(self) -> list[str]:
        return []

    def window(self, clip: Clip, probability: float) -> None:
        self.clip_scores[clip.detector].append(probability)
        for it in clip.items:
            if clip.detector in it.cache:
                self.frame_scores[clip.detector][(clip.track_id, it.seq)] = it.cache[clip.detector]
        self.windows.append({"detector": clip.detector, "track_id": clip.track_id, "start_pts": clip.start_pts,
                             "end_pts": clip.end_pts, "frames": len({id(it) for it in clip.items}),
                             "probability": probability})


async def predict_video(engine: Engine, cfg: Config, url: str, guard: SourceGuard | None = None, *,
                        on_frame: Callable[[], object] | None = None, detail: bool = False) -> dict[str, Any]:
    """Score one video; raises ``SourceError`` if it cannot be read. ``guard``: the URL came
    from the network (``POST /predict``): everything is opened through it. ``on_frame``:
    called once per decoded frame (a progress bar). ``windows`` in the result: the windows
    scored per detector.

    ``detail`` adds ``window_scores`` (every window score in the order the alert policy got them:
    ``detector``, ``track_id``, ``start_pts``/``end_pts`` in seconds of the video, ``frames``,
    raw ``probability``) and ``alerts`` (the alert events ``run`` would publish for this
    video, DESIGN.md's payloads with the stream id ``predict-…``)."""
    stream_id = f"predict-{uuid.uuid4().hex[:8]}"
    found = _Findings()
    policy = AlertPolicy(PolicyConfig.from_config(cfg.alerts, engine.model_ids, calibration=engine.calibration))
    metrics = Metrics()  # this run's own: its per-stream series are no business of the service's /metrics
    # One frame in face detection at a time: a frame's search regions (faces.roi) come from the
    # tracks as of its batch, and MTCNN's rounding from the batch's other frames, so batches of
    # several frames would make the scores depend on timing. One at a time they do not.
    pipeline = StreamPipeline(stream_id, engine, policy, found, metrics, max_inflight=1,
                              max_pending_windows=_MAX_UNSCORED, on_window=found.window)
    await pipeline.open()
    pipeline.on_session(1, live=False)  # not live: frames and windows are held back, never shed
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)
    reader = asyncio.create_task(_frames(stream_id, url, cfg, queue, guard))
    frames = 0
    try:
        while (item := await queue.get()) is not _END:
            frames += 1
            if on_frame is not None:
                on_frame()
            await pipeline.on_frame(item)
        await reader  # re-raises a decode error
    except BaseException:
        pipeline.abort()  # nothing more to score: only end the open incidents
        raise
    finally:
        reader.cancel()
        await pipeline.close()
    detectors = {}
    for name, probs in found.clip_scores.items():
        values = list(found.frame_scores[name].values()) or probs
        detectors[name] = round(engine.video_score(name, values), 6)
    faces = int(metrics.registry.get_sample_value("stream_monitor_faces_detected_total", {"stream": stream_id}) or 0)
    a = cfg.alerts
    fused = fuse(detectors, a.fusion, a.weights) if detectors else None
    result: dict[str, Any] = {"file_path": url, "fake_probability": None if fused is None else round(fused, 6),
                              "label": None if fused is None else ("FAKE" if fused >= a.threshold else "REAL"),
                              "detectors": detectors, "frames": frames, "faces": faces,
                              "windows": {name: len(probs) for name, probs in sorted(found.clip_scores.items())},
                              "calibrated": engine.calibrated, "models": engine.model_ids}
    if detail:
        result.update(window_scores=found.windows, alerts=found.alerts)
    return result
