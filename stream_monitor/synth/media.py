"""Reading the real videos and writing the synthesised ones (PyAV).

Every output — the real copy included — is encoded by :class:`VideoWriter` with the same
settings (H.264, yuv420p, the compression level's CRF), so real and pseudo-fake videos
differ in their faces only, never in their encoding.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator, cast

import av
import numpy as np
from av.video.stream import VideoStream

from ..errors import SourceError

CRF = {"raw": 0, "c23": 23, "c40": 40}  # FF++'s levels: raw = lossless H.264, c23 / c40 = CRF 23 / 40


def video_rate(path: Path) -> Fraction:
    """The video's frame rate (25 if the container does not say); ``SourceError`` if unreadable."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SourceError(f"{path}: no video stream")
            s = container.streams.video[0]
            rate = s.average_rate or s.guessed_rate
    except av.error.FFmpegError as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None
    return Fraction(rate).limit_denominator(1001) if rate else Fraction(25)


def read_frames(path: Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """uint8 RGB frames of the first video stream, in order, cropped to even sides."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for n, frame in enumerate(container.decode(stream)):
                if max_frames is not None and n >= max_frames:
                    return
                image = frame.to_ndarray(format="rgb24")
                h, w = image.shape[:2]
                yield np.ascontiguousarray(image[: h - h % 2, : w - w % 2])
    except av.error.FFmpegError as exc:
        raise SourceError(f"{path}: cannot decode: {exc}") from None


class VideoWriter:
    """H.264 (libx264, yuv420p, CRF of the compression level, keyframe every second)."""

    def __init__(self, path: Path, rate: Fraction, compression: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._container = av.open(str(path), "w")
        self._stream = cast(VideoStream, self._container.add_stream("libx264", rate=rate))
        self._stream.pix_fmt = "yuv420p"
        gop = max(1, round(float(rate)))
        self._stream.options = {"preset": "veryfast", "crf": str(CRF[compression]), "bf": "0",
                                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        self._configured = False
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if not self._configured:
            self._stream.height, self._stream.width = int(image.shape[0]), int(image.shape[1])
            self._configured = True
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._configured:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        self._container.close()
