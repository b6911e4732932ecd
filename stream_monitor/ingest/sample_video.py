"""Write the sample video the CPU compose profile loops into its RTSP server.

``python -m stream_monitor.ingest.sample_video OUT.mp4 [--seconds S] [--fps F] [--size WxH]``

The video is the ``synthetic:`` scene (scikit-image's public-domain astronaut photo, moving
slowly on a plain background; :mod:`stream_monitor.ingest.synthetic`), encoded as H.264
(yuv420p, no B-frames, a keyframe every second) so an RTSP client that joins mid-loop gets
a picture within a second. It is written to ``OUT.partial`` and renamed into place, so a
publisher polling for OUT never opens a half-written file. An existing OUT is kept (exit 0)
unless ``--force``. Errors end in one line on stderr and exit status 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import av.error
import numpy as np
from av.video.stream import VideoStream

from ..errors import SourceError
from .synthetic import SyntheticSpec, parse_synthetic_url, synthetic_frames


def write_sample(path: Path, spec: SyntheticSpec) -> Path:
    """Encode ``spec`` (``seconds`` > 0) to ``path`` (H.264 in the container its suffix names).

    Frames are uint8 RGB from :func:`synthetic_frames`; frame ``i`` has pts ``i / fps``.
    Written to a ``.partial`` sibling first and renamed, so readers see all of it or nothing.
    """
    if spec.frame_count is None:
        raise ValueError("a sample video needs seconds > 0")
    if spec.width % 2 or spec.height % 2:
        raise ValueError("yuv420p needs an even width and height")
    partial = path.with_name(path.name + ".partial")
    rate = Fraction(spec.fps).limit_denominator(1001)
    gop = max(1, round(spec.fps))
    try:
        # Named from the final suffix: FFmpeg cannot guess a container from ".partial".
        with av.open(str(partial), "w", format=_format_of(path)) as container:
            stream = cast(VideoStream, container.add_stream("libx264", rate=rate))
            stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
            stream.codec_context.gop_size = gop
            stream.options = {"preset": "veryfast", "crf": "23", "bf": "0",
                              "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
            for image in synthetic_frames(spec):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except BaseException:
        partial.unlink(missing_ok=True)  # no half-written file left for the next run to trip on
        raise
    os.replace(partial, path)
    return path


def _format_of(path: Path) -> str:
    return {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}.get(path.suffix.lower(), "mp4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_monitor.ingest.sample_video",
                                     description="Write a video of a moving public-domain face (H.264).")
    parser.add_argument("out", type=Path, help="the video file to write (.mp4, .mkv or .mov)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length in seconds (default 30)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT, even numbers (default 640x480)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"sample video: {args.out} exists; kept (--force rewrites it)", file=sys.stderr)
        return 0
    try:
        if not args.seconds > 0:
            raise SourceError("--seconds must be > 0")
        spec = parse_synthetic_url(f"synthetic:astronaut?fps={args.fps}&size={args.size}&seconds={args.seconds}")
        write_sample(args.out, spec)
    except (SourceError, ValueError) as exc:
        print(f"sample video: {exc}", file=sys.stderr)
        return 2
    except (OSError, av.error.FFmpegError) as exc:
        print(f"sample video: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"sample video: wrote {args.out} ({spec.frame_count} frames, {spec.width}x{spec.height} at {spec.fps:g} fps)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
