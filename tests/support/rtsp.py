"""A real GStreamer RTSP server (gst-rtsp-server) on 127.0.0.1 for the tests.

The server runs :mod:`tests.support.rtsp_server_main` in a child process under Debian's
``/usr/bin/python3`` (the only interpreter with the ``gi`` bindings, ENVIRONMENT.md §5).
``stop()`` / ``start()`` / ``restart()`` keep the port, so clients can reconnect to the same URL.
"""

from __future__ import annotations

import functools
import os
import select
import subprocess
import time
from pathlib import Path


from tests.support.servers import free_port, stop_process, unavailable

SYSTEM_PYTHON = "/usr/bin/python3"
_MAIN = Path(__file__).with_name("rtsp_server_main.py")


@functools.lru_cache(maxsize=1)
def gi_problem() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None when it can."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found (the RTSP server needs Debian's python3-gi)"
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer")
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return (f"{SYSTEM_PYTHON} lacks gi/gst-rtsp-server ({last}); install python3-gi "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,bad,ugly}")
    return None


class RtspServer:
    """gst-rtsp-server with a live ``/test`` mount and optional file mounts (``{"/face": path}``)."""

    def __init__(self, workdir: Path, files: dict[str, Path] | None = None, test_size: str = "320x240",
                 test_fps: int = 25, port: int | None = None) -> None:
        problem = gi_problem()
        if problem is not None:
            unavailable(problem)
        self.workdir = workdir
        self.files = dict(files or {})
        self.test_size = test_size
        self.test_fps = test_fps
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"rtsp-server-{self.port}.log"

    def url(self, mount: str = "/test") -> str:
        return f"rtsp://127.0.0.1:{self.port}{mount}"

    def start(self, timeout: float = 15.0) -> None:
        """Start the child and wait for its ``READY`` line (printed after ``attach()``)."""
        cmd = [SYSTEM_PYTHON, str(_MAIN), "--port", str(self.port), "--test-size", self.test_size,
               "--test-fps", str(self.test_fps)]
        for mount, path in self.files.items():
            cmd += ["--file", f"{mount}={path}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"READY"):
            self.stop()
            raise RuntimeError(f"RTSP server did not start on port {self.port} "
                               f"(stdout {line!r}; log {self.log}: {self.log.read_text(errors='replace')[-2000:]})")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()
