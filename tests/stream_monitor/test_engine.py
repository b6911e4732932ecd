"""The engine with the real detectors (small configurations) and MTCNN on face frames."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest
import torch
from skimage import data

from stream_monitor.config import load_config
from stream_monitor.inference.batcher import Shed
from stream_monitor.inference.engine import Engine
from stream_monitor.inference.runners import PerFrameRunner, StyleFlowRunner, _Base
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


def _from_scratch(runner: _Base, clips: list[Clip]) -> tuple[list[float], int]:
    """Each window scored alone by a fresh runner (same model) on a fresh copy of every item
    (a padded window's repeats included) with an empty cache: nothing is reused, within a
    window or across windows. → (scores, frames computed)."""
    fresh = type(runner)(runner.name, runner.model, runner.card, runner.model_id, runner.spec, runner.device)
    scores = []
    for clip in clips:
        items = tuple(dataclasses.replace(it, cache={}) for it in clip.items)
        scores += fresh.run([dataclasses.replace(clip, items=items)])
    return scores, fresh.frames_computed


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
        scratch, computed = _from_scratch(runner, clips)
        np.testing.assert_allclose(scores, scratch, rtol=0, atol=1e-6)
        assert computed == 12, "from scratch, the 4 frames shared by two windows are scored twice"
        return scores

    asyncio.run(main())
    assert runner.frames_computed == 8, "each frame is scored once although windows overlap"


def test_per_frame_runner_scores_cpu_batches_in_powers_of_two() -> None:
    # oneDNN compiles a kernel per input shape (stream_monitor.batch_sizes): 6 new frames go
    # through the model as 4 + 2, and each frame's score is what a forward of all 6 gives it.
    engine = _engine(detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 4,
                                                                "window_stride": 2}})
    runner = engine.runners["caddm"]
    assert isinstance(runner, PerFrameRunner) and runner.device.type == "cpu"

    async def clips() -> list[Clip]:
        await engine.start()
        await engine.open_stream("a")
        analyses = await asyncio.gather(*(engine.analyse(f) for f in _frames("a", 6)))
        await engine.stop()
        return [c for a in analyses for c in a.clips]

    windows = asyncio.run(clips())
    assert [[it.seq for it in c.items] for c in windows] == [[0, 1, 2, 3], [2, 3, 4, 5]]
    fresh = [dataclasses.replace(c, items=tuple(dataclasses.replace(it, cache={}) for it in c.items)) for c in windows]
    fresh[1] = dataclasses.replace(fresh[1], items=fresh[0].items[2:] + fresh[1].items[2:])  # shared frames shared
    sizes: list[int] = []
    hook = runner.model.register_forward_pre_hook(lambda _m, args: sizes.append(int(args[0].shape[0])))
    try:
        scores = runner.run(fresh)
    finally:
        hook.remove()
    assert sizes == [4, 2]
    items = list(fresh[0].items) + list(fresh[1].items[2:])
    with torch.no_grad():
        whole = runner.model(runner.card.preprocess(np.stack([it.patch for it in items]))).tolist()
    np.testing.assert_allclose([it.cache["caddm"] for it in items], whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores, [np.mean(whole[:4]), np.mean(whole[2:])], rtol=0, atol=1e-6)


def test_styleflow_latents_are_computed_once_per_frame_and_reused() -> None:
    # The card's windows: 32 frames, stride 32 (non-overlapping, one clip transform each).
    # Stream a: 64 frames, two full windows. Stream b: a 20-frame track, one final window
    # reflect-padded to 32 (12 slots repeat earlier items and reuse their latents).
    engine = _engine(detectors={"enabled": ["styleflow"], "styleflow": {"sample_fps": "all"}})
    runner = engine.runners["styleflow"]
    assert isinstance(runner, StyleFlowRunner)

    async def main() -> tuple[list[Clip], list[float]]:
        await engine.start()
        clips: list[Clip] = []
        for stream, n in (("a", 64), ("b", 20)):
            await engine.open_stream(stream)
            analyses = await asyncio.gather(*(engine.analyse(f) for f in _frames(stream, n)))
            clips += [c for a in analyses for c in a.clips] + (await engine.close_stream(stream)).clips
        scores = list(await asyncio.gather(*(engine.score(c) for c in clips)))
        await engine.stop()
        return clips, scores

    clips, scores = asyncio.run(main())
    assert [([it.seq for it in c.items], c.padded) for c in clips[:2]] == [(list(range(32)), 0),
                                                                        (list(range(32, 64)), 0)]
    assert clips[2].stream_id == "b" and clips[2].final and clips[2].padded == 12
    assert runner.frames_computed == 64 + 20, "each frame is encoded once, a padded window's repeats reuse it"
    scratch, computed = _from_scratch(runner, clips)
    assert computed == 3 * 32, "from scratch every slot is encoded"
    np.testing.assert_allclose(scores, scratch, rtol=0, atol=1e-5)


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


def test_a_flooded_lane_sheds_the_busiest_streams_oldest_and_counts_them() -> None:
    engine = _engine(detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2,
                                                                "window_stride": 2, "batch_size": 1}})

    async def main() -> tuple[list[object], list[object]]:
        await engine.start()
        await engine.open_stream("a")
        [clip] = [c for a in await asyncio.gather(*(engine.analyse(f) for f in _frames("a", 2))) for c in a.clips]
        # Submitted without yielding to the loop: the first runs, the rest wait in the lane
        # (at most max(32, 8 x batch_size) = 32 of them).
        a = [engine.score(clip) for _ in range(41)]
        b = [engine.score(dataclasses.replace(clip, stream_id="b")) for _ in range(2)]
        results = await asyncio.gather(*a, return_exceptions=True), await asyncio.gather(*b, return_exceptions=True)
        await engine.stop()
        return list(results[0]), list(results[1])

    a, b = asyncio.run(main())
    # 42 waiting for 32 places: the 10 shed are stream a's oldest waiting windows (the one
    # already running is not shed); b's windows all run.
    assert [isinstance(r, Shed) for r in a] == [False] + [True] * 10 + [False] * 30
    assert not any(isinstance(r, Shed) for r in b)

    def dropped(stream: str) -> float | None:
        return engine.metrics.registry.get_sample_value("stream_monitor_frames_dropped_total",
                                                        {"stream": stream, "stage": "window_caddm"})
    assert dropped("a") == 10 and dropped("b") is None


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


def _sampled(detect_fps: str, detectors: list[str], n: int) -> tuple[dict[str, list[int]], float, int]:
    """Run ``n`` frames of a 30 fps face stream through the engine → (sampled seqs per
    detector, frames face-detected (the face lane's batch items), analyses returned)."""
    engine = _engine(faces={"detect_fps": detect_fps}, detectors={"enabled": detectors})

    async def main() -> tuple[list[Clip], int]:
        await engine.start()
        await engine.open_stream("a")
        t0 = time.time()  # the face moves 1.5 px a frame (no wrap-around within 150 frames)
        frames = [Frame("a", i, i / 30, t0 + i / 30, face_frame(i // 2)) for i in range(n)]
        analyses = []
        for k in range(0, n, 16):  # a chunk at a time: the face lane holds at most 64 waiting frames
            analyses += await asyncio.gather(*(fut for f in frames[k:k + 16] if (fut := engine.analyse(f)) is not None))
        clips = [c for a in analyses for c in a.clips] + (await engine.close_stream("a")).clips
        await engine.stop()
        return clips, len(analyses)

    clips, analysed = asyncio.run(main())
    assert len({c.track_id for c in clips}) == 1
    seqs = {d: sorted({it.seq for c in clips if c.detector == d for it in c.items}) for d in detectors}
    detected = engine.metrics.registry.get_sample_value("stream_monitor_inference_batch_size_sum",
                                                        {"detector": "faces"})
    return seqs, detected or 0.0, analysed


def test_face_detection_runs_only_on_the_frames_the_detectors_sample() -> None:
    # CADDM at its card's 8 fps and StA at 1.875 fps, 5 s of a 30 fps stream.
    auto, detected, analysed = _sampled("auto", ["caddm", "sta"], 150)
    assert detected == analysed == 43, "~8.5 frames/s face-detected, not 30"
    assert set(np.diff(auto["caddm"])) == {3, 4}, "CADDM: 0.125 s apart (3.75 frames)"
    assert set(np.diff(auto["sta"])) <= {15, 16, 17} and len(auto["sta"]) == 8, "StA: 0.533 s apart (16 frames)"
    # The same frames with face detection on every frame: CADDM takes the very same frames; StA
    # the same number, each within one source frame (it shares CADDM's detections).
    every, detected_all, _ = _sampled("all", ["caddm", "sta"], 150)
    assert detected_all == 150
    assert every["caddm"] == auto["caddm"]
    assert len(every["sta"]) == len(auto["sta"])
    assert max(abs(a - b) for a, b in zip(every["sta"], auto["sta"])) == 1


def test_styleflow_makes_every_frame_go_through_face_detection() -> None:
    _, detected, analysed = _sampled("auto", ["caddm", "styleflow"], 40)
    assert detected == analysed == 40


def test_default_batch_sizes_follow_the_device() -> None:
    engine = _engine()
    assert engine.device.type == "cpu"
    # On a CPU clip windows run one by one (no faster batched, and each would wait for the batch).
    assert {d: engine.batch_size(d) for d in ("caddm", "sta", "styleflow")} == {"caddm": 8, "sta": 1, "styleflow": 1}
    engine = _engine(detectors={"sta": {"batch_size": 4}, "caddm": {"batch_size": 2}})
    assert engine.batch_size("sta") == 4 and engine.batch_size("caddm") == 2 and engine.batch_size("styleflow") == 1
