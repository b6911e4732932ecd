"""Frames missing from a stream break StyleFlow's runs through the real engine and monitor.

A real monitor (small random-weight StyleFlow, MTCNN) reads an MP4 written here with frames
removed (their timestamps missing: jumps); the real engine is fed frames with seq numbers
missing (frames dropped before it). Each run cut short is counted by its cause; the runs are
kept under 32 frames (and the last under 16) so no StyleFlow window has to be scored.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
from av.video.stream import VideoStream

from stream_monitor.app import Monitor
from stream_monitor.config import load_config
from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
from stream_monitor.metrics import Metrics
from stream_monitor.types import Frame
from tests.stream_monitor.test_engine import _engine, face_frame
from tests.support.polling import sample, until
from tests.support.small import small_config

FPS = 30
REMOVED = (20, 21, 45)  # runs 0-19 (20 frames), 22-44 (23), 46-58 (13: under half a window, dropped at the end)
FRAMES = 59


def _video_with_frames_removed(path: Path) -> Path:
    """H.264 MP4 of a synthetic face; frame ``i`` at pts ``i / FPS``, the :data:`REMOVED` ones left out."""
    images = list(synthetic_frames(SyntheticSpec(fps=FPS, width=320, height=240, faces=1, seconds=FRAMES / FPS)))
    with av.open(str(path), "w") as container:
        stream = cast(VideoStream, container.add_stream("libx264", rate=FPS))
        stream.pix_fmt = "yuv420p"
        stream.width, stream.height = 320, 240
        stream.codec_context.time_base = Fraction(1, FPS)
        stream.options = {"preset": "ultrafast", "bf": "0"}
        for i, image in enumerate(images):
            if i in REMOVED:
                continue
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with av.open(str(path)) as check:  # the gaps are in the file's timestamps
        times = [round(f.time * FPS) for f in check.decode(video=0)]
    assert times == [i for i in range(FRAMES) if i not in REMOVED], times
    return path


def test_a_file_with_frames_removed_counts_the_runs_it_cut(tmp_path: Path) -> None:
    video = _video_with_frames_removed(tmp_path / "gaps.mp4")
    cfg = load_config(overrides=small_config(
        detectors={"enabled": ["styleflow"]}, ingest={"realtime": False}, alerts={"stdout": False},
        metrics={"port": None}, api={"port": None, "source_roots": [str(tmp_path)]}), environ={})

    async def main() -> dict[str, float]:
        monitor = Monitor(cfg, Metrics())
        await monitor.start()
        try:
            await monitor.add_stream("f", str(video))
            handle = monitor.streams["f"]
            m = monitor.metrics
            name = "stream_monitor_windows_discarded_total"
            zero = {r: sample(m, name, detector="styleflow", reason=r)
                    for r in ("missed_detection", "frame_gap", "pts_jump", "rate_change")}
            assert m.registry.get_sample_value(name, {"detector": "styleflow", "reason": "pts_jump"}) == 0.0, \
                "the series exist at zero from the stream's start"
            await until(handle.task.done, 120, "the file to end")
            await until(lambda: handle.pipeline.closed, 60, "the stream to close")
            out = {r: sample(m, name, detector="styleflow", reason=r) - zero[r] for r in zero}
            out["analysed"] = sample(m, "stream_monitor_frames_analysed_total", stream="f")
            out["faces"] = sample(m, "stream_monitor_faces_detected_total", stream="f")
            out["scored"] = sample(m, "stream_monitor_windows_scored_total", detector="styleflow")
            return out
        finally:
            await monitor.stop()

    r = asyncio.run(main())
    assert r["analysed"] == r["faces"] == FRAMES - len(REMOVED), r  # the face in every frame: no missed detection
    assert r == {"missed_detection": 0, "frame_gap": 0, "pts_jump": 2, "rate_change": 0,
                 "analysed": r["analysed"], "faces": r["faces"], "scored": 0}, r


def test_frames_missing_before_the_engine_are_frame_gaps() -> None:
    engine = _engine(detectors={"enabled": ["styleflow"]})
    missing = (20, 40)  # runs 0-19 (20 frames), 21-39 (19), 41-49 (9: dropped at the end)

    async def main() -> tuple[dict[tuple[str, str], int], int]:
        await engine.start()
        try:
            await engine.open_stream("a")
            t0 = time.time()
            frames = [Frame("a", i, i / FPS, t0 + i / FPS, face_frame(i)) for i in range(50) if i not in missing]
            analyses = []
            for k in range(0, len(frames), 16):  # the face lane holds at most 64 waiting frames
                analyses += await asyncio.gather(*(fut for f in frames[k:k + 16]
                                                   if (fut := engine.analyse(f)) is not None))
            analyses.append(await engine.close_stream("a"))
        finally:
            await engine.stop()
        counts: dict[tuple[str, str], int] = {}
        for a in analyses:
            for key, n in a.discarded.items():
                counts[key] = counts.get(key, 0) + n
        return counts, sum(len(a.clips) for a in analyses)

    counts, clips = asyncio.run(main())
    # The timestamps jump too, but a seq gap is seen first: the engine passes each frame's seq to the gate.
    assert counts == {("styleflow", "frame_gap"): 2} and clips == 0
