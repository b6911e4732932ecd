"""The API's admission limits: how many streams a worker runs, how many live feeds it serves.

A request refused by a limit gets ``503 Service Unavailable`` with ``Retry-After:
api.retry_after_s`` and a JSON error naming the setting (RFC 9110 §15.6.4: the server is
temporarily unable to handle it; 429 would blame the client's request rate, and these
limits are the worker's capacity, as ``webrtc.max_sessions`` is for WHIP).

- :class:`StreamCap` — ``api.max_streams``, for ``POST /streams`` (without a fleet) and
  ``POST /whip/{id}``: the streams the worker runs (:meth:`Monitor.stream_count
  <stream_monitor.app.Monitor.stream_count>`: configured, API, WHIP and fleet streams
  alike) plus the additions still starting (so concurrent requests cannot overshoot);
- :class:`Slots` — ``api.max_sse_clients`` (``GET /events``) and ``api.max_mjpeg_clients``
  (``GET /streams/{id}/live.mjpeg``): concurrent long-lived responses.

The HTTP listeners' own limits (slow headers, idle and too many connections) are in
:mod:`.server`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator, cast

from aiohttp import web

from ..errors import StreamMonitorError
from .auth import error
from .keys import MONITOR

if TYPE_CHECKING:
    from ..app import Monitor


class AtLimit(StreamMonitorError):
    """A limit of the API is reached (HTTP 503 with ``Retry-After``); the message names it."""


def refused(exc: Exception, retry_after_s: int) -> web.Response:
    """The 503 answer to a request a limit refused (``exc`` says which)."""
    return error(503, str(exc), {"Retry-After": str(retry_after_s)})


class Slots:
    """At most ``limit`` holders at once; ``what`` names them (and the setting) in refusals."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self.held = 0

    def acquire(self) -> None:
        """Take a slot, to :meth:`release` exactly once; raises :class:`AtLimit` when all are held."""
        if self.held >= self.limit:
            raise AtLimit(f"{self.held} {self.what} are open, the limit; try again later")
        self.held += 1

    def release(self) -> None:
        self.held -= 1


async def within(slots: Slots, retry_after_s: int,
                 respond: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """``respond()``'s answer while holding one of ``slots`` (released when it returns, the
    client left or the server stops), or the 503 refusal when none is free."""
    try:
        slots.acquire()
    except AtLimit as exc:
        return refused(exc, retry_after_s)
    try:
        return await respond()
    finally:
        slots.release()


class StreamCap:
    """``api.max_streams`` over every stream of ``monitor`` (see the module docstring)."""

    def __init__(self, monitor: "Monitor", limit: int) -> None:
        self.monitor = monitor
        self.limit = limit
        self.starting = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Wrap the start of one stream: raises :class:`AtLimit` when the worker is full.
        The start counts until the block ends, by when the stream runs or has failed."""
        running = self.monitor.stream_count()
        if running + self.starting >= self.limit:
            starting = f" and {self.starting} starting" if self.starting else ""
            raise AtLimit(f"this worker runs {running} streams{starting} (api.max_streams={self.limit}); "
                          f"remove one or try later")
        self.starting += 1
        try:
            yield
        finally:
            self.starting -= 1


STREAM_CAP = web.AppKey("stream_cap", StreamCap)


def stream_cap(app: web.Application) -> StreamCap:
    """The app's one :class:`StreamCap`, made by whichever route group asks first (at setup,
    before the app is frozen): ``/streams`` and ``/whip`` share it."""

    if STREAM_CAP not in app:
        monitor = cast("Monitor", app[MONITOR])
        app[STREAM_CAP] = StreamCap(monitor, monitor.cfg.api.max_streams)
    return app[STREAM_CAP]
