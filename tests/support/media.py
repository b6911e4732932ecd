"""Test media written at test time with PyAV (no binary fixtures in the repository)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, cast

import av
import numpy as np
from av.video.stream import VideoStream


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, codec: str = "libx264",
                damaged_audio: bool = False, rotation: int = 0) -> Path:
    """Encode uint8 RGB ``[H, W, 3]`` frames (even H and W) to ``path`` and return it.

    H.264 (libx264, yuv420p, no B-frames) with a keyframe every second, so a reader that
    joins late or an RTSP client of a re-packetised file gets a picture within a second.
    The container follows the suffix (``.mp4``, ``.mkv``, ...). Frame ``i`` has pts ``i / fps``.
    ``damaged_audio`` adds an AC3 track of random bytes (use ``.mkv``): decoding it fails
    with ``InvalidDataError`` like the damaged audio of OpenCV's Megamind.avi.
    ``rotation``: a display matrix rotating the stored pictures by that many degrees
    counterclockwise for display (what a phone writes for a portrait clip: 90 or -90).
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = cast(VideoStream, container.add_stream(codec, rate=rate))
        stream.pix_fmt = "yuv420p"
        gop = max(1, round(fps))
        stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "23", "bf": "0",
                              "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        audio = container.add_stream("ac3", rate=48000) if damaged_audio else None
        rng = np.random.default_rng(0)
        configured = False
        for i, image in enumerate(frames):
            if not configured:
                stream.height, stream.width = int(image.shape[0]), int(image.shape[1])
                configured = True
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            if audio is not None:
                garbage = av.Packet(rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
                garbage.stream = audio
                garbage.time_base = Fraction(1, 48000)
                garbage.pts = garbage.dts = round(i * 48000 / fps)
                container.mux(garbage)
        if not configured:
            raise ValueError("write_video needs at least one frame")
        for packet in stream.encode(None):
            container.mux(packet)
    return path
