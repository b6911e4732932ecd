"""The Source interface and :func:`open_source`, which picks an implementation by URL scheme.

A Source is one connection attempt. :meth:`Source.frames` is a blocking generator that the
supervisor runs in a dedicated decode thread; it connects when first advanced, yields
:class:`~stream_monitor.types.Frame` (``seq`` from 0 per source: the supervisor renumbers;
``pts`` stream time in seconds; ``arrival`` = ``time.time()`` after decoding; ``image``
uint8 RGB ``[H, W, 3]``), raises :class:`~stream_monitor.errors.SourceError` with a clear
message on open failure, timeouts or undecodable media, and returns at end of stream.
:meth:`Source.close` may be called from any thread: it only asks ``frames()`` to return at
its next frame (or when its read timeout fires); the generator releases its resources itself.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

from ..config import IngestConfig
from ..types import Frame
from .file import FileSource
from .policy import SourceGuard, check_scheme, check_text
from .rtsp import RtspSource
from .synthetic import SyntheticSource


class Source(Protocol):
    """A video source; see the module docstring for the contract of each member.

    ``live``: frames arrive in real time and a slow consumer drops the oldest.
    Not live: the consumer applies backpressure (a file read faster than real time).
    ``finite``: end of stream means the video is over (no reconnect).
    """

    live: bool
    finite: bool

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


SourceFactory = Callable[[str, str, IngestConfig, "SourceGuard | None"], Source]

# Explicit table: scheme -> implementation ("file" also covers plain paths).
SOURCES: dict[str, SourceFactory] = {
    "rtsp": RtspSource,
    "rtsps": RtspSource,
    "http": FileSource,
    "https": FileSource,
    "file": FileSource,
    "synthetic": lambda stream_id, url, cfg, guard: SyntheticSource(stream_id, url, realtime=cfg.realtime),
}


def open_source(stream_id: str, url: str, cfg: IngestConfig, guard: SourceGuard | None = None) -> Source:
    """Build the Source for ``url`` without connecting.

    Raises SourceError, before any connection is made, for control characters or whitespace in
    the URL, an unsupported scheme, a malformed ``synthetic:`` URL or a local file that does not
    exist. ``guard``: the URL came from the network (:mod:`.policy`): SourceRefused, also before
    anything is opened, when the guard's hosts or roots do not allow it; the Source then opens
    everything through the guard.
    """
    check_text(url)
    if guard is not None:
        guard.check(url)
    return SOURCES[check_scheme(url)](stream_id, url, cfg, guard)


def check_url(url: str, guard: SourceGuard | None = None) -> None:
    """Raise SourceError if ``url`` could not become a Source (same checks as open_source; no I/O
    beyond a local file's existence)."""
    open_source("check", url, IngestConfig(), guard)
