"""A GStreamer RTSP server on 127.0.0.1 for the tests (run under Debian's /usr/bin/python3).

Only Debian's interpreter has the ``gi`` bindings for gst-rtsp-server, so this file uses
the standard library and ``gi`` only, and is started as a child process by
:class:`tests.support.rtsp.RtspServer`. Mounts:

- ``/test``: a live ``videotestsrc`` ball encoded with x264 (shared by all clients, like a
  camera: every client sees the same live picture).
- ``--file /NAME=PATH`` (repeatable): an H.264 file in MP4/MOV or Matroska, re-packetised
  without re-encoding (demux ! h264parse ! rtph264pay). Not shared: each client gets its
  own pipeline from the start of the file, played in real time, ending at EOF.

Prints ``READY <port>`` on stdout once ``attach()`` succeeded; exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

_ENCODER = ("x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=1000 "
            "! rtph264pay name=pay0 pt=96 config-interval=1")
_DEMUXERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".mkv": "matroskademux"}


def ball_launch(width: int, height: int, fps: int) -> str:
    return (f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
            f"framerate={fps}/1 ! {_ENCODER.format(gop=fps)} )")


def file_launch(path: str) -> str:
    suffix = path[path.rfind("."):].lower()
    demux = _DEMUXERS.get(suffix)
    if demux is None:
        raise SystemExit(f"unsupported file type {suffix!r} for {path} (use {', '.join(_DEMUXERS)})")
    # The file already holds H.264: repacketise it, never re-encode (cheap on the CI's 2 cores).
    return f"( filesrc location=\"{path}\" ! {demux} ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--test-size", default="640x480", help="WIDTHxHEIGHT of the /test mount")
    ap.add_argument("--test-fps", type=int, default=25)
    ap.add_argument("--file", action="append", default=[], metavar="/NAME=PATH")
    args = ap.parse_args(argv)

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()

    width, height = (int(v) for v in args.test_size.lower().split("x"))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(ball_launch(width, height, args.test_fps))
    factory.set_shared(True)
    mounts.add_factory("/test", factory)

    for spec in args.file:
        mount, sep, path = spec.partition("=")
        if not sep or not mount.startswith("/"):
            raise SystemExit(f"--file wants /NAME=PATH, got {spec!r}")
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(file_launch(path))
        factory.set_shared(False)
        mounts.add_factory(mount, factory)

    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
