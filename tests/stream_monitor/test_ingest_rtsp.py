"""RTSP ingest against a real gst-rtsp-server on loopback: TCP/UDP, restart, freeze (stall)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from typing import Iterator

import numpy as np
import pytest

from stream_monitor.config import BackoffConfig, IngestConfig
from stream_monitor.errors import SourceError
from stream_monitor.ingest import StreamSupervisor, open_source
from stream_monitor.metrics import Metrics
from stream_monitor.types import Frame
from tests.support.rtsp import RtspServer
from tests.support.polling import sample, until

BACKGROUND = np.array([92, 112, 140])  # the synthetic face video's background, RGB
RETRY = BackoffConfig(initial_s=0.2, max_s=1.0, multiplier=2.0, jitter=0.1)


@contextlib.contextmanager
def frozen(server: RtspServer) -> Iterator[None]:
    """SIGSTOP the server: its sockets stay open but it says nothing (a hung camera)."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_frames_over_tcp_and_udp(rtsp_server: RtspServer, transport: str) -> None:
    source = open_source("cam", rtsp_server.url("/test"), IngestConfig(rtsp_transport=transport))
    frames: list[Frame] = []
    gen = source.frames()
    for frame in gen:
        frames.append(frame)
        if len(frames) == 30:
            break
    source.close()
    gen.close()  # type: ignore[attr-defined]
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in frames)
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert np.median(np.diff(pts)) == pytest.approx(0.04, abs=0.005)  # 25 fps stream clock
    assert frames[-1].arrival >= frames[0].arrival


def test_rtsp_file_mount_plays_the_whole_face_video(rtsp_server: RtspServer) -> None:
    source = open_source("face", rtsp_server.url("/face"), IngestConfig())
    frames = list(source.frames())  # the server ends the stream at the end of the file
    assert len(frames) == 100
    corner = np.median(np.stack([f.image[2, 2].astype(int) for f in frames]), axis=0)
    assert np.abs(corner - BACKGROUND).max() < 12  # the picture arrives in RGB order


def test_read_timeout_fires_when_the_server_freezes(rtsp_server: RtspServer) -> None:
    cfg = IngestConfig(read_timeout_s=1.0, open_timeout_s=5.0)
    source = open_source("cam", rtsp_server.url("/test"), cfg)
    gen = source.frames()
    for _, _frame in zip(range(40), gen):  # past the frames buffered while probing
        pass
    with frozen(rtsp_server):
        started = time.monotonic()
        with pytest.raises(SourceError, match="read timed out") as info:
            for _frame in gen:
                pass
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed <= 3 * cfg.read_timeout_s + 0.5  # FFmpeg's RTSP demuxer waits ~2x
    assert rtsp_server.url("/test") in str(info.value)


def test_supervisor_reconnects_after_a_server_restart_while_another_stream_runs(rtsp_server: RtspServer) -> None:
    cfg = IngestConfig(open_timeout_s=3.0, read_timeout_s=2.0, stall_timeout_s=4.0, reconnect=RETRY)
    metrics = Metrics()
    cam: list[Frame] = []
    other: list[Frame] = []
    sessions: list[int] = []

    async def on_cam(frame: Frame) -> None:
        cam.append(frame)

    async def on_other(frame: Frame) -> None:
        other.append(frame)

    sup = StreamSupervisor("cam", rtsp_server.url("/test"), cfg, metrics, on_cam, lambda n, live: sessions.append(n))
    side = StreamSupervisor("side", "synthetic:astronaut?fps=25&size=160x120", cfg, metrics, on_other)

    async def main() -> None:
        tasks = [asyncio.create_task(sup.run()), asyncio.create_task(side.run())]
        await until(lambda: len(cam) >= 20, 15, "first RTSP frames")
        assert sup.state == "up" and sample(metrics, "stream_monitor_stream_up", stream="cam") == 1
        before = len(cam)
        side_before = len(other)
        await asyncio.to_thread(rtsp_server.restart, 1.0)
        await until(lambda: sup.status()["reconnects"] >= 1, 10, "a reconnect attempt")
        await until(lambda: sup.state == "up" and len(sessions) == 2, 20, "the stream to come back")
        await until(lambda: len(cam) >= before + 20, 10, "frames after the restart")
        status = sup.status()
        side_status = side.status()
        await asyncio.gather(sup.stop(), side.stop())
        await asyncio.gather(*tasks)
        assert status["reconnects"] >= 1 and status["sessions"] == 2
        assert sample(metrics, "stream_monitor_stream_reconnects_total", stream="cam") == status["reconnects"]
        assert sessions == [1, 2]
        seqs = [f.seq for f in cam]
        assert all(b > a for a, b in zip(seqs, seqs[1:]))  # monotonic across the two connections
        # The other stream never noticed: it kept delivering at its rate the whole time.
        assert side_status["state"] == "up" and side_status["reconnects"] == 0
        assert len(other) - side_before >= 25
        assert sample(metrics, "stream_monitor_frames_received_total", stream="cam") >= len(cam)

    asyncio.run(asyncio.wait_for(main(), 50))


def test_stall_watchdog_reconnects_when_a_server_goes_silent(rtsp_server: RtspServer) -> None:
    # PyAV's read timeout is long on purpose, so the watchdog is what notices the silence.
    cfg = IngestConfig(open_timeout_s=1.5, read_timeout_s=30.0, stall_timeout_s=1.0, reconnect=RETRY)
    metrics = Metrics()
    frames: list[Frame] = []

    async def on_frame(frame: Frame) -> None:
        frames.append(frame)

    sup = StreamSupervisor("cam", rtsp_server.url("/test"), cfg, metrics, on_frame)

    async def main() -> None:
        task = asyncio.create_task(sup.run())
        await until(lambda: len(frames) >= 10, 15, "first frames")
        with frozen(rtsp_server):
            silent_at = time.monotonic()
            await until(lambda: sup.state == "reconnecting", 5, "the watchdog")
            assert 0.9 <= time.monotonic() - silent_at <= 4.0
            assert "stalled" in (sup.status()["last_error"] or "")
            assert sample(metrics, "stream_monitor_stream_up", stream="cam") == 0
            await asyncio.sleep(1.0)  # reconnect attempts meet a frozen server too
        count = len(frames)
        await until(lambda: sup.state == "up" and len(frames) >= count + 10, 20, "frames after the thaw")
        # The abandoned decode thread got its next packet after the thaw, saw it was told to
        # stop, and exited; only the current connection's thread is left.
        await until(lambda: sum(t.name.startswith("decode-cam-") for t in threading.enumerate()) == 1, 10,
                     "the abandoned decode thread to exit")
        assert sup.status()["reconnects"] >= 1
        await sup.stop()
        await task

    asyncio.run(asyncio.wait_for(main(), 50))
