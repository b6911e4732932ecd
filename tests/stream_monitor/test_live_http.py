"""Live HTTP sources (MJPEG cameras, live HLS) reconnect like RTSP; HTTP files end (issue 14, part 5)."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest

from stream_monitor.config import BackoffConfig, IngestConfig
from stream_monitor.ingest import StreamSupervisor
from stream_monitor.metrics import Metrics
from stream_monitor.types import Frame
from tests.support.polling import until


class _Camera(http.server.BaseHTTPRequestHandler):
    """``/mjpeg``: a multipart JPEG feed of 15 frames at 30 fps, then the camera hangs up (as a
    flaky camera does); ``/clip.mp4``: a file."""

    clip: bytes = b""
    connections = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).connections += 1
        if self.path == "/clip.mp4":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(self.clip)))
            self.end_headers()
            self.wfile.write(self.clip)
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for i in range(15):
            image = np.full((120, 160, 3), (i * 16) % 256, np.uint8)
            jpeg = cv2.imencode(".jpg", image)[1].tobytes()
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                             + jpeg + b"\r\n")
            time.sleep(1 / 30)


@pytest.fixture
def camera(face_video: Path) -> Iterator[tuple[str, type[_Camera]]]:
    handler = type("Camera", (_Camera,), {"clip": face_video.read_bytes(), "connections": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _supervise(url: str, until_state: Any, **cfg: Any) -> StreamSupervisor:
    frames: list[Frame] = []

    async def on_frame(frame: Frame) -> None:
        frames.append(frame)

    sup = StreamSupervisor("cam", url, IngestConfig(reconnect=BackoffConfig(initial_s=0.1, max_s=0.2), **cfg),
                           Metrics(), on_frame)

    async def main() -> None:
        task = asyncio.create_task(sup.run())
        await until(lambda: until_state(sup, frames), 20, "the expected state")
        await sup.stop()
        await task

    asyncio.run(main())
    return sup


def test_an_mjpeg_camera_that_hangs_up_is_reconnected(camera: tuple[str, type[_Camera]]) -> None:
    base, handler = camera
    sup = _supervise(f"{base}/mjpeg", lambda s, f: s.status()["sessions"] >= 3)
    assert sup.status()["reconnects"] >= 2 and handler.connections >= 3


def test_an_http_file_ends_once(camera: tuple[str, type[_Camera]]) -> None:
    base, handler = camera
    sup = _supervise(f"{base}/clip.mp4", lambda s, f: s.state == "ended", realtime=False)
    assert sup.status()["reconnects"] == 0 and sup.status()["frames"] == 100 and handler.connections == 1


def test_live_can_be_forced_either_way(camera: tuple[str, type[_Camera]]) -> None:
    base, handler = camera
    sup = _supervise(f"{base}/mjpeg", lambda s, f: s.state == "ended", live=False)
    assert sup.status()["reconnects"] == 0
    sup = _supervise(f"{base}/clip.mp4", lambda s, f: s.status()["sessions"] >= 2, live=True, realtime=False)
    assert sup.status()["reconnects"] >= 1
