"""Fixtures shared by the whole suite: real servers on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.listeners import RecordingListener
from tests.support.rtsp import RtspServer
from tests.support.servers import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def face_video(tmp_path: Path) -> Path:
    """A 4 s, 25 fps, 320x240 H.264 MP4 of the synthetic moving face (one keyframe per second)."""
    from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
    from tests.support.media import write_video

    spec = SyntheticSpec(fps=25, width=320, height=240, faces=1, seconds=4)
    return write_video(tmp_path / "face.mp4", synthetic_frames(spec), fps=spec.fps)


@pytest.fixture
def rtsp_server(tmp_path: Path, face_video: Path) -> Iterator[RtspServer]:
    """gst-rtsp-server on 127.0.0.1: live ``/test`` (320x240, 25 fps) and ``/face`` (``face_video``).

    Skips, naming the reason, where /usr/bin/python3 lacks the gi bindings.
    """
    server = RtspServer(tmp_path, files={"/face": face_video})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def outside() -> Iterator[tuple[RecordingListener, RecordingListener]]:
    """Recording listeners on 127.0.0.2 and 127.0.0.3: hosts a refused URL must never reach."""
    listeners = (RecordingListener("127.0.0.2"), RecordingListener("127.0.0.3"))
    try:
        yield listeners
    finally:
        for listener in listeners:
            listener.close()
