"""Video files (a path or ``file://``) and ``http(s)://`` URLs through PyAV; finite.

With ``cfg.realtime`` (the default, ``--realtime``) frames are paced at their pts rate, as
if a camera were playing the file, and the source is ``live`` (under load the consumer
drops the oldest frames). With ``--no-realtime`` frames come as fast as they decode and
the source is not live: the consumer applies backpressure, so no frame is lost.

FFmpeg may use only the scheme's protocols (:data:`~stream_monitor.ingest.policy.PROTOCOLS`:
an HTTP playlist cannot name a local file). With a ``guard`` (a URL or path from the network)
FFmpeg opens nothing itself: every open, the URL's and each playlist entry's, goes through
:meth:`~stream_monitor.ingest.policy.SourceGuard.io_open`.
"""

from __future__ import annotations

import threading

import av
from typing import Iterator

from ..config import IngestConfig
from ..errors import SourceError
from ..types import Frame
from .av_reader import IoOpen, endless, read_video
from .policy import NO_PROTOCOLS, PROTOCOLS, SourceGuard
from .urls import local_path, redact, scheme_of


class FileSource:
    """A local video file or an HTTP(S) resource, read once from start to end; or, for an HTTP(S)
    resource that is a live feed (``cfg.live``), one connection to it like an RTSP camera's.

    ``cfg.live``: ``"auto"`` decides when the resource opens (:func:`~.av_reader.endless`: a live
    HLS playlist, an MJPEG camera, a stream without duration); ``True``/``False`` say it for every
    HTTP(S) source. A live feed is ``live`` (a slow consumer drops its oldest frames) and not
    ``finite`` (the supervisor reconnects when it ends); local files are always finite.
    """

    def __init__(self, stream_id: str, url: str, cfg: IngestConfig, guard: SourceGuard | None = None) -> None:
        self.stream_id = stream_id
        self.cfg = cfg
        self.live = cfg.realtime
        self.finite = True
        scheme = scheme_of(url)
        self._http = scheme in ("http", "https")
        if self._http and cfg.live is True:
            self.live, self.finite = True, False
        self.options: dict[str, str] = {"protocol_whitelist": PROTOCOLS[scheme] if guard is None else NO_PROTOCOLS}
        self.open_timeout: float | None = None
        self.read_timeout: float | None = None
        self.io_open: IoOpen | None = None
        if guard is not None:
            self.io_open = guard.io_open
        if scheme in ("http", "https"):
            self.target = url
            self.shown = redact(url)
            # rw_timeout (µs) bounds every socket read inside FFmpeg's http protocol too.
            self.options["rw_timeout"] = str(int(cfg.read_timeout_s * 1_000_000))
            self.open_timeout, self.read_timeout = cfg.open_timeout_s, cfg.read_timeout_s
        elif guard is not None:
            path = guard.roots.resolve(url)[1]  # SourceRefused outside the roots, whether it exists or not
            if not path.is_file():
                raise SourceError(f"{url!r}: no such file")
            self.target = self.shown = str(path)  # opened under the roots, link-free, by io_open
        else:
            try:
                path = local_path(url)
            except ValueError as exc:
                raise SourceError(str(exc)) from exc
            if not path.is_file():
                raise SourceError(f"{url}: no such file" if not path.exists() else f"{url}: not a regular file")
            self.target = str(path)
            self.shown = str(path)
        self._stop = threading.Event()

    def frames(self) -> Iterator[Frame]:
        """The file's frames in order; paced in real time when ``live``."""
        return read_video(self.stream_id, self.target, shown=self.shown, options=self.options,
                          open_timeout=self.open_timeout, read_timeout=self.read_timeout,
                          stop=self._stop, pace=self._paced, hwaccel=self.cfg.hwaccel,
                          io_open=self.io_open, max_pixels=self.cfg.max_pixels, on_open=self._opened)

    def _paced(self) -> bool:
        # A live feed arrives at its own pace; a file played as a camera is paced by its pts.
        return self.live and self.finite

    def _opened(self, container: av.container.InputContainer) -> None:
        # Decode thread, before the first frame: the supervisor reads live/finite after that.
        if self._http and self.cfg.live == "auto" and endless(container):
            self.live, self.finite = True, False

    def close(self) -> None:
        """Ask frames() to stop at its next frame; safe from any thread."""
        self._stop.set()
