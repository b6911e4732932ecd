"""One video through the live code path, with every window's probability kept.

:func:`score_video` runs :func:`stream_monitor.predict.predict_video` — the engine's
detection, tracking, sampling, windows and lanes, the file read lossless (not live:
backpressure, nothing shed) — on a :class:`RecordingEngine`, the live
:class:`~stream_monitor.inference.engine.Engine` that also hands each scored clip to the
video's task (a context variable, so videos may run concurrently on one engine).

Per detector it returns the video score exactly as ``predict`` reports it (per-frame
detectors: mean frame probability; clip detectors: mean clip probability), the frame
scores (CADDM: each scored frame's probability, once per frame and track; StA/StyleFlow:
each window's probability) in time order, and the windows ``[track, end_pts, p]`` from
which :func:`live_fusion` replays what the live alert policy fuses.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Mapping, Sequence

from ..alerts.policy import Fusion, fuse
from ..config import Config
from ..inference.engine import Engine
from ..predict import predict_video
from ..types import Clip

_SCORED: contextvars.ContextVar[list[tuple[Clip, "asyncio.Future[float]"]] | None] = \
    contextvars.ContextVar("evaluation_scored", default=None)


class RecordingEngine(Engine):
    """The live engine; :meth:`score` also records the clip for the calling video's task."""

    def score(self, clip: Clip, sheddable: bool = True) -> "asyncio.Future[float]":
        fut = super().score(clip, sheddable)
        sink = _SCORED.get()
        if sink is not None:
            sink.append((clip, fut))
        return fut


def _result(detector: str, scored: Sequence[tuple[Clip, float]], video_score: float | None,
            frames: int, faces: int) -> dict[str, Any]:
    windows = sorted(((c.track_id, c.end_pts, p) for c, p in scored), key=lambda w: (w[1], w[0]))
    per_frame: dict[int, tuple[float, int, float]] = {}
    for clip, _ in scored:
        for it in clip.items:
            if detector in it.cache:  # per-frame detectors cache their frame probability
                per_frame[id(it)] = (it.pts, clip.track_id, float(it.cache[detector]))
    if per_frame:
        frame_scores = [p for _, _, p in sorted(per_frame.values(), key=lambda v: (v[0], v[1]))]
    else:
        frame_scores = [p for _, _, p in windows]
    return {"video_score": video_score, "frame_scores": [round(p, 6) for p in frame_scores],
            "windows": [[t, round(e, 4), round(p, 6)] for t, e, p in windows],
            "frames": frames, "faces": faces, "error": None}


async def score_video(engine: RecordingEngine, cfg: Config, path: str) -> dict[str, dict[str, Any]]:
    """``{detector: result}`` for every detector the engine runs (see the module docstring);
    a detector without any window (no face, video too short) has ``video_score`` ``None``.
    Raises what ``predict_video`` raises (``SourceError`` for an unreadable file)."""
    sink: list[tuple[Clip, asyncio.Future[float]]] = []
    token = _SCORED.set(sink)
    try:
        result = await predict_video(engine, cfg, path)
    finally:
        _SCORED.reset(token)
    by_detector: dict[str, list[tuple[Clip, float]]] = {d: [] for d in engine.runners}
    for clip, fut in sink:
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            by_detector.setdefault(clip.detector, []).append((clip, fut.result()))
    return {d: _result(d, scored, result["detectors"].get(d), result["frames"], result["faces"])
            for d, scored in by_detector.items()}


def live_fusion(windows: Mapping[str, Sequence[Sequence[float]]], fusion: Fusion,
                weights: Mapping[str, float]) -> list[float]:
    """The fused score after each window, as the live policy computes it: per track, the
    latest probability of each detector, fused (:func:`~stream_monitor.alerts.policy.fuse`)
    whenever one arrives; windows taken in stream-time order (end pts, then detector)."""
    events = sorted((float(w[1]), d, int(w[0]), float(w[2])) for d, ws in windows.items() for w in ws)
    latest: dict[int, dict[str, float]] = {}
    out = []
    for _, detector, track, p in events:
        state = latest.setdefault(track, {})
        state[detector] = p
        out.append(round(fuse(state, fusion, weights), 6))
    return out


def fused_video_score(video_scores: Mapping[str, float | None], fusion: Fusion,
                      weights: Mapping[str, float]) -> float | None:
    """``predict``'s ``fake_probability``: the fusion of the detectors' video scores present."""
    present = {d: p for d, p in video_scores.items() if p is not None}
    return round(fuse(present, fusion, weights), 6) if present else None
