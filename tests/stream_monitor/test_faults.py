"""Fault isolation in inference (issue 14): the real engine with small models on the CPU,
faults injected by wrapping a runner's batch function, a model's forward or a stream's
post-processing with a failing callable."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from typing import Any, Callable, Sequence

import aiohttp
import pytest
import torch

from stream_monitor.service import Service
from stream_monitor.config import ConfigError, load_config
from stream_monitor.inference import batcher
from stream_monitor.inference.analysis import FrameAnalysis, StreamAnalysis
from stream_monitor.inference.batcher import Batcher
from stream_monitor.inference.engine import AnalysisError, Engine
from stream_monitor.inference.worker import InferenceWorker
from stream_monitor.metrics import Metrics
from stream_monitor.types import Clip
from tests.stream_monitor.test_engine import _frames
from tests.support.api import Api
from tests.support.small import small_config

# CADDM on every frame, windows of one frame: each analysed frame gives a clip at once.
CADDM_EVERY_FRAME = {"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 1, "window_stride": 1,
                                                     "batch_size": 8, "max_wait_ms": 200}}


def _engine(**sections: Any) -> Engine:
    engine = Engine(load_config(overrides=small_config(**sections), environ={}), Metrics())
    engine.load()
    return engine


def _errors(engine: Engine, lane: str, kind: str) -> float | None:
    return engine.metrics.registry.get_sample_value("stream_monitor_inference_errors_total",
                                                    {"detector": lane, "kind": kind})


def _batch_sizes(engine: Engine, lane: str) -> tuple[float | None, float | None]:
    """(sum, count) of the lane's batch-size histogram: the requests of its batches that ran."""
    r = engine.metrics.registry
    return (r.get_sample_value("stream_monitor_inference_batch_size_sum", {"detector": lane}),
            r.get_sample_value("stream_monitor_inference_batch_size_count", {"detector": lane}))


async def _one_clip(engine: Engine, stream: str = "a") -> Clip:
    await engine.open_stream(stream)
    [frame] = _frames(stream, 1)
    analysis = engine.analyse(frame)
    assert analysis is not None, "CADDM samples every frame here"
    [clip] = (await analysis).clips
    return clip


def _copy(clip: Clip, stream: str) -> Clip:
    """The clip as another stream's, with fresh items (nothing cached: the model runs again)."""
    return dataclasses.replace(clip, stream_id=stream,
                               items=tuple(dataclasses.replace(it, cache={}) for it in clip.items))


def _wrap_run(engine: Engine, detector: str, fault: Callable[[Sequence[Clip]], None]) -> list[int]:
    """Wrap the runner's batch function (before ``start``: the lane takes it then) with
    ``fault``, which raises for the batches it wants to fail; → the sizes of every call."""
    runner = engine.runners[detector]
    real = runner.run
    calls: list[int] = []

    def run(clips: Sequence[Clip]) -> list[float]:
        calls.append(len(clips))
        fault(clips)
        return real(clips)

    runner.run = run  # type: ignore[method-assign]
    return calls


def test_one_failing_request_fails_alone_in_a_shared_batch() -> None:
    engine = _engine(detectors=CADDM_EVERY_FRAME)

    def fault(clips: Sequence[Clip]) -> None:
        if any(c.stream_id == "bad" for c in clips):
            raise RuntimeError("cannot score stream bad's window")

    calls = _wrap_run(engine, "caddm", fault)

    async def main() -> list[object]:
        await engine.start()
        try:
            clip = await _one_clip(engine)
            # Submitted together: one batch of four windows from two streams.
            futures = [engine.score(_copy(clip, s)) for s in ("good", "bad", "good", "good")]
            return list(await asyncio.gather(*futures, return_exceptions=True))
        finally:
            await engine.stop()

    good1, bad, good2, good3 = asyncio.run(main())
    assert calls[0] == 4, "the four windows were one batch"
    assert isinstance(bad, RuntimeError) and "stream bad" in str(bad)
    assert all(isinstance(r, float) and 0.0 <= r <= 1.0 for r in (good1, good2, good3)), (good1, good2, good3)
    assert _errors(engine, "caddm", "error") == 1, "one failed request, counted once"
    assert _errors(engine, "caddm", "oom") == 0 and _errors(engine, "faces", "tracking") == 0
    assert not engine.problems(), "the lane still works for everyone else"


def test_out_of_memory_halves_the_batch_then_grows_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(detectors=CADDM_EVERY_FRAME)
    memory = {"fits": 2}  # batches larger than this run out of "device memory"
    activations: list[weakref.ref[torch.Tensor]] = []  # what each failed batch had allocated
    emptied: list[bool] = []  # each cache emptying: whether the failed batch's tensors were released by then

    def fault(clips: Sequence[Clip]) -> None:
        if len(clips) > memory["fits"]:
            activation = torch.ones(len(clips), 1024)
            activations.append(weakref.ref(activation))
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(clips)} windows")

    monkeypatch.setattr(batcher, "_free_device_memory",
                        lambda: emptied.append(all(ref() is None for ref in activations)))
    calls = _wrap_run(engine, "caddm", fault)

    async def main() -> tuple[list[float], int, list[float], int]:
        await engine.start()
        try:
            clip = await _one_clip(engine)
            lane = engine.lanes["caddm"]
            first = await asyncio.gather(*(engine.score(_copy(clip, f"s{i}")) for i in range(8)))
            after_oom = lane.max_batch
            memory["fits"] = 8  # the memory is back
            lane.grow_after = 1
            second = await asyncio.gather(*(engine.score(_copy(clip, f"s{i}")) for i in range(8)))
            return list(first), after_oom, list(second), lane.max_batch
        finally:
            await engine.stop()

    first, after_oom, second, grown = asyncio.run(main())
    assert len(first) == 8 and all(0.0 <= p <= 1.0 for p in first), "every request succeeded despite the OOMs"
    # 8 runs out, then its first half (4) does; 2 and 2 fit, and the second half goes as 2 and 2
    # at once (no use trying 4 again).
    assert calls[:6] == [8, 4, 2, 2, 2, 2], calls
    assert after_oom == 2, "the lane's batch size was halved, twice"
    assert _errors(engine, "caddm", "oom") == 2 and _errors(engine, "caddm", "error") == 0
    # The cache was emptied after each OOM, once nothing held the failed batch's tensors (the
    # exception's traceback would: its frames' locals).
    assert emptied == [True, True]
    # Back to 8 by doubling after each full batch: 2, then 4, then the last 2 (the batch size is 8 again).
    assert len(second) == 8 and calls[6:] == [2, 4, 2] and grown == 8, (calls, grown)


def test_one_streams_failing_analysis_does_not_cost_another_stream_its_frames(
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2,
                                                                "window_stride": 2}},
                     faces={"batch_size": 2})
    real = StreamAnalysis.process

    def process(self: StreamAnalysis, frame: Any, *args: Any, **kwargs: Any) -> Any:
        if self.stream_id == "bad" and frame.seq == 1:
            raise ValueError("corrupt tracker state")
        return real(self, frame, *args, **kwargs)

    monkeypatch.setattr(StreamAnalysis, "process", process)

    async def main() -> tuple[list[object], list[object]]:
        await engine.start()
        try:
            for s in ("bad", "good"):
                await engine.open_stream(s)
            # Interleaved: each face batch holds one frame of each stream.
            futures = [engine.analyse(f) for pair in zip(_frames("bad", 4), _frames("good", 4)) for f in pair]
            results = await asyncio.gather(*futures, return_exceptions=True)  # type: ignore[arg-type]
            return list(results[0::2]), list(results[1::2])
        finally:
            await engine.stop()

    bad, results = asyncio.run(main())
    # The good stream's every frame was analysed, its tracker updated each time: one track
    # throughout, and its windows of two frames cover all four frames.
    assert not any(isinstance(r, BaseException) for r in results), results
    good = [a for a in results if isinstance(a, FrameAnalysis)]
    assert [len(a.faces) for a in good] == [1, 1, 1, 1]
    assert len({a.faces[0].track_id for a in good}) == 1
    clips = [c for a in good for c in a.clips]
    assert [[it.seq for it in c.items] for c in clips] == [[0, 1], [2, 3]]
    # Only the bad stream's frame failed, with the cause attached; its other frames went through.
    assert isinstance(bad[1], AnalysisError) and isinstance(bad[1].__cause__, ValueError)
    assert not any(isinstance(r, BaseException) for r in bad[:1] + bad[2:]), bad
    assert _errors(engine, "faces", "tracking") == 1 and _errors(engine, "faces", "error") == 0
    sizes, batches = _batch_sizes(engine, "faces")
    assert sizes == 8 and batches == 4, "each face batch held a frame of both streams"


def test_a_lane_failing_for_unhealthy_after_s_makes_readyz_fail_until_it_recovers() -> None:
    limit = 1.0
    overrides = small_config(detectors={**CADDM_EVERY_FRAME, "unhealthy_after_s": limit},
                             api={"port": 0, "token": "t0ken"}, alerts={"stdout": False})
    broken = {"on": True}


    async def main() -> None:
        monitor = Service(load_config(overrides=overrides, environ={}))
        await monitor.start()
        engine = monitor.engine
        model = engine.runners["caddm"].model  # type: ignore[attr-defined]
        real = model.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if broken["on"]:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return real(x)  # type: ignore[no-any-return]

        model.forward = forward  # the lane calls the model: a fault in the device's forward
        try:
            async with aiohttp.ClientSession() as s:
                api = Api(s, monitor.api_port or 0, "t0ken")
                assert await api.call("GET", "/readyz") == (200, {"ready": True})
                clip = await _one_clip(engine)
                began = time.monotonic()
                with pytest.raises(RuntimeError, match="illegal memory access"):
                    await engine.score(_copy(clip, "a"))
                status, body = await api.call("GET", "/readyz")
                if time.monotonic() - began < limit:
                    assert status == 200, "one failure is not yet a failing lane"
                await asyncio.sleep(limit - (time.monotonic() - began) + 0.1)
                with pytest.raises(RuntimeError):
                    await engine.score(_copy(clip, "a"))
                status, body = await api.call("GET", "/readyz")
                assert status == 503 and body["ready"] is False, body
                [reason] = body["reasons"]
                assert reason.startswith("detector caddm failing for ") and "illegal memory access" in reason
                status, text = await api.call("GET", "/metrics", token=None)
                assert 'stream_monitor_inference_errors_total{detector="caddm",kind="error"} 2.0' in text

                # A stream's status names its failing windows (a live stream with a face: CADDM fails on each).
                status, body = await api.call("POST", "/streams",
                                              json={"id": "synth", "url": "synthetic:?fps=10&size=320x240"})
                assert status == 201, body
                deadline = time.monotonic() + 60
                while True:
                    status, stream = await api.call("GET", "/streams/synth")
                    if status != 200 or stream["inference_errors"] or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                assert status == 200 and stream["inference_errors"] > 0, stream
                assert stream["last_inference_error"].startswith("caddm: RuntimeError('CUDA error: an illegal"), stream

                broken["on"] = False  # recovered: the next window is scored, the lane is healthy
                assert 0.0 <= await engine.score(_copy(clip, "a")) <= 1.0
                assert await api.call("GET", "/readyz") == (200, {"ready": True})
        finally:
            await monitor.stop(grace=1.0)

    asyncio.run(main())


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_unhealthy_after_s_must_be_a_positive_number(value: object) -> None:
    with pytest.raises(ConfigError, match="detectors.unhealthy_after_s"):
        load_config(overrides={"detectors": {"unhealthy_after_s": value}}, environ={})


def test_only_full_batches_grow_the_batch_size_back() -> None:
    """A batch smaller than the lowered limit says nothing about whether a larger one fits."""
    sizes: list[int] = []
    fits = {"n": 2}

    def run(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        if len(batch) > fits["n"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return batch

    worker = InferenceWorker()
    worker.start()

    async def main() -> list[int]:
        lane = Batcher("t", worker, run, max_batch=4, max_wait_s=0.0, grow_after=2)
        assert await asyncio.gather(*(lane.submit(i) for i in range(4))) == [0, 1, 2, 3]
        assert lane.max_batch == 2
        fits["n"] = 4
        limits = []
        for i in range(3):  # one request at a time: batches of 1, never full
            await lane.submit(i)
            limits.append(lane.max_batch)
        for _ in range(2):  # two full batches of 2: back to 4
            await asyncio.gather(lane.submit(0), lane.submit(1))
            limits.append(lane.max_batch)
        return limits

    try:
        assert asyncio.run(main()) == [2, 2, 2, 2, 4]
    finally:
        worker.stop()
    assert sizes == [4, 2, 2, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        Batcher("t", worker, run, grow_after=0)
