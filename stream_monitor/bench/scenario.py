"""What the bench streams: N sources of one kind, resolution, frame rate and face count.

Two kinds of source, the same pictures either way (the synthetic moving face of
:mod:`stream_monitor.ingest.synthetic`):

* ``synthetic`` — ``synthetic:astronaut?fps=..&size=WxH&faces=F&seconds=0`` URLs: frames are
  rendered in the stream's decode thread, paced in real time (or as fast as the monitor
  takes them with ``pace="unpaced"``).
* ``file`` — an H.264 MP4 (libx264, yuv420p, one keyframe per second) written at bench time
  with PyAV from :func:`synthetic_frames`, long enough for the whole run; every stream
  reads (decodes) its own copy of it, paced in real time (or unpaced, as above).

:func:`media_frames` gives the baseline the very same frames without pacing: rendered from
the same spec, or decoded from the same file with the service's own PyAV reader.
Units: sizes in pixels, rates in frames per second, times in seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Literal, cast

import av
import numpy as np
from av.video.stream import VideoStream

from ..ingest.av_reader import read_video
from ..ingest.synthetic import SyntheticSpec, synthetic_frames

SourceKind = Literal["synthetic", "file"]
Pace = Literal["realtime", "unpaced"]

# Named resolutions; anything else is given as WIDTHxHEIGHT.
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "240p": (320, 240), "360p": (640, 360), "480p": (640, 480), "720p": (1280, 720), "1080p": (1920, 1080),
}


def parse_resolution(text: str) -> tuple[int, int]:
    """``720p``/``1080p``/... or ``WIDTHxHEIGHT`` → (width, height); even sides (H.264 4:2:0)."""
    key = text.strip().lower()
    if key in RESOLUTIONS:
        return RESOLUTIONS[key]
    match = re.fullmatch(r"(\d+)x(\d+)", key)
    if not match:
        raise ValueError(f"resolution {text!r}: use one of {', '.join(RESOLUTIONS)} or WIDTHxHEIGHT")
    w, h = int(match.group(1)), int(match.group(2))
    if not (64 <= w <= 4096 and 64 <= h <= 4096) or w % 2 or h % 2:
        raise ValueError(f"resolution {text!r}: each side must be even and within 64..4096")
    return w, h


@dataclass(frozen=True)
class Scenario:
    """The streams of one bench run. ``seconds`` is the media length each stream needs
    (warm-up + measured duration + slack for start-up), used for files."""

    streams: int
    source: SourceKind
    width: int
    height: int
    fps: float
    faces: int
    seconds: float
    pace: Pace = "realtime"

    def __post_init__(self) -> None:
        if self.streams < 1 or self.faces not in (1, 2) or self.fps <= 0 or self.seconds <= 0:
            raise ValueError("a scenario needs streams >= 1, faces 1 or 2, fps > 0 and seconds > 0")

    @property
    def label(self) -> str:
        return (f"{self.streams} x {self.width}x{self.height}@{self.fps:g} {self.source}, {self.faces} face(s)"
                + ("" if self.pace == "realtime" else ", unpaced"))

    def spec(self, seconds: float = 0.0) -> SyntheticSpec:
        """The synthetic video behind every stream (``seconds=0``: endless)."""
        return SyntheticSpec(fps=self.fps, width=self.width, height=self.height, faces=self.faces, seconds=seconds)

    def synthetic_url(self) -> str:
        return f"synthetic:astronaut?fps={self.fps:g}&size={self.width}x{self.height}&faces={self.faces}&seconds=0"


def write_video(path: Path, frames: Iterator[np.ndarray], fps: float) -> Path:
    """Encode uint8 RGB ``[H, W, 3]`` frames to an H.264 MP4 (frame ``i`` at pts ``i / fps``)."""
    rate = Fraction(fps).limit_denominator(1001)
    gop = max(1, round(fps))
    with av.open(str(path), "w") as container:
        stream = cast(VideoStream, container.add_stream("libx264", rate=rate))
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        # ultrafast, no B-frames, a keyframe every second: cheap to write, like a camera's stream.
        stream.options = {"preset": "ultrafast", "crf": "23", "bf": "0",
                          "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        configured = False
        for image in frames:
            if not configured:
                stream.height, stream.width = int(image.shape[0]), int(image.shape[1])
                configured = True
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        if not configured:
            raise ValueError("write_video needs at least one frame")
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def prepare_sources(scenario: Scenario, workdir: Path) -> list[str]:
    """One source URL (or file path) per stream; writes the media file for ``file``."""
    if scenario.source == "synthetic":
        return [scenario.synthetic_url()] * scenario.streams
    path = workdir / f"bench_{scenario.width}x{scenario.height}_{scenario.fps:g}fps_{scenario.faces}f.mp4"
    spec = scenario.spec(scenario.seconds)
    write_video(path, synthetic_frames(spec), scenario.fps)
    return [str(path)] * scenario.streams


def media_frames(scenario: Scenario, source: str, seconds: float) -> Iterator[tuple[float, np.ndarray]]:
    """``(pts, uint8 RGB image)`` of the first ``seconds`` of ``source``, as fast as they come:
    rendered (synthetic) or decoded with the service's PyAV reader (file)."""
    count = max(1, round(seconds * scenario.fps))
    if scenario.source == "synthetic":
        for i, image in enumerate(synthetic_frames(scenario.spec(), count)):
            yield i / scenario.fps, image
        return
    for i, frame in enumerate(read_video("baseline", source, shown=source, pace=False)):
        if i >= count:
            return
        yield frame.pts, frame.image
