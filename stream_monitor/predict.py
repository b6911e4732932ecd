"""Offline scoring of one video (``stream-monitor predict`` and ``POST /predict``).

The video goes through the same engine as live streams — detection, tracking, the
detectors' sampling and windows — read as fast as the engine takes it (no real-time
pacing, no frame dropping). Video scores follow the authors: per-frame detectors
(CADDM) average their frame probabilities, clip detectors average their clip
probabilities; the fused ``fake_probability`` uses the configured fusion, and the label
is ``FAKE`` when it reaches the alert threshold.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections import defaultdict
from typing import Any, Callable

from .alerts.policy import fuse
from .config import Config
from .inference.batcher import Shed
from .inference.engine import Engine
from .ingest.base import open_source
from .ingest.policy import SourceGuard
from .types import Clip, Frame

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


async def predict_video(engine: Engine, cfg: Config, url: str, guard: SourceGuard | None = None,
                        on_frame: Callable[[], object] | None = None) -> dict[str, Any]:
    """Score one video; raises ``SourceError`` if it cannot be read. ``guard``: the URL came
    from the network (``POST /predict``): everything is opened through it. ``on_frame``:
    called once per decoded frame (a progress bar)."""
    stream_id = f"predict-{uuid.uuid4().hex[:8]}"
    await engine.open_stream(stream_id)
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)
    reader = asyncio.create_task(_frames(stream_id, url, cfg, queue, guard))
    scored: list[tuple[Clip, asyncio.Future[float]]] = []
    unscored: set[asyncio.Future[float]] = set()
    frames = faces = 0
    try:
        while (item := await queue.get()) is not _END:
            frame: Frame = item
            request = engine.admit(frame)
            frames += 1
            if on_frame is not None:
                on_frame()
            if request is None:
                continue  # no detector samples this frame: not face-detected
            # Offline: nothing may be shed (the lanes shed only live streams' work).
            analysis = await engine.detect(request, sheddable=False)
            faces += len(analysis.faces)
            for clip in analysis.clips:
                fut = engine.score(clip, sheddable=False)
                scored.append((clip, fut))
                unscored.add(fut)
                fut.add_done_callback(unscored.discard)
            while len(unscored) > _MAX_UNSCORED:  # hold the reader back rather than queue a whole video
                await asyncio.wait(set(unscored), return_when=asyncio.FIRST_COMPLETED)
        await reader  # re-raises a decode error
    finally:
        reader.cancel()
        final = await engine.close_stream(stream_id)
    scored += [(clip, engine.score(clip, sheddable=False)) for clip in final.clips]
    per_detector: dict[str, list[float]] = defaultdict(list)
    frame_probs: dict[str, dict[int, float]] = defaultdict(dict)
    for clip, fut in scored:
        try:
            p = await fut
        except Shed:
            continue
        per_detector[clip.detector].append(p)
        for it in clip.items:
            if clip.detector in it.cache:  # per-frame detectors cache their frame probability
                frame_probs[clip.detector][id(it)] = it.cache[clip.detector]
    detectors = {}
    for name, probs in per_detector.items():
        values = list(frame_probs[name].values()) or probs
        detectors[name] = round(engine.video_score(name, values), 6)
    a = cfg.alerts
    fused = fuse(detectors, a.fusion, a.weights) if detectors else None
    return {"file_path": url, "fake_probability": None if fused is None else round(fused, 6),
            "label": None if fused is None else ("FAKE" if fused >= a.threshold else "REAL"),
            "detectors": detectors, "frames": frames, "faces": faces,
            "windows": {name: len(probs) for name, probs in sorted(per_detector.items())},
            "calibrated": engine.calibrated, "models": engine.model_ids}
