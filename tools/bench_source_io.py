"""What the URL policy costs: decoding one HTTP video through FFmpeg's own client (an operator's
URL) against the guarded path (a URL from the API: our client through PyAV's ``io_open``).

Serves a generated 320x240 H.264 MP4 (moov at the end, so the guarded reader seeks with ranges)
on 127.0.0.1 and decodes it whole, alternating the two paths, ``--runs`` times each; prints the
median wall time of each and their ratio. Usage, from the repository root:
``PYTHONPATH=. .venv/bin/python tools/bench_source_io.py [--runs 7]`` (it makes its video with the
tests' media helper).
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import tempfile
import threading
import time
from pathlib import Path

from stream_monitor.config import IngestConfig
from stream_monitor.ingest import open_source
from stream_monitor.ingest.policy import HostPolicy, RootPolicy, SourceGuard
from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
from tests.support.media import write_video


class _Ranged(http.server.BaseHTTPRequestHandler):
    """Serves ``data`` with byte ranges (as web servers and cameras do; FFmpeg needs them for an
    MP4 whose index is at the end)."""

    data = b""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged[6:].split("-")[0].isdigit():
            start = int(ranged[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(self.data) - start))
        self.end_headers()
        self.wfile.write(self.data[start:])


def _serve(video: Path) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Ranged,), {"data": video.read_bytes()}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=10, help="length of the test video")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = SyntheticSpec(fps=25, width=320, height=240, faces=1, seconds=args.seconds)
        write_video(root / "v.mp4", synthetic_frames(spec), fps=spec.fps)
        server = _serve(root / "v.mp4")
        url = f"http://127.0.0.1:{server.server_address[1]}/v.mp4"
        cfg = IngestConfig(realtime=False, open_timeout_s=10, read_timeout_s=10)
        guard = SourceGuard(HostPolicy(["127.0.0.1"], "api.source_hosts"), RootPolicy([], "api.source_roots"), 10.0)
        times: dict[str, list[float]] = {"ffmpeg": [], "guarded": []}
        frames = 0
        for _ in range(args.runs):
            for name, g in (("ffmpeg", None), ("guarded", guard)):
                started = time.perf_counter()
                frames = sum(1 for _ in open_source("b", url, cfg, g).frames())
                times[name].append(time.perf_counter() - started)
        server.shutdown()
    ff, gd = statistics.median(times["ffmpeg"]), statistics.median(times["guarded"])
    print(f"{frames} frames 320x240 H.264 over loopback HTTP, {args.runs} runs each, alternating")
    print(f"FFmpeg's http client:      median {ff * 1000:.1f} ms")
    print(f"guarded (io_open, ranges): median {gd * 1000:.1f} ms")
    print(f"guarded / FFmpeg:          {gd / ff:.2f}x")


if __name__ == "__main__":
    main()
