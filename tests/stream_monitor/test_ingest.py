"""Ingest sources: the scheme table, synthetic video, files and HTTP, and timeouts that fire."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from stream_monitor.config import IngestConfig
from stream_monitor.errors import SourceError
from stream_monitor.ingest import (
    SyntheticScene,
    SyntheticSpec,
    check_url,
    open_source,
    parse_synthetic_url,
    synthetic_frames,
)
from stream_monitor.ingest.base import Source
from stream_monitor.ingest.file import FileSource
from stream_monitor.ingest.rtsp import RtspSource
from stream_monitor.ingest.synthetic import SyntheticSource
from stream_monitor.ingest.urls import redact
from stream_monitor.types import Frame
from tests.support.media import write_video
from tests.support.servers import free_port

BACKGROUND = np.array([92, 112, 140])  # the synthetic background, RGB


def _take(source: Source, n: int | None = None) -> list[Frame]:
    """Up to ``n`` frames (all when None), then close the source."""
    out: list[Frame] = []
    frames = source.frames()
    try:
        for frame in frames:
            out.append(frame)
            if n is not None and len(out) >= n:
                break
    finally:
        source.close()
        getattr(frames, "close", lambda: None)()
    return out


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A TCP port on loopback that completes handshakes (kernel backlog) but never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s


# ---------------------------------------------------------------- scheme table and URLs

def test_open_source_picks_by_scheme(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not checked until opened")
    cfg = IngestConfig()
    assert isinstance(open_source("a", "rtsp://127.0.0.1:1/x", cfg), RtspSource)
    assert isinstance(open_source("a", "RTSPS://127.0.0.1:1/x", cfg), RtspSource)
    assert isinstance(open_source("a", "http://127.0.0.1:1/v.mp4", cfg), FileSource)
    assert isinstance(open_source("a", "https://127.0.0.1:1/v.mp4", cfg), FileSource)
    assert isinstance(open_source("a", str(video), cfg), FileSource)
    assert isinstance(open_source("a", video.as_uri(), cfg), FileSource)
    assert isinstance(open_source("a", "synthetic:", cfg), SyntheticSource)
    rtsp = open_source("a", "rtsp://127.0.0.1:1/x", cfg)
    assert (rtsp.live, rtsp.finite) == (True, False)
    assert open_source("a", str(video), cfg).live is True
    assert open_source("a", str(video), IngestConfig(realtime=False)).live is False
    assert open_source("a", str(video), cfg).finite is True


@pytest.mark.parametrize("url, needle", [
    ("ftp://127.0.0.1/v.mp4", "unsupported source scheme 'ftp'"),
    ("udp://127.0.0.1:5000", "unsupported source scheme 'udp'"),
    ("gopher://user:hunter2@127.0.0.1/x", "unsupported source scheme 'gopher'"),
    ("/nonexistent/dir/video.mp4", "no such file"),
    ("file:///nonexistent/video.mp4", "no such file"),
    ("synthetic:lena", "unknown synthetic image 'lena'"),
    ("synthetic:astronaut?fps=fast", "bad parameter value"),
    ("synthetic:astronaut?colour=red", "unknown parameter 'colour'"),
    ("synthetic:astronaut?faces=3", "faces must be 1 or 2"),
    ("synthetic:astronaut?size=10x10", "size"),
])
def test_open_source_refuses_before_connecting(url: str, needle: str) -> None:
    with pytest.raises(SourceError, match=needle) as info:
        open_source("a", url, IngestConfig())
    assert "hunter2" not in str(info.value)
    with pytest.raises(SourceError, match=needle):
        check_url(url)


def test_open_source_does_not_connect(silent_listener: socket.socket) -> None:
    port = silent_listener.getsockname()[1]
    open_source("a", f"rtsp://127.0.0.1:{port}/x", IngestConfig())
    open_source("a", f"http://127.0.0.1:{port}/x.mp4", IngestConfig())
    check_url(f"rtsp://127.0.0.1:{port}/x")
    silent_listener.settimeout(0.3)
    with pytest.raises(socket.timeout):
        silent_listener.accept()  # nothing knocked


def test_redact_hides_passwords_only() -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.5:554/h264") == "rtsp://admin:***@10.0.0.5:554/h264"
    assert redact("rtsp://10.0.0.5/h264") == "rtsp://10.0.0.5/h264"
    assert redact("/videos/a.mp4") == "/videos/a.mp4"
    assert "s3cret" not in redact("rtsp://admin:s3cret@10.0.0.5:99999/x")


# ---------------------------------------------------------------- synthetic

def test_synthetic_url_parameters() -> None:
    assert parse_synthetic_url("synthetic:") == SyntheticSpec()
    spec = parse_synthetic_url("synthetic:astronaut?fps=12.5&size=320x240&faces=2&seconds=3")
    assert spec == SyntheticSpec("astronaut", 12.5, 320, 240, 2, 3.0)
    assert spec.frame_count == 38
    assert SyntheticSpec().frame_count is None


def test_synthetic_frames_shape_colour_and_motion() -> None:
    spec = SyntheticSpec(fps=25, width=320, height=240, faces=1)
    frames = list(synthetic_frames(spec, count=26))
    assert all(f.shape == (240, 320, 3) and f.dtype == np.uint8 for f in frames)
    scene = SyntheticScene(spec)
    assert np.array_equal(scene.render(7), frames[7])  # pure: same index, same picture
    # RGB order: a corner is the plain background, the face is skin (red above blue).
    assert np.array_equal(frames[0][0, 0], BACKGROUND)
    x1, y1, x2, y2 = (int(v) for v in scene.face_boxes(0)[0])
    face = frames[0][y1:y2, x1:x2].reshape(-1, 3).astype(float).mean(0)
    assert face[0] > face[2] + 20
    height = y2 - y1
    assert 0.25 * 240 <= height <= 0.40 * 240
    # The head moves smoothly: consecutive boxes overlap a lot, one second later it is elsewhere.
    boxes = [scene.face_boxes(i)[0] for i in range(26)]
    assert min(_iou(a, b) for a, b in zip(boxes, boxes[1:])) > 0.8
    assert np.hypot(boxes[25][0] - boxes[0][0], boxes[25][1] - boxes[0][1]) > 20
    assert np.abs(frames[25].astype(int) - frames[0].astype(int)).mean() > 1.0


def test_synthetic_two_faces_are_mirrored_and_apart() -> None:
    scene = SyntheticScene(SyntheticSpec(width=640, height=480, faces=2))
    for i in (0, 40, 90):
        a, b = scene.face_boxes(i)
        assert _iou(a, b) == 0.0
        assert a[2] <= 320 <= b[0]  # each face keeps to its half
        assert b[2] - b[0] == pytest.approx(a[2] - a[0])
    frame = scene.render(0)
    a, b = scene.face_boxes(0)
    crop_a = frame[int(a[1]):int(a[1]) + 60, int(a[0]):int(a[0]) + 60].astype(float)
    bx2 = round(b[2])
    crop_b = frame[int(b[1]):int(b[1]) + 60, bx2 - 60:bx2].astype(float)
    assert np.abs(crop_a - crop_b[:, ::-1]).mean() < 12  # the second head is the first one mirrored
    assert np.abs(crop_a - crop_b).mean() > 20  # ... and not a plain copy


def test_synthetic_source_is_paced_live_and_timestamped() -> None:
    source = open_source("syn", "synthetic:astronaut?fps=20&size=160x120&seconds=1", IngestConfig())
    assert (source.live, source.finite) == (True, True)
    started = time.monotonic()
    frames = _take(source)
    elapsed = time.monotonic() - started
    assert len(frames) == 20
    assert [f.seq for f in frames] == list(range(20))
    assert np.allclose(np.diff([f.pts for f in frames]), 0.05)
    assert all(f.stream_id == "syn" and f.image.shape == (120, 160, 3) for f in frames)
    assert 0.7 <= elapsed < 10.0  # paced at 20 fps, not as fast as it renders
    assert np.diff([f.arrival for f in frames]).mean() > 0.02


def test_endless_synthetic_stops_on_close() -> None:
    source = open_source("syn", "synthetic:?fps=10&size=64x64", IngestConfig())
    assert source.finite is False
    got: list[Frame] = []

    def consume() -> None:
        got.extend(source.frames())

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.5)
    source.close()
    thread.join(2.0)
    assert not thread.is_alive() and got


# ---------------------------------------------------------------- files and HTTP

def test_file_source_gives_every_frame_with_timestamps(face_video: Path) -> None:
    source = open_source("f", str(face_video), IngestConfig(realtime=False))
    frames = _take(source)
    assert len(frames) == 100
    assert [f.seq for f in frames] == list(range(100))
    assert np.allclose(np.diff([f.pts for f in frames]), 0.04, atol=1e-3)
    assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8
    assert np.abs(frames[0].image[2, 2].astype(int) - BACKGROUND).max() < 12  # still RGB after H.264


def test_file_source_realtime_pacing(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "one_second.mp4",
                       synthetic_frames(SyntheticSpec(width=160, height=120), count=25), fps=25)
    started = time.monotonic()
    frames = _take(open_source("f", str(clip), IngestConfig(realtime=True)))
    elapsed = time.monotonic() - started
    assert len(frames) == 25
    assert elapsed >= 0.75  # 0.96 s of video played at its own rate
    spread = frames[-1].arrival - frames[0].arrival
    assert spread >= 0.7


def test_file_with_damaged_audio_still_gives_video(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "bad_audio.mkv", synthetic_frames(SyntheticSpec(width=160, height=120), count=30),
                       fps=25, damaged_audio=True)
    frames = _take(open_source("f", str(clip), IngestConfig(realtime=False)))
    assert len(frames) == 30


def test_corrupt_files_raise_source_error(tmp_path: Path, face_video: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match=r"garbage\.mp4: cannot open \(InvalidDataError"):
        _take(open_source("f", str(garbage), IngestConfig(realtime=False)))
    truncated = tmp_path / "truncated.mp4"  # the MP4 index (moov) is written last: cut it off
    truncated.write_bytes(face_video.read_bytes()[: face_video.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"truncated\.mp4: cannot open"):
        _take(open_source("f", str(truncated), IngestConfig(realtime=False)))
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="empty.mkv"):
        _take(open_source("f", str(empty), IngestConfig(realtime=False)))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_http_source_reads_a_served_file(face_video: Path) -> None:
    handler = functools.partial(_QuietHandler, directory=str(face_video.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{face_video.name}"
        frames = _take(open_source("h", url, IngestConfig(realtime=False, open_timeout_s=5, read_timeout_s=5)))
        assert len(frames) == 100
        with pytest.raises(SourceError, match="cannot open"):
            _take(open_source("h", url.replace(face_video.name, "missing.mp4"), IngestConfig()))
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- timeouts that fire

@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_open_timeout_fires_on_a_silent_listener(silent_listener: socket.socket, scheme: str) -> None:
    port = silent_listener.getsockname()[1]
    cfg = IngestConfig(open_timeout_s=1.0, read_timeout_s=1.0)
    source = open_source("t", f"{scheme}://127.0.0.1:{port}/cam", cfg)
    started = time.monotonic()
    with pytest.raises(SourceError, match="timed out") as info:
        _take(source)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed <= 3 * cfg.open_timeout_s
    assert f"127.0.0.1:{port}/cam" in str(info.value)


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_closed_port_fails_fast(scheme: str) -> None:
    port = free_port()  # nobody listens there now
    cfg = IngestConfig(open_timeout_s=2.0, read_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(SourceError, match="Connection refused"):
        _take(open_source("t", f"{scheme}://127.0.0.1:{port}/cam", cfg))
    assert time.monotonic() - started <= 3 * cfg.open_timeout_s
