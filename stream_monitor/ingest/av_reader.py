"""Demux and decode the video stream of a URL or file with PyAV, in the caller's thread.

Shared by the RTSP and file sources. Contract of :func:`read_video`:

- opens the container inside the generator (so the opening, which can block for up to
  the open timeout, happens in the decode thread, never on the asyncio loop);
- demuxes **only the first video stream** (a damaged audio track cannot stop the video);
- yields :class:`~stream_monitor.types.Frame` with ``seq`` counting from 0, ``pts`` the
  frame's stream time in seconds (``frame.time``; when missing, the previous pts plus one
  frame period, i.e. ``index / rate`` for a stream without timestamps), ``arrival`` the
  wall-clock time after decoding and ``image`` uint8 RGB ``[H, W, 3]``;
- with ``pace=True`` sleeps so frames leave at their pts rate (real-time file playback);
- returns at end of stream or when ``stop`` is set (checked between frames), and always
  closes the container itself: closing it from another thread while FFmpeg is inside a
  read would be a use-after-free;
- raises :class:`~stream_monitor.errors.SourceError` with the (redacted) URL and the reason
  for open failures, timeouts, read errors and media it cannot decode.

Timeouts: PyAV's interrupt callback aborts an open after ``open_timeout`` s and a single
read after ``read_timeout`` s. FFmpeg's RTSP demuxer retries once after an interrupted
read, so a silent RTSP server is reported after about twice ``read_timeout`` (measured
with FFmpeg 8 over TCP and UDP); the supervisor's stall watchdog is the backstop.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

import av
import av.error

from ..errors import SourceError
from ..types import Frame

# Consecutive packets that fail to decode before the stream counts as undecodable; a few
# bad packets (packet loss on UDP, a damaged GOP) are normal and only cost frames.
MAX_BAD_PACKETS = 50
_TIMEOUT_ERRORS = (av.error.ExitError, av.error.TimeoutError)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text}"


def _timed_out(exc: BaseException, elapsed: float, limit: float | None) -> bool:
    # FFmpeg reports an interrupted RTSP handshake as "Invalid data", so judge by the clock too.
    return isinstance(exc, _TIMEOUT_ERRORS) or (limit is not None and elapsed >= 0.9 * limit)


def open_container(target: str, shown: str, options: dict[str, str], open_timeout: float | None,
                   read_timeout: float | None) -> av.container.InputContainer:
    """``av.open`` for reading with timeouts; failures become SourceError naming ``shown``."""
    started = time.monotonic()
    try:
        return av.open(target, mode="r", options=options, timeout=(open_timeout, read_timeout))
    except (av.error.FFmpegError, OSError) as exc:
        elapsed = time.monotonic() - started
        if _timed_out(exc, elapsed, open_timeout):
            raise SourceError(f"{shown}: open timed out: no answer within {elapsed:.1f}s "
                              f"(ingest.open_timeout_s={open_timeout}; {_reason(exc)})") from exc
        raise SourceError(f"{shown}: cannot open ({_reason(exc)})") from exc


def read_video(stream_id: str, target: str, *, shown: str, options: dict[str, str] | None = None,
               open_timeout: float | None = None, read_timeout: float | None = None,
               stop: threading.Event | None = None, pace: bool = False) -> Iterator[Frame]:
    """Frames of the first video stream of ``target`` (see the module docstring)."""
    stop = stop or threading.Event()
    container = open_container(target, shown, options or {}, open_timeout, read_timeout)
    try:
        if not container.streams.video:
            raise SourceError(f"{shown}: no video stream (streams: "
                              f"{', '.join(s.type for s in container.streams) or 'none'})")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        period = 1.0 / float(rate) if rate else 1.0 / 25.0
        index = 0
        last_pts: float | None = None
        clock_ref: tuple[float, float] | None = None  # (monotonic, pts) that pacing counts from
        bad_packets = 0
        packets = container.demux(stream)
        while not stop.is_set():
            read_started = time.monotonic()
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.error.FFmpegError, OSError) as exc:
                elapsed = time.monotonic() - read_started
                if _timed_out(exc, elapsed, read_timeout):
                    raise SourceError(f"{shown}: read timed out: no data for {elapsed:.1f}s "
                                      f"(ingest.read_timeout_s={read_timeout}; {_reason(exc)})") from exc
                raise SourceError(f"{shown}: read failed after {index} frames ({_reason(exc)})") from exc
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                bad_packets += 1
                if bad_packets >= MAX_BAD_PACKETS:
                    raise SourceError(f"{shown}: undecodable video ({bad_packets} packets in a row failed; "
                                      f"last: {_reason(exc)})") from exc
                continue
            bad_packets = 0
            for vf in decoded:
                pts = vf.time if vf.time is not None else (0.0 if last_pts is None else last_pts + period)
                if pace:
                    now = time.monotonic()
                    if clock_ref is None or pts < clock_ref[1]:
                        clock_ref = (now, pts)
                    due = clock_ref[0] + (pts - clock_ref[1])
                    if now - due > 1.0:
                        clock_ref = (now, pts)  # fell far behind: rebase rather than burst the backlog
                    elif due > now and stop.wait(due - now):
                        return
                image = vf.to_ndarray(format="rgb24")
                yield Frame(stream_id, index, float(pts), time.time(), image)
                last_pts = pts
                index += 1
                if stop.is_set():
                    return
        if index == 0 and not stop.is_set():
            raise SourceError(f"{shown}: ended before any video frame could be decoded")
    finally:
        container.close()
