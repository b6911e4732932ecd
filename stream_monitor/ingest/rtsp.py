"""``rtsp://`` and ``rtsps://`` sources through PyAV (live, endless: EOF means the server hung up)."""

from __future__ import annotations

import threading
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from ..config import IngestConfig
from ..errors import SourceError, SourceRefused
from ..types import Frame
from .av_reader import read_video
from .policy import PROTOCOLS, SourceGuard
from .rtsp_relay import RtspRelay
from .urls import redact


class RtspSource:
    """One RTSP connection; :meth:`frames` connects, so build one per connection attempt.

    Transport is ``cfg.rtsp_transport`` (TCP interleaved by default: works through NAT and
    firewalls, no UDP loss; UDP as an option). Only video media are set up with the server.
    Timeouts: ``cfg.open_timeout_s`` for connect + handshake + probing, ``cfg.read_timeout_s``
    for each read (PyAV's interrupt callback), plus FFmpeg's own socket I/O timeout set to
    the read timeout (in microseconds, as FFmpeg wants it). FFmpeg may use only the scheme's
    protocols (:data:`~stream_monitor.ingest.policy.PROTOCOLS`).

    With a ``guard`` (a URL from the network) the camera's address is checked and connected
    to by the guard, and FFmpeg talks to it through an :class:`~.rtsp_relay.RtspRelay` over
    TCP (whatever ``cfg.rtsp_transport`` says), which refuses redirects.
    """

    live = True
    finite = False

    def __init__(self, stream_id: str, url: str, cfg: IngestConfig, guard: SourceGuard | None = None) -> None:
        self.stream_id = stream_id
        self.url = url
        self.cfg = cfg
        self.guard = guard
        self.options = {
            "rtsp_transport": cfg.rtsp_transport if guard is None else "tcp",
            "timeout": str(int(cfg.read_timeout_s * 1_000_000)),
            "allowed_media_types": "video",
            "protocol_whitelist": PROTOCOLS[urlsplit(url).scheme.lower()] if guard is None else "rtsp,tcp",
        }
        self._stop = threading.Event()

    def frames(self) -> Iterator[Frame]:
        """Decoded frames as they arrive (see :func:`~stream_monitor.ingest.av_reader.read_video`)."""
        if self.guard is None:
            return self._read(self.url)
        return self._relayed(self.guard)

    def _read(self, target: str) -> Iterator[Frame]:
        return read_video(self.stream_id, target, shown=redact(self.url), options=self.options,
                          open_timeout=self.cfg.open_timeout_s, read_timeout=self.cfg.read_timeout_s,
                          stop=self._stop, hwaccel=self.cfg.hwaccel, max_pixels=self.cfg.max_pixels)

    def _relayed(self, guard: SourceGuard) -> Iterator[Frame]:
        upstream = guard.connect(self.url)
        if urlsplit(self.url).scheme.lower() == "rtsps":
            upstream = RtspRelay.tls(upstream, urlsplit(self.url).hostname or "")
        relay = RtspRelay(upstream)
        relay.start()
        try:
            yield from self._read(self.local_url(relay.port))
        except SourceError as exc:
            if relay.refusal is not None:
                raise SourceRefused(f"{redact(self.url)!r}: {relay.refusal}") from exc
            raise
        finally:
            relay.close()

    def local_url(self, port: int) -> str:
        """The URL FFmpeg opens for the relay on ``port``: this URL's user-info, path and
        query on ``rtsp://127.0.0.1:port``."""
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (f"{userinfo}@" if userinfo else "") + f"127.0.0.1:{port}"
        return urlunsplit(("rtsp", netloc, parts.path, parts.query, ""))

    def close(self) -> None:
        """Ask frames() to stop at its next frame (or its read timeout); safe from any thread."""
        self._stop.set()
