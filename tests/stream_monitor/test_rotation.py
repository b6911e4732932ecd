"""Rotation side data: a phone's portrait clip (stored sideways plus a display matrix) is
analysed upright, from a file and over HTTP; a matrix of 90, 180 and 270 degrees each.

The clips are the synthetic face scene rendered upright in portrait (240 x 320), stored
turned the other way and tagged with the display rotation that undoes it (PyAV writes the
MP4 ``tkhd`` matrix), as a phone does. Read back, every frame must equal the upright render
(up to H.264 loss), with width and height swapped back, and MTCNN must find the one face
where the scene put it. ``ffmpeg``'s own autorotation, when the CLI is installed, is the
independent reference for the direction of the turn.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from stream_monitor.config import FacesConfig, IngestConfig
from stream_monitor.faces.detect import FaceDetector, create_detector
from stream_monitor.ingest.av_reader import quarter_turns, read_video
from stream_monitor.ingest.file import FileSource
from stream_monitor.ingest.synthetic import SyntheticScene, SyntheticSpec
from tests.support.media import write_video

FPS = 10
FRAMES = 6
SCENE = SyntheticScene(SyntheticSpec(fps=FPS, width=240, height=320))  # portrait, upright
# Display rotation (counterclockwise degrees, as the matrix says) -> clip; 270 is written as -90.
ROTATIONS = (90, 180, -90)


def _upright(i: int) -> np.ndarray:
    return SCENE.render(i)


def _clip(folder: Path, rotation: int) -> Path:
    """Pictures stored turned by -rotation, tagged to be shown turned by +rotation."""
    k = quarter_turns(rotation)
    stored = [np.ascontiguousarray(np.rot90(_upright(i), -k)) for i in range(FRAMES)]
    return write_video(folder / f"rot{rotation % 360}.mp4", stored, fps=FPS, rotation=rotation)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def mtcnn() -> FaceDetector:
    return create_detector(FacesConfig(backend="mtcnn", min_size=40), torch.device("cpu"))


def test_quarter_turns() -> None:
    assert [quarter_turns(r) for r in (0, 90, -90, 180, -180, 270, 89.6, -0.0)] == [0, 1, 3, 2, 2, 3, 1, 0]


def _check_upright(images: list[np.ndarray], mtcnn: FaceDetector) -> None:
    assert len(images) == FRAMES
    for i, image in enumerate(images):
        assert image.shape == (320, 240, 3) and image.flags["C_CONTIGUOUS"], image.shape
        # The same picture as the upright render (H.264 at CRF 23: a few levels of error).
        assert np.abs(image.astype(np.int16) - _upright(i)).mean() < 6, i
    for i in (0, FRAMES - 1):
        (faces,) = mtcnn.detect([images[i]])
        assert len(faces) == 1, (i, faces)
        assert _iou(faces[0].box, SCENE.face_boxes(i)[0]) > 0.5, (faces[0].box, SCENE.face_boxes(i)[0])


@pytest.mark.parametrize("rotation", ROTATIONS)
def test_file_source_applies_the_display_matrix(tmp_path: Path, mtcnn: FaceDetector, rotation: int) -> None:
    path = _clip(tmp_path, rotation)
    import av
    with av.open(str(path)) as container:  # the clip really is stored sideways (or upside down)
        raw = next(container.decode(video=0))
        assert raw.rotation % 360 == rotation % 360
        stored = raw.to_ndarray(format="rgb24")
    assert stored.shape == ((240, 320, 3) if rotation != 180 else (320, 240, 3))
    assert np.abs(stored.astype(np.int16) - np.rot90(_upright(0), -quarter_turns(rotation))).mean() < 6
    source = FileSource("phone", str(path), IngestConfig(realtime=False))
    _check_upright([f.image for f in source.frames()], mtcnn)


def test_unrotated_clip_is_unchanged(tmp_path: Path) -> None:
    path = write_video(tmp_path / "plain.mp4", [_upright(i) for i in range(FRAMES)], fps=FPS)
    frames = [f.image for f in read_video("plain", str(path), shown="plain.mp4")]
    assert len(frames) == FRAMES and frames[0].shape == (320, 240, 3)
    assert np.abs(frames[0].astype(np.int16) - _upright(0)).mean() < 6


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A plain HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_http_source_applies_the_display_matrix(http_root: tuple[Path, int], mtcnn: FaceDetector) -> None:
    root, port = http_root
    _clip(root, 90)
    source = FileSource("phone-http", f"http://127.0.0.1:{port}/rot90.mp4", IngestConfig(realtime=False))
    _check_upright([f.image for f in source.frames()], mtcnn)


def test_the_turn_agrees_with_ffmpeg_autorotation(tmp_path: Path) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("the ffmpeg CLI is not installed (the reference for the direction of the turn)")
    for rotation in ROTATIONS:
        path = _clip(tmp_path, rotation)
        ours = next(iter(read_video("x", str(path), shown=path.name))).image
        raw = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
                              "-pix_fmt", "rgb24", "-"], capture_output=True, check=True, timeout=60).stdout
        theirs = np.frombuffer(raw, np.uint8).reshape(ours.shape)
        assert np.abs(ours.astype(np.int16) - theirs).mean() < 3, rotation


def test_old_pyav_fallback_reads_the_rotate_metadata(tmp_path: Path) -> None:
    """Where frames have no ``rotation`` (PyAV < 14), the stream's ``rotate`` metadata (clockwise
    degrees, as old FFmpeg exported it) turns them the same way."""
    import av

    from stream_monitor.ingest.av_reader import stream_rotation, upright_image

    class _Stream:
        def __init__(self, rotate: str | None) -> None:
            self.metadata = {} if rotate is None else {"rotate": rotate}

    class _OldFrame:  # what PyAV < 14 gives: to_ndarray, no rotation attribute
        def __init__(self, image: np.ndarray) -> None:
            self._image = image

        def to_ndarray(self, format: str) -> np.ndarray:
            assert format == "rgb24"
            return self._image

    upright = _upright(0)
    for rotation in ROTATIONS:
        stored = np.ascontiguousarray(np.rot90(upright, -quarter_turns(rotation)))
        clockwise = str((-rotation) % 360)  # "rotate" metadata: 270 for a +90 matrix, and so on
        fallback = stream_rotation(_Stream(clockwise))  # type: ignore[arg-type]
        turned = upright_image(_OldFrame(stored), fallback)  # type: ignore[arg-type]
        assert np.array_equal(turned, upright), rotation
    assert stream_rotation(_Stream(None)) == 0 and stream_rotation(_Stream("sideways")) == 0  # type: ignore[arg-type]
    # A real frame's own rotation wins over the fallback.
    with av.open(str(_clip(tmp_path, 90))) as container:
        frame = next(container.decode(video=0))
        assert upright_image(frame, fallback=180.0).shape == (320, 240, 3)
        assert np.abs(upright_image(frame, fallback=180.0).astype(np.int16) - upright).mean() < 6
