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
import threading
import uuid
from collections import defaultdict
from typing import Any

from .alerts.policy import fuse
from .config import Config
from .inference.batcher import Shed
from .inference.engine import Engine
from .ingest.base import open_source
from .types import Clip, Frame

_END = object()


async def _frames(stream_id: str, url: str, cfg: Config, queue: "asyncio.Queue[Any]") -> None:
    """Decode in a thread; ``queue.put`` from the thread gives backpressure."""
    loop = asyncio.get_running_loop()
    ingest = cfg.ingest.model_copy(update={"realtime": False})
    stop = threading.Event()

    def decode() -> None:
        source = open_source(stream_id, url, ingest)
        try:
            for frame in source.frames():
                if stop.is_set():
                    return
                asyncio.run_coroutine_threadsafe(queue.put(frame), loop).result()
        finally:
            source.close()

    try:
        await asyncio.to_thread(decode)
    finally:
        stop.set()
        while True:  # make room for the end marker even if the consumer gave up
            try:
                queue.put_nowait(_END)
                break
            except asyncio.QueueFull:
                queue.get_nowait()


async def predict_video(engine: Engine, cfg: Config, url: str) -> dict[str, Any]:
    """Score one video; raises ``SourceError`` if it cannot be read."""
    stream_id = f"predict-{uuid.uuid4().hex[:8]}"
    await engine.open_stream(stream_id)
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)
    reader = asyncio.create_task(_frames(stream_id, url, cfg, queue))
    scored: list[tuple[Clip, asyncio.Future[float]]] = []
    frames = faces = 0
    try:
        while (item := await queue.get()) is not _END:
            frame: Frame = item
            analysis = await engine.analyse(frame)
            frames += 1
            faces += len(analysis.faces)
            scored += [(clip, engine.score(clip)) for clip in analysis.clips]
        await reader  # re-raises a decode error
    finally:
        if not reader.done():
            reader.cancel()
            while not queue.empty():  # unblock the decode thread so it sees the stop flag
                queue.get_nowait()
        final = await engine.close_stream(stream_id)
    scored += [(clip, engine.score(clip)) for clip in final.clips]
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
        detectors[name] = round(sum(values) / len(values), 6)
    a = cfg.alerts
    fused = fuse(detectors, a.fusion, a.weights) if detectors else None
    return {"file_path": url, "fake_probability": None if fused is None else round(fused, 6),
            "label": None if fused is None else ("FAKE" if fused >= a.threshold else "REAL"),
            "detectors": detectors, "frames": frames, "faces": faces,
            "calibrated": engine.calibrated, "models": engine.model_ids}
