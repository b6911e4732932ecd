"""StreamSupervisor: keeps one stream flowing — decode thread, hand-off, reconnect, stall watchdog.

One supervisor per stream. Each connection attempt (a *session*) gets a fresh Source and
its own daemon decode thread running ``source.frames()``; frames cross to the asyncio loop
through a bounded :class:`~stream_monitor.ingest.handoff.FrameHandoff` of
``cfg.queue_frames`` (live sources drop the oldest and count
``frames_dropped_total{stream,stage="ingest"}``; files read with ``--no-realtime`` block
the decoder instead). On the loop, ``on_session(n, live)`` is called when the n-th session
starts delivering (n = 1, 2, ...; the pipeline resets its tracks; ``live``: the source's,
so the pipeline knows whether to shed or hold back work), then ``await on_frame(frame)``
for each frame, one at a time.

Lifecycle:

- End of a finite source (a file): state ``ended``, no reconnect. A finite source that
  fails or stalls also ends (with ``last_error``): reopening it would replay frames that
  were already analysed. A source the policy refuses (``SourceRefused``: a host, path or
  redirect that ``api.source_hosts``/``source_roots`` does not allow) ends too: retrying
  would knock on the same refused door.
- Error or end of a live source: state ``reconnecting``, wait ``Backoff`` (from
  ``cfg.reconnect``, capped with its jitter), connect again; ``stream_reconnects_total``
  counts every new attempt after the first. The attempt count starts over only after a
  session delivered frames for ``cfg.stable_after_s``: a flapping camera keeps backing off.
- Stall watchdog: when no frame reaches the loop for ``cfg.stall_timeout_s`` (before a
  session's first frame: ``open_timeout_s + stall_timeout_s``, so a slow open is judged by
  its own timeout) the session is abandoned — its source is told to close, its thread exits
  at its next frame or when PyAV's read timeout fires, and anything it still produces is
  ignored — and the supervisor reconnects. Under backpressure the hand-off is full, so a
  slow consumer is never mistaken for a stall.
- ``seq`` is renumbered here from one counter, so it increases across sessions (gaps mean
  frames dropped or decimated). ``pts`` is the source's, and restarts with each session.
- ``cfg.max_fps`` decimates by pts in the decode thread (not counted as dropped).
- ``stop()`` returns promptly even when a decode thread is stuck in a read: threads are
  daemons and are never joined. Exceptions from ``on_frame``/``on_session`` are bugs: they
  end ``run()`` (after cleanup) and propagate.

Metrics: ``frames_received_total{stream}`` (frames decoded), ``stream_up{stream}`` (1 while
a session delivers), ``stream_reconnects_total{stream}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Iterator, Literal, TypedDict

from ..config import IngestConfig
from ..errors import SourceError, SourceRefused
from ..metrics import Metrics
from ..retry import Backoff
from ..types import Frame
from .base import Source, open_source
from .policy import SourceGuard
from .handoff import FrameHandoff
from .urls import redact

log = logging.getLogger(__name__)

State = Literal["connecting", "up", "reconnecting", "ended", "stopped"]
FPS_WINDOW_S = 5.0


class StreamStatus(TypedDict):
    """A JSON-ready snapshot for the API. Times are ``time.time()`` seconds.

    ``url`` is redacted (no password); ``fps``: frames decoded per second over the last 5 s;
    ``frames``: frames decoded (all sessions); ``dropped``: dropped by the ingest hand-off;
    ``reconnects``: connection attempts after the first; ``sessions``: connections that
    delivered frames; ``last_error``: the latest failure, kept after recovery so the API
    can say why the stream reconnected; ``started_at``: when ``run()`` began.
    """

    url: str
    state: State
    fps: float
    frames: int
    dropped: int
    reconnects: int
    sessions: int
    last_error: str | None
    started_at: float | None


class _RateMeter:
    """Frames per second over a sliding window; ticked from decode threads, read on the loop."""

    def __init__(self, window_s: float = FPS_WINDOW_S) -> None:
        self.window_s = window_s
        self._ticks: deque[float] = deque()
        self._first: float | None = None
        self._lock = threading.Lock()

    def tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self._first is None:
                self._first = now
            self._ticks.append(now)
            while now - self._ticks[0] > self.window_s:
                self._ticks.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            ticks = [t for t in self._ticks if now - t <= self.window_s]
            first = self._first
        if first is not None and now - first >= self.window_s:
            return len(ticks) / self.window_s  # a full window: falls to 0 as soon as frames stop
        if len(ticks) < 2:
            return 0.0
        return (len(ticks) - 1) / max(ticks[-1] - ticks[0], 1e-6)


@dataclass(eq=False)
class _Session:
    number: int
    source: Source
    handoff: FrameHandoff[Frame]
    cancel: threading.Event = field(default_factory=threading.Event)
    delivered: int = 0
    first_frame_at: float | None = None  # monotonic time of the first delivered frame
    error: str | None = None

    def abandon(self) -> None:
        """Tell the thread to stop and ignore whatever it still produces (any thread)."""
        self.cancel.set()
        self.handoff.abort()
        try:
            self.source.close()
        except Exception:  # a failing close must not stop the supervisor
            log.exception("closing a source failed")


class StreamSupervisor:
    """Runs one stream's sessions; see the module docstring for the whole contract."""

    def __init__(self, stream_id: str, url: str, cfg: IngestConfig, metrics: Metrics,
                 on_frame: Callable[[Frame], Awaitable[None]],
                 on_session: Callable[[int, bool], None] | None = None,
                 opener: Callable[[], Source] | None = None, guard: SourceGuard | None = None) -> None:
        """Build the first Source now, so a bad URL raises SourceError before anything connects.

        ``opener`` makes one Source per connection attempt (default: :func:`open_source`
        on ``url`` with ``guard``, the policy of a URL from the network); tests pass their own.
        """
        self.stream_id = stream_id
        self.url = redact(url)
        self.cfg = cfg
        self._metrics = metrics
        self._on_frame = on_frame
        self._on_session = on_session
        self._opener = opener or functools.partial(open_source, stream_id, url, cfg, guard)
        self._next_source: Source | None = self._opener()
        r = cfg.reconnect
        self._backoff = Backoff(initial=r.initial_s, maximum=max(r.max_s, r.initial_s), multiplier=r.multiplier,
                                jitter=r.jitter)
        self._seq = itertools.count()
        self._rate = _RateMeter()
        self._state: State = "connecting"
        self._frames = 0
        self._dropped = 0
        self._reconnects = 0
        self._sessions = 0
        self._attempts = 0
        self._last_error: str | None = None
        self._started_at: float | None = None
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._refused = False
        self._wake = asyncio.Event()
        self._received = metrics.frames_received.labels(stream_id)
        self._dropped_metric = metrics.frames_dropped.labels(stream_id, "ingest")
        self._up = metrics.stream_up.labels(stream_id)
        self._reconnect_metric = metrics.stream_reconnects.labels(stream_id)
        self._up.set(0)

    # ---------------------------------------------------------------- public API

    @property
    def state(self) -> State:
        return self._state

    def status(self) -> StreamStatus:
        return StreamStatus(url=self.url, state=self._state, fps=round(self._rate.rate(), 2), frames=self._frames,
                            dropped=self._dropped, reconnects=self._reconnects, sessions=self._sessions,
                            last_error=self._last_error, started_at=self._started_at)

    async def run(self) -> None:
        """Supervise until the stream ends (finite source) or :meth:`stop` is called."""
        if self._task is not None:
            raise RuntimeError(f"stream {self.stream_id}: run() was already called")
        self._task = asyncio.current_task()
        self._started_at = time.time()
        retry = 0  # the n-th retry in a row waits Backoff.delay(n); a stable session resets it
        try:
            while not self._stopping:
                stable, finite = await self._one_session()
                if self._stopping:
                    break
                if finite or self._refused:
                    self._set_state("ended")
                    break
                retry = 0 if stable else retry
                delay = self._backoff.delay(retry)
                retry += 1
                self._set_state("reconnecting")
                log.info("stream %s: reconnecting in %.2fs", self.stream_id, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                if self._stopping:
                    break
                self._reconnects += 1
                self._reconnect_metric.inc()
        except Exception as exc:
            self._last_error = f"pipeline callback failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            if self._session is not None:
                self._session.abandon()
                self._session = None
            self._up.set(0)
            if self._state != "ended":
                self._set_state("stopped")

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop supervising; returns within about ``2 * grace_s`` whatever the decode thread does."""
        self._stopping = True
        self._wake.set()
        if self._session is not None:
            self._session.abandon()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            _, pending = await asyncio.wait({task}, timeout=grace_s)
            if pending:  # on_frame is stuck: cancel it rather than hang the caller
                task.cancel()
                await asyncio.wait({task}, timeout=grace_s)
        self._up.set(0)
        if self._state != "ended":
            self._set_state("stopped")

    # ---------------------------------------------------------------- sessions

    async def _one_session(self) -> tuple[bool, bool]:
        """Run one connection attempt to its end. Returns (it delivered frames for at least
        ``cfg.stable_after_s``, source is finite)."""
        self._attempts += 1
        source = self._next_source
        self._next_source = None
        if source is None:
            try:
                source = self._opener()
            except SourceError as exc:
                self._refused = isinstance(exc, SourceRefused)
                self._fail(str(exc))
                return False, False
        handoff: FrameHandoff[Frame] = FrameHandoff(asyncio.get_running_loop(), self.cfg.queue_frames,
                                                    drop_oldest=source.live, on_drop=self._count_drop)
        session = _Session(self._attempts, source, handoff)
        self._session = session
        thread = threading.Thread(target=self._decode, args=(session,), daemon=True,
                                  name=f"decode-{self.stream_id}-{session.number}")
        thread.start()
        first_timeout = self.cfg.open_timeout_s + self.cfg.stall_timeout_s
        try:
            while not self._stopping:
                timeout = self.cfg.stall_timeout_s if session.delivered else first_timeout
                try:
                    frame = await asyncio.wait_for(handoff.get(), timeout)
                except asyncio.TimeoutError:
                    self._fail(f"stalled: no frame for {timeout:g}s (ingest.stall_timeout_s)")
                    break
                if frame is None:
                    if self._stopping:
                        break
                    if session.error is not None:
                        self._fail(session.error)
                    else:
                        log.info("stream %s: end of stream after %d frames", self.stream_id, session.delivered)
                    break
                if not session.delivered:
                    # An HTTP source knows whether it is a live feed only once it has opened.
                    handoff.drop_oldest = source.live
                    session.first_frame_at = time.monotonic()
                    self._sessions += 1
                    self._up.set(1)
                    self._set_state("up")
                    if self._on_session is not None:
                        self._on_session(self._sessions, source.live)
                session.delivered += 1
                await self._on_frame(frame)
        finally:
            session.abandon()
            self._session = None
            self._up.set(0)
        stable = session.first_frame_at is not None and \
            time.monotonic() - session.first_frame_at >= self.cfg.stable_after_s
        return stable, source.finite

    def _decode(self, session: _Session) -> None:
        """Decode-thread body: pull frames from the source into the session's hand-off."""
        interval = 1.0 / self.cfg.max_fps if self.cfg.max_fps else 0.0
        next_due: float | None = None
        frames: Iterator[Frame] | None = None
        try:
            frames = session.source.frames()
            for frame in frames:
                if session.cancel.is_set():
                    break
                self._frames += 1
                self._received.inc()
                self._rate.tick()
                if interval:
                    if next_due is not None and frame.pts < next_due - 0.05 * interval:
                        continue
                    # Keep a steady grid; jump forward after a gap instead of catching up.
                    next_due = frame.pts + interval if next_due is None or frame.pts > next_due + interval \
                        else next_due + interval
                frame = replace(frame, stream_id=self.stream_id, seq=next(self._seq))
                if not session.handoff.put(frame, session.cancel):
                    break
        except SourceError as exc:
            self._refused = isinstance(exc, SourceRefused)
            session.error = str(exc)
        except Exception as exc:  # any decoder failure becomes a reconnect, logged in full
            log.exception("stream %s: decode thread failed", self.stream_id)
            session.error = f"{type(exc).__name__}: {exc}"
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()  # runs the generator's finally: releases the container in this thread
            session.handoff.finish()

    # ---------------------------------------------------------------- helpers

    def _count_drop(self, n: int) -> None:
        self._dropped += n
        self._dropped_metric.inc(n)

    def _fail(self, reason: str) -> None:
        self._last_error = reason
        log.warning("stream %s (%r): %s", self.stream_id, self.url, reason)

    def _set_state(self, state: State) -> None:
        if state != self._state:
            log.info("stream %s: %s -> %s", self.stream_id, self._state, state)
            self._state = state
