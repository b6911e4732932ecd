"""Read a video with ``read_video`` in this process and report how much its peak RSS grew.

``python -m tests.security.peak_rss PATH MAX_PIXELS`` prints one JSON object:
``{"frames": n, "error": str|null, "grew_kib": int}``, ``grew_kib`` being the rise of the
process's peak resident set (``VmHWM`` in /proc/self/status) across the read, after a warm-up
read of a tiny clip has loaded every library the read needs. Run in a fresh interpreter so
that nothing else the tests did shows in the peak.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from stream_monitor.errors import SourceError
from stream_monitor.ingest.av_reader import read_video
from tests.support.media import write_video


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    path, max_pixels = sys.argv[1], int(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        warm = write_video(Path(tmp) / "warm.mp4", [np.zeros((64, 64, 3), np.uint8)] * 2, fps=5)
        list(read_video("warm", str(warm), shown="warm.mp4"))
    before = peak_kib()
    frames, error = 0, None
    try:
        for _ in read_video("big", path, shown=Path(path).name, max_pixels=max_pixels):
            frames += 1
    except SourceError as exc:
        error = str(exc)
    print(json.dumps({"frames": frames, "error": error, "grew_kib": peak_kib() - before}))


if __name__ == "__main__":
    main()
