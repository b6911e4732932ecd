"""``WebRtcSource``: the video track of a WebRTC peer (a WHIP session) as a :class:`Source`.

aiortc receives RTP and decodes it in its own decoder thread; ``track.recv()`` hands each
``av.VideoFrame`` (yuv420p) to the asyncio loop. A pump task on the loop awaits ``recv()``
and puts each frame in a small bounded buffer that drops the oldest frame when full (live
video: the newest frame is what matters; drops go to ``on_drop``). :meth:`frames`, in the
supervisor's decode thread, takes frames out, converts them to uint8 RGB there (the costly
part, never on the loop) and yields :class:`~stream_monitor.types.Frame`:

- ``pts`` = ``frame.time`` in seconds (aiortc rebases RTP timestamps to 0 and unwraps their
  32-bit wrap, so it starts near 0 like every other source); wall-clock time since the first
  frame if a frame has none;
- ``arrival`` = ``time.time()`` after the conversion; ``seq`` from 0.

The source is ``live`` and ``finite``: when the publisher leaves, its track ends
(``MediaStreamError``) and :meth:`frames` returns; there is nothing to reconnect to (a new
WHIP POST is a new session). :meth:`close` (any thread) stops the pump and makes
:meth:`frames` return at once. A track can be consumed by one source only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from typing import Callable, Iterator

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..errors import SourceError
from ..types import Frame
from .av_reader import upright_image

log = logging.getLogger(__name__)

BUFFER_FRAMES = 2  # the supervisor's hand-off behind this one is the real queue
_WAIT_S = 1.0  # frames() re-checks for close at least this often (close() also wakes it)


class _Latest:
    """Loop -> thread buffer of at most ``capacity`` frames; ``put`` drops the oldest when full."""

    def __init__(self, capacity: int) -> None:
        self._items: deque[av.VideoFrame] = deque()
        self._capacity = capacity
        self._cond = threading.Condition()
        self._ended = False

    def put(self, frame: av.VideoFrame) -> int:
        """Queue ``frame``; returns how many frames were dropped to make room (0 or 1)."""
        with self._cond:
            if self._ended:
                return 0
            dropped = 0
            if len(self._items) >= self._capacity:
                self._items.popleft()
                dropped = 1
            self._items.append(frame)
            self._cond.notify()
        return dropped

    def end(self, discard: bool) -> None:
        """No more frames; ``discard`` also drops the queued ones (close, not end of track)."""
        with self._cond:
            self._ended = True
            if discard:
                self._items.clear()
            self._cond.notify_all()

    def get(self) -> av.VideoFrame | None:
        """The next frame, blocking; None once ended and drained."""
        with self._cond:
            while not self._items:
                if self._ended:
                    return None
                self._cond.wait(_WAIT_S)
            return self._items.popleft()


class WebRtcSource:
    """A Source fed by an aiortc video track; see the module docstring for the contract."""

    live = True
    finite = True

    def __init__(self, stream_id: str, track: MediaStreamTrack, on_drop: Callable[[int], None] | None = None,
                 buffer_frames: int = BUFFER_FRAMES) -> None:
        """Start pumping ``track`` at once; call on the loop (the supervisor's opener is)."""
        if track.kind != "video":
            raise SourceError(f"stream {stream_id}: a {track.kind} track is not video")
        self.stream_id = stream_id
        self._track = track
        self._on_drop = on_drop
        self._loop = asyncio.get_running_loop()
        self._buffer = _Latest(buffer_frames)
        self._closed = threading.Event()
        self.error: str | None = None
        self._pump = self._loop.create_task(self._run(), name=f"webrtc-pump-{stream_id}")

    async def _run(self) -> None:
        try:
            while not self._closed.is_set():
                frame = await self._track.recv()
                if not isinstance(frame, av.VideoFrame):
                    continue
                dropped = self._buffer.put(frame)
                if dropped and self._on_drop is not None:
                    self._on_drop(dropped)
        except MediaStreamError:
            log.info("stream %s: the WebRTC track ended", self.stream_id)
        except Exception as exc:  # a receiver failure ends the stream with a reason, not silently
            log.exception("stream %s: receiving the WebRTC track failed", self.stream_id)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._buffer.end(discard=self._closed.is_set())

    def frames(self) -> Iterator[Frame]:
        seq = 0
        first: float | None = None
        try:
            while True:
                frame = self._buffer.get()
                if frame is None:
                    break
                # aiortc negotiates no video-orientation (CVO) extension, so senders rotate
                # before encoding; a decoder's display matrix, if any, is applied as for files.
                image = upright_image(frame)
                arrival = time.time()
                first = arrival if first is None else first
                pts = float(frame.time) if frame.time is not None else arrival - first
                yield Frame(self.stream_id, seq, pts, arrival, image)
                seq += 1
            if self.error is not None and not self._closed.is_set():
                raise SourceError(f"WebRTC track failed: {self.error}")
        finally:
            self.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._buffer.end(discard=True)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the pump is gone with it
            self._loop.call_soon_threadsafe(self._pump.cancel)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

