"""``rtsp://`` and ``rtsps://`` sources through PyAV (live, endless: EOF means the server hung up)."""

from __future__ import annotations

import threading
from typing import Iterator

from ..config import IngestConfig
from ..types import Frame
from .av_reader import read_video
from .urls import redact


class RtspSource:
    """One RTSP connection; :meth:`frames` connects, so build one per connection attempt.

    Transport is ``cfg.rtsp_transport`` (TCP interleaved by default: works through NAT and
    firewalls, no UDP loss; UDP as an option). Only video media are set up with the server.
    Timeouts: ``cfg.open_timeout_s`` for connect + handshake + probing, ``cfg.read_timeout_s``
    for each read (PyAV's interrupt callback), plus FFmpeg's own socket I/O timeout set to
    the read timeout (in microseconds, as FFmpeg wants it).
    """

    live = True
    finite = False

    def __init__(self, stream_id: str, url: str, cfg: IngestConfig) -> None:
        self.stream_id = stream_id
        self.url = url
        self.cfg = cfg
        self.options = {
            "rtsp_transport": cfg.rtsp_transport,
            "timeout": str(int(cfg.read_timeout_s * 1_000_000)),
            "allowed_media_types": "video",
        }
        self._stop = threading.Event()

    def frames(self) -> Iterator[Frame]:
        """Decoded frames as they arrive (see :func:`~stream_monitor.ingest.av_reader.read_video`)."""
        return read_video(self.stream_id, self.url, shown=redact(self.url), options=self.options,
                          open_timeout=self.cfg.open_timeout_s, read_timeout=self.cfg.read_timeout_s,
                          stop=self._stop, hwaccel=self.cfg.hwaccel, max_pixels=self.cfg.max_pixels)

    def close(self) -> None:
        """Ask frames() to stop at its next frame (or its read timeout); safe from any thread."""
        self._stop.set()
