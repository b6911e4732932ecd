"""A source that is not live holds its work back instead of shedding it; a live one sheds.

A real monitor reads a real MP4 (written here with PyAV) while the CADDM lane's worker
thread is held busy, so no window can be scored: the live (paced) file sheds the oldest
windows and counts them, the unpaced one (``ingest.realtime`` off) stops reading at the
pending-window bound and, once the lane is free again, has every window scored.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from stream_monitor.app import Monitor
from stream_monitor.bench.scenario import write_video
from stream_monitor.config import load_config
from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
from stream_monitor.metrics import Metrics
from tests.support.polling import sample, until
from tests.support.small import small_config

FRAMES = 90


def _video(tmp_path: Path) -> Path:
    spec = SyntheticSpec(fps=30, width=320, height=240, faces=1, seconds=FRAMES / 30)
    return write_video(tmp_path / "face.mp4", synthetic_frames(spec), 30)


async def _run(video: Path, realtime: bool) -> dict[str, float]:
    # CADDM on every frame, windows of 2 with stride 1: a window per frame.
    cfg = load_config(overrides=small_config(
        detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2, "window_stride": 1}},
        faces={"detect_fps": "all"}, ingest={"realtime": realtime},
        alerts={"stdout": False}, metrics={"port": None}, api={"port": None}), environ={})
    monitor = Monitor(cfg, Metrics())
    lane_free = threading.Event()
    out: dict[str, float] = {}
    await monitor.start()
    try:
        monitor.engine.lane_workers["caddm"].submit(lambda: lane_free.wait(60))  # the lane's thread is busy
        await monitor.add_stream("f", str(video), trusted=True)  # as a configured stream
        handle = monitor.streams["f"]
        pipeline = handle.pipeline
        m = monitor.metrics
        dropped = "stream_monitor_frames_dropped_total"
        if realtime:
            await until(lambda: sample(m, dropped, stream="f", stage="window_caddm") > 0, 60, "the lane to shed")
        else:
            bound = pipeline.max_pending_windows
            await until(lambda: len(pipeline._unscored) >= bound, 60, "the pending-window bound")
            await asyncio.sleep(1.0)  # time in which an unbounded reader would go on
            out["unscored_while_held"] = len(pipeline._unscored)
            out["analysed_while_held"] = pipeline.stats.frames_analysed
        lane_free.set()
        await until(handle.task.done, 60, "the file to end")
        await until(lambda: pipeline.closed, 30, "the final windows")
        out["analysed"] = sample(m, "stream_monitor_frames_analysed_total", stream="f")
        out["scored"] = sample(m, "stream_monitor_windows_scored_total", detector="caddm")
        out["shed"] = sample(m, dropped, stream="f", stage="window_caddm")
        out["ingest_dropped"] = sample(m, dropped, stream="f", stage="ingest")
    finally:
        lane_free.set()
        await monitor.stop()
    return out


def test_unpaced_file_holds_back_and_loses_nothing(tmp_path: Path) -> None:
    r = asyncio.run(_run(_video(tmp_path), realtime=False))
    # Held at the bound (plus the windows of the <= 4 frames already in face detection).
    assert 8 <= r["unscored_while_held"] <= 8 + 4 * 1, r
    assert r["analysed_while_held"] < FRAMES / 2, r
    assert r["analysed"] == FRAMES and r["ingest_dropped"] == 0 and r["shed"] == 0, r
    assert r["scored"] == FRAMES - 1, r  # every window of 2 consecutive frames


def test_live_file_sheds_the_windows_it_cannot_score(tmp_path: Path) -> None:
    r = asyncio.run(_run(_video(tmp_path), realtime=True))
    assert r["shed"] > 0, r
    assert r["scored"] + r["shed"] >= r["analysed"] - 1 - 1, r  # every window either scored or counted shed
