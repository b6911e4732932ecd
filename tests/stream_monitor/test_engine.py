"""The engine with the real detectors (small configurations) and MTCNN on face frames."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
from skimage import data

from stream_monitor.config import load_config
from stream_monitor.inference.engine import Engine
from stream_monitor.inference.runners import PerFrameRunner
from stream_monitor.metrics import Metrics
from stream_monitor.types import Clip, Frame
from tests.support.small import small_config


def face_frame(i: int, size: tuple[int, int] = (480, 360)) -> np.ndarray:
    """The astronaut's face (public domain) moving slowly across a grey frame."""
    face = data.astronaut()[30:230, 150:330]  # 200 x 180 around the face
    w, h = size
    frame = np.full((h, w, 3), 96, np.uint8)
    x = 40 + (i * 3) % (w - 240)
    frame[60:260, x:x + 180] = face
    return frame


def _frames(stream: str, n: int, fps: float = 30.0) -> list[Frame]:
    t0 = time.time()
    return [Frame(stream, i, i / fps, t0 + i / fps, face_frame(i)) for i in range(n)]


def _engine(**sections: object) -> Engine:
    cfg = load_config(overrides=small_config(**sections), environ={})
    engine = Engine(cfg, Metrics())
    engine.load()
    return engine


def test_frames_to_windows_to_scores() -> None:
    engine = _engine(detectors={"enabled": ["caddm", "sta"], "sta": {"sample_fps": "all", "overrides": {
        "width": 32, "layers": 1, "heads": 2, "adapter_width": 16}}})

    async def main() -> tuple[list[Clip], list[float], int]:
        await engine.start()
        await engine.open_stream("a")
        analyses = await asyncio.gather(*(engine.analyse(f) for f in _frames("a", 12)))
        faces = sum(len(a.faces) for a in analyses)
        clips = [c for a in analyses for c in a.clips]
        closing = await engine.close_stream("a")
        clips += closing.clips
        scores = list(await asyncio.gather(*(engine.score(c) for c in clips)))
        await engine.stop()
        return clips, scores, faces

    clips, scores, faces = asyncio.run(main())
    assert faces == 12, "MTCNN should find the face in every frame"
    assert len({c.track_id for c in clips}) == 1
    caddm = [c for c in clips if c.detector == "caddm"]
    sta = [c for c in clips if c.detector == "sta"]
    # CADDM samples 8 fps of a 30 fps stream (every 3.75 frames): 0, 4, 7, 11 in 0.4 s; windows of
    # 8 -> only the final partial one at the stream's end.
    assert len(caddm) == 1 and [it.seq for it in caddm[0].items] == [0, 4, 7, 11] and caddm[0].final
    # StA with every frame: a full window at frame 7, one at 11 (stride 4), no uncovered tail.
    assert [[it.seq for it in c.items] for c in sta] == [list(range(8)), list(range(4, 12))]
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_per_frame_results_are_cached_across_overlapping_windows() -> None:
    engine = _engine(detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 4,
                                                                "window_stride": 2}})
    runner = engine.runners["caddm"]
    assert isinstance(runner, PerFrameRunner)

    async def main() -> list[float]:
        await engine.start()
        await engine.open_stream("a")
        analyses = await asyncio.gather(*(engine.analyse(f) for f in _frames("a", 8)))
        clips = [c for a in analyses for c in a.clips]
        assert [[it.seq for it in c.items] for c in clips] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
        scores = list(await asyncio.gather(*(engine.score(c) for c in clips)))
        await engine.stop()
        # Recompute every window from scratch with the same model: the same numbers.
        fresh = []
        with torch.no_grad():
            for c in clips:
                x = runner.card.preprocess(np.stack([it.patch for it in c.items]))
                fresh.append(float(runner.model(x).mean()))
        np.testing.assert_allclose(scores, fresh, rtol=0, atol=1e-6)
        return scores

    asyncio.run(main())
    assert runner.frames_computed == 8, "each frame is scored once although windows overlap"


def test_streams_share_batches() -> None:
    engine = _engine(detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2,
                                                                "window_stride": 2, "batch_size": 8,
                                                                "max_wait_ms": 200}})
    async def main() -> None:
        await engine.start()
        for s in ("a", "b", "c"):
            await engine.open_stream(s)
        frames = [f for s in ("a", "b", "c") for f in _frames(s, 2)]
        analyses = await asyncio.gather(*(engine.analyse(f) for f in frames))
        clips = [c for a in analyses for c in a.clips]
        assert sorted(c.stream_id for c in clips) == ["a", "b", "c"]
        await asyncio.gather(*(engine.score(c) for c in clips))
        await engine.stop()

    asyncio.run(main())
    hist = engine.metrics.registry.get_sample_value("stream_monitor_inference_batch_size_sum", {"detector": "caddm"})
    count = engine.metrics.registry.get_sample_value("stream_monitor_inference_batch_size_count", {"detector": "caddm"})
    assert hist == 3 and count == 1, "three streams' windows go in one batch"


def test_missing_weights_name_the_files(tmp_path: object) -> None:
    from stream_monitor.errors import WeightsError

    cfg = load_config(overrides={"detectors": {"weights_dir": str(tmp_path), "device": "cpu"}}, environ={})
    with pytest.raises(WeightsError) as err:
        Engine(cfg, Metrics()).load()
    msg = str(err.value)
    for needle in ("efficientnet-b4.pkl", "sta_best.pth", "psp_ffhq_encode.pt", "true_best_1118.pth",
                   "drive.google.com", "--random-weights"):
        assert needle in msg


@pytest.mark.parametrize("threads", ["shared", "per_detector"])
def test_worker_threads(threads: str) -> None:
    engine = _engine(detectors={"enabled": ["caddm", "sta"], "worker_threads": threads,
                                "caddm": {"sample_fps": "all", "window_len": 2, "window_stride": 2},
                                "sta": {"sample_fps": "all"}})

    async def main() -> None:
        await engine.start()
        await engine.open_stream("a")
        analyses = await asyncio.gather(*(engine.analyse(f) for f in _frames("a", 8)))
        clips = [c for a in analyses for c in a.clips]
        assert {c.detector for c in clips} == {"caddm", "sta"}
        await asyncio.gather(*(engine.score(c) for c in clips))
        await engine.stop()

    asyncio.run(main())
    if threads == "shared":
        assert engine.lane_workers == {}
    else:
        # Each detector ran on its own thread; the clip detector's at a lower CPU priority.
        assert engine.lane_workers["caddm"].busy_seconds > 0 and engine.lane_workers["sta"].busy_seconds > 0
        assert engine.lane_workers["caddm"].nice == 0 and engine.lane_workers["sta"].nice > 0
