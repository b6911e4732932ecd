"""StreamSupervisor with test-only sources shaped like the real ones (thread, close(), live/finite).

The RTSP-server versions of reconnect and stall live in test_ingest_rtsp.py; here the
sources are scripted so every path (stall, drop, backpressure, backoff, stop) is exact.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Awaitable, Callable, Iterator

import numpy as np
import pytest

from stream_monitor.config import BackoffConfig, IngestConfig
from stream_monitor.errors import SourceError
from stream_monitor.ingest import StreamSupervisor
from stream_monitor.ingest.base import Source
from stream_monitor.metrics import Metrics
from stream_monitor.retry import Backoff
from stream_monitor.types import Frame
from tests.support.polling import sample, until

FAST_RETRY = BackoffConfig(initial_s=0.05, max_s=0.2, multiplier=2.0, jitter=0.0)


class ScriptedSource:
    """Yields ``count`` 8x8 frames whose pixels hold ``tag``, at ``fps`` (0 = as fast as asked).

    ``hang_after``: after that many frames, block like a read on a dead connection that has
    no timeout — ``close()`` does not release it, only ``release()`` does (then it resumes).
    ``fail_after``: raise SourceError after that many frames (0 = fail to open).
    ``produced`` counts frames handed out, so tests can see how far ahead of the consumer it got.
    """

    def __init__(self, tag: int, count: int | None = None, *, live: bool = True, finite: bool = False,
                 fps: float = 0.0, hang_after: int | None = None, fail_after: int | None = None) -> None:
        self.tag = tag
        self.count = count
        self.live = live
        self.finite = finite
        self.fps = fps
        self.hang_after = hang_after
        self.fail_after = fail_after
        self.produced = 0
        self.hanging = threading.Event()
        self.exited = threading.Event()
        self._released = threading.Event()
        self._closed = threading.Event()

    def frames(self) -> Iterator[Frame]:
        try:
            i = 0
            while (self.count is None or i < self.count) and not self._closed.is_set():
                if self.fail_after is not None and i == self.fail_after:
                    raise SourceError(f"scripted failure of source {self.tag} after {i} frames")
                if self.hang_after is not None and i == self.hang_after:
                    self.hanging.set()
                    self._released.wait(30)
                if self.fps and self._closed.wait(1.0 / self.fps):
                    return
                self.produced += 1
                yield Frame("s", i, i / 50.0, time.time(), np.full((8, 8, 3), self.tag, np.uint8))
                i += 1
        finally:
            self.exited.set()

    def close(self) -> None:
        self._closed.set()

    def release(self) -> None:
        self._released.set()


class Opener:
    """Hands out prepared sources in order (one per connection attempt) and records when."""

    def __init__(self, *sources: ScriptedSource) -> None:
        self.sources = list(sources)
        self.calls: list[float] = []

    def __call__(self) -> Source:
        self.calls.append(time.monotonic())
        if not self.sources:
            raise SourceError("no more scripted sources")
        return self.sources.pop(0)


class Recorder:
    """on_frame / on_session callbacks that record what the pipeline would see."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.frames: list[Frame] = []
        self.sessions: list[int] = []
        self.delay_s = delay_s

    async def on_frame(self, frame: Frame) -> None:
        self.frames.append(frame)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    def on_session(self, n: int, live: bool = True) -> None:
        self.sessions.append(n)

    def tags(self) -> list[int]:
        return [int(f.image[0, 0, 0]) for f in self.frames]


def _supervisor(opener: Opener, rec: Recorder, metrics: Metrics, **cfg: object) -> StreamSupervisor:
    settings: dict[str, object] = {"reconnect": FAST_RETRY, "stall_timeout_s": 5.0, "open_timeout_s": 1.0}
    settings.update(cfg)
    return StreamSupervisor("s", "test:scripted", IngestConfig(**settings), metrics,  # type: ignore[arg-type]
                            rec.on_frame, rec.on_session, opener=opener)


def _run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


def test_stall_watchdog_abandons_the_session_and_reconnects() -> None:
    stuck = ScriptedSource(1, hang_after=5, fps=100)
    healthy = ScriptedSource(2, fps=100)
    opener, rec, metrics = Opener(stuck, healthy), Recorder(), Metrics()
    sup = _supervisor(opener, rec, metrics, stall_timeout_s=0.4)

    async def main() -> None:
        task = asyncio.create_task(sup.run())
        await until(stuck.hanging.is_set, 5, "the first source to hang")
        assert sup.state == "up"
        hung_at = time.monotonic()
        await until(lambda: 2 in rec.tags(), 5, "frames from the second connection")
        assert time.monotonic() - hung_at >= 0.35  # not before the stall timeout
        await until(lambda: len(rec.frames) >= 20, 5, "frames to flow again")
        # The abandoned thread wakes up (as a read timeout would) and must not deliver anything.
        stuck.release()
        await asyncio.to_thread(stuck.exited.wait, 5)
        await asyncio.sleep(0.2)
        status = sup.status()
        await sup.stop()
        await task
        assert stuck.exited.is_set()
        tags = rec.tags()
        assert tags[:5] == [1] * 5 and set(tags[5:]) == {2}
        seqs = [f.seq for f in rec.frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert rec.sessions == [1, 2]
        assert status["state"] == "up" and status["reconnects"] == 1 and status["sessions"] == 2
        assert status["last_error"] is not None and "stalled" in status["last_error"]
        assert sample(metrics, "stream_monitor_stream_reconnects_total", stream="s") == 1
        assert sup.state == "stopped"
        assert sample(metrics, "stream_monitor_stream_up", stream="s") == 0

    _run(main)


def test_live_hand_off_drops_the_oldest_and_counts() -> None:
    source = ScriptedSource(1, count=60, finite=True)  # a burst far faster than the consumer
    opener, rec, metrics = Opener(source), Recorder(delay_s=0.01), Metrics()
    sup = _supervisor(opener, rec, metrics, queue_frames=4)

    async def main() -> None:
        await sup.run()

    _run(main)
    delivered = [f.seq for f in rec.frames]
    dropped = sup.status()["dropped"]
    assert 0 < dropped and len(delivered) + dropped == 60
    assert delivered == sorted(delivered) and delivered[-1] == 59  # the newest frame survives
    assert sample(metrics, "stream_monitor_frames_dropped_total", stream="s", stage="ingest") == dropped
    assert sample(metrics, "stream_monitor_frames_received_total", stream="s") == 60
    assert sup.state == "ended" and sup.status()["reconnects"] == 0 and len(opener.calls) == 1


def test_not_live_source_gets_backpressure_and_loses_nothing() -> None:
    source = ScriptedSource(1, count=40, live=False, finite=True)
    opener, metrics = Opener(source), Metrics()
    lead: list[int] = []  # how far the producer was ahead of the consumer at each delivery

    class Slow(Recorder):
        async def on_frame(self, frame: Frame) -> None:
            await super().on_frame(frame)
            lead.append(source.produced - len(self.frames))

    rec = Slow(delay_s=0.005)
    sup = _supervisor(opener, rec, metrics, queue_frames=3)
    _run(sup.run)
    assert [f.seq for f in rec.frames] == list(range(40))
    assert sup.status()["dropped"] == 0
    assert sample(metrics, "stream_monitor_frames_dropped_total", stream="s", stage="ingest") == 0
    assert max(lead) <= 3 + 1  # queue plus the frame in the decoder's hand


def test_finite_source_that_fails_ends_without_replaying() -> None:
    source = ScriptedSource(1, count=10, finite=True, fail_after=3)
    opener, rec, metrics = Opener(source), Recorder(), Metrics()
    sup = _supervisor(opener, rec, metrics)
    _run(sup.run)
    status = sup.status()
    assert status["state"] == "ended" and status["reconnects"] == 0 and len(opener.calls) == 1
    assert status["last_error"] == "scripted failure of source 1 after 3 frames"
    assert len(rec.frames) == 3


def test_failing_live_source_retries_with_growing_backoff() -> None:
    failing = [ScriptedSource(i, fail_after=0) for i in (1, 2, 3)]
    healthy = ScriptedSource(4, fps=200)
    opener, rec, metrics = Opener(*failing, healthy), Recorder(), Metrics()
    sup = _supervisor(opener, rec, metrics,
                      reconnect=BackoffConfig(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.0))

    async def main() -> None:
        task = asyncio.create_task(sup.run())
        await until(lambda: len(rec.frames) >= 5, 10, "the fourth connection to deliver")
        assert sup.state == "up"
        await sup.stop()
        await task

    _run(main)
    # The constructor built the first source; each later call is one reconnect attempt,
    # after 0.1 s, 0.2 s and 0.4 s (no jitter): exponential.
    gaps = np.diff(opener.calls)
    assert len(opener.calls) == 4
    assert gaps[0] >= 0.09 and gaps[1] >= 0.18 and gaps[2] >= 0.36
    assert gaps[2] > gaps[1] > gaps[0]
    assert sup.status()["reconnects"] == 3
    assert sample(metrics, "stream_monitor_stream_reconnects_total", stream="s") == 3
    assert rec.sessions == [1]


def test_a_flapping_source_keeps_backing_off() -> None:
    """Sessions that deliver a few frames and drop do not reset the backoff; a stable one does."""
    flapping = [ScriptedSource(i, fail_after=2, fps=200) for i in (1, 2, 3, 4)]
    healthy = ScriptedSource(5, fps=200)
    opener, rec, metrics = Opener(*flapping, healthy), Recorder(), Metrics()
    sup = _supervisor(opener, rec, metrics, stable_after_s=5.0,
                      reconnect=BackoffConfig(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.0))

    async def main() -> None:
        task = asyncio.create_task(sup.run())
        await until(lambda: len(rec.sessions) == 5, 10, "the fifth session")
        await sup.stop()
        await task

    _run(main)
    gaps = np.diff(opener.calls)
    # 0.1, 0.2, 0.4, 0.8 s: every flap counts as a failure even though it delivered frames.
    assert gaps[0] >= 0.09 and gaps[1] >= 0.18 and gaps[2] >= 0.36 and gaps[3] >= 0.72, gaps


def test_backoff_caps_with_its_jitter() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, multiplier=2.0, jitter=0.2)
    rng = random.Random(7)
    delays = [backoff.delay(attempt, rng) for attempt in range(3, 2000) for _ in range(3)]
    assert max(delays) <= 30.0 and min(delays[-100:]) >= 24.0


def test_stop_returns_promptly_while_a_read_hangs() -> None:
    source = ScriptedSource(1, hang_after=0)  # stuck before its first frame, deaf to close()
    opener, rec, metrics = Opener(source), Recorder(), Metrics()
    sup = _supervisor(opener, rec, metrics, stall_timeout_s=30, open_timeout_s=30)

    async def main() -> None:
        task = asyncio.create_task(sup.run())
        await until(source.hanging.is_set, 5, "the source to hang")
        assert sup.state == "connecting"
        started = time.monotonic()
        await sup.stop()
        assert time.monotonic() - started < 1.0
        assert task.done()
        assert sup.state == "stopped"

    _run(main)
    source.release()
    assert source.exited.wait(5)


def test_max_fps_decimates_by_timestamp() -> None:
    source = ScriptedSource(1, count=50, live=False, finite=True)  # pts i/50: one second at 50 fps
    opener, rec, metrics = Opener(source), Recorder(), Metrics()
    sup = _supervisor(opener, rec, metrics, max_fps=10)
    _run(sup.run)
    pts = [f.pts for f in rec.frames]
    assert len(pts) == 10
    assert np.allclose(np.diff(pts), 0.1)
    assert sample(metrics, "stream_monitor_frames_received_total", stream="s") == 50
    assert sup.status()["dropped"] == 0


def test_bad_urls_fail_when_the_supervisor_is_built() -> None:
    rec, metrics = Recorder(), Metrics()
    for url in ("ftp://127.0.0.1/x", "/no/such/video.mp4", "synthetic:nobody"):
        with pytest.raises(SourceError):
            StreamSupervisor("s", url, IngestConfig(), metrics, rec.on_frame)
    sup = StreamSupervisor("s", "rtsp://admin:hunter2@127.0.0.1:1/x", IngestConfig(), metrics, rec.on_frame)
    assert sup.status()["url"] == "rtsp://admin:***@127.0.0.1:1/x"
    assert sup.status()["state"] == "connecting"


def test_synthetic_stream_status_and_callback_errors() -> None:
    rec, metrics = Recorder(), Metrics()
    sup = StreamSupervisor("cam", "synthetic:astronaut?fps=25&size=160x120", IngestConfig(), metrics,
                           rec.on_frame, rec.on_session)

    async def main() -> None:
        assert sup.status()["state"] == "connecting"
        task = asyncio.create_task(sup.run())
        await until(lambda: len(rec.frames) >= 40, 10, "40 synthetic frames")
        status = sup.status()
        assert status["state"] == "up" and status["url"] == "synthetic:astronaut?fps=25&size=160x120"
        assert 15 <= status["fps"] <= 35 and status["frames"] >= 40 and status["started_at"] is not None
        assert sample(metrics, "stream_monitor_stream_up", stream="cam") == 1
        await sup.stop()
        await task
        assert sup.status()["state"] == "stopped"

    _run(main)

    class Broken(Recorder):
        async def on_frame(self, frame: Frame) -> None:
            raise ValueError("pipeline bug")

    broken = Broken()
    sup = StreamSupervisor("cam2", "synthetic:?fps=50&size=64x64", IngestConfig(), metrics, broken.on_frame)
    with pytest.raises(ValueError, match="pipeline bug"):
        _run(sup.run)
    assert sup.state == "stopped" and "pipeline bug" in (sup.status()["last_error"] or "")
