"""``GET /events``: the operator page's live feed as Server-Sent Events.

Each event is ``event: <name>`` plus one line ``data: <JSON object>``:

- ``config`` (first, once): ``{"redis": bool, "alerts": "redis"|"local", "threshold",
  "worker", "live_fps", "streams_period_s"}``.
- ``streams`` every :data:`STREAMS_PERIOD_S`: ``{"streams": [StreamHandle.status(), ...]}``.
- ``live`` at most :data:`LIVE_FPS` times a second per stream, when a new frame was
  analysed: ``StreamPipeline.live()`` (faces with boxes in frame pixels, per-detector
  scores, fused score and its threshold as the alert policy assesses them, frame width and
  height). ``?stream=ID`` limits these to
  one stream; by default every stream of this worker is sent.
- ``alert``: an alert event's JSON payload (DESIGN.md schema). With ``redis.url`` set they
  come from Redis Pub/Sub (``PSUBSCRIBE {prefix}:alerts:*``: every worker's alerts, as
  delivered to Redis, less any whose ``lease_epoch`` is below one already seen for their
  stream: a stale owner's); without Redis from this worker's in-process broadcast only.
- ``feed``: ``{"source": "redis"|"local", "ok": bool, "error": str|null}`` when the alert
  feed connects or fails (an unreachable Redis is retried with backoff meanwhile); a client
  that connects while the feed runs gets its latest state at once.

One alert feed per worker serves every client (:class:`AlertHub`): one Pub/Sub connection
(or one broadcast queue) however many pages watch, opened for the first client and released
when the last one leaves or the server shuts down. The feed ends when the client leaves
(noticed at the next write, at most ``1 / LIVE_FPS`` s later, or when the transport closes)
or the server shuts down. A slow client loses its oldest queued events rather than slowing
anything else. At most ``api.max_sse_clients`` feeds are open at once; beyond, ``503`` with
``Retry-After`` (:mod:`.limits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, Callable, Protocol, cast

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from ..alerts.publisher import Broadcast
from ..alerts.tail import EpochFence
from ..redis_client import redis_client
from ..retry import Backoff
from ..config import worker_name
from .limits import Slots, within
from .keys import MONITOR

if TYPE_CHECKING:
    from ..app import Monitor

log = logging.getLogger(__name__)

STREAMS_PERIOD_S = 1.0
LIVE_FPS = 5.0
RETRY_MS = 2000  # how long EventSource waits before reconnecting after the feed ended
_QUEUE = 256

CLOSING = web.AppKey("ui_closing", asyncio.Event)

Put = Callable[[str, dict[str, Any]], None]


class AlertFeed(Protocol):
    """A live source of alert payloads (one per worker, see :class:`AlertHub`); ``run`` until cancelled."""

    source: str

    async def run(self, put: Put) -> None: ...


class LocalAlertFeed:
    """This worker's alerts, from the monitor's in-process broadcast."""

    source = "local"

    def __init__(self, broadcast: Broadcast) -> None:
        self.broadcast = broadcast

    async def run(self, put: Put) -> None:
        queue = self.broadcast.subscribe()
        try:
            put("feed", {"source": self.source, "ok": True, "error": None})
            while True:
                put("alert", (await queue.get()).payload)
        finally:
            self.broadcast.unsubscribe(queue)


class RedisAlertFeed:
    """Every worker's alerts from Redis Pub/Sub; reconnects with backoff while Redis is down."""

    source = "redis"

    def __init__(self, url: str, prefix: str, backoff: Backoff = Backoff(0.5, 10.0), timeout_s: float = 2.0) -> None:
        self.url = url
        self.pattern = f"{prefix}:alerts:*"
        self.backoff = backoff
        self.timeout_s = timeout_s
        # Alerts of a stream's stale owner (lease_epoch below one already seen) are not shown:
        # Redis refuses them, this covers any written around that check (alerts.tail).
        self.fence = EpochFence()

    async def run(self, put: Put) -> None:
        attempt = 0
        while True:
            client = redis_client(self.url, socket_connect_timeout=self.timeout_s, health_check_interval=0)
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(self.pattern)
                put("feed", {"source": self.source, "ok": True, "error": None})
                attempt = 0
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "pmessage":
                        try:
                            event = json.loads(message["data"])
                        except ValueError:
                            log.warning("ignoring a non-JSON message on %r", message.get("channel"))
                            continue
                        if self.fence.admit_event(event):
                            put("alert", event)
                        else:
                            log.warning("ignoring an alert of a stale owner of %r (lease_epoch %s)",
                                        event.get("stream_id"), event.get("lease_epoch"))
            except (RedisError, OSError) as exc:
                put("feed", {"source": self.source, "ok": False, "error": f"Redis unreachable ({exc}); retrying"})
            finally:
                # shield: the client is released even when the feed is being cancelled.
                await asyncio.shield(_close(pubsub, client))
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1


async def _close(pubsub: Any, client: aioredis.Redis) -> None:
    with contextlib.suppress(RedisError, OSError):
        await pubsub.aclose()
    with contextlib.suppress(RedisError, OSError):
        await client.aclose()


def alert_feed(monitor: "Monitor") -> AlertFeed:
    r = monitor.cfg.redis
    if r.url:
        return RedisAlertFeed(r.url, r.prefix)
    return LocalAlertFeed(monitor.broadcast)


class AlertHub:
    """One :class:`AlertFeed` fanned out to every subscribed client's ``put``.

    The feed runs while a client is subscribed: the first :meth:`subscribe` starts it, the
    last :meth:`unsubscribe` (or :meth:`close`) stops it and waits until its connection is
    released. Every alert and ``feed`` status goes to each client; one subscribing while the
    feed runs gets the latest ``feed`` status at once.
    """

    def __init__(self, feed: AlertFeed) -> None:
        self.feed = feed
        self._clients: set[Put] = set()
        self._task: asyncio.Task[None] | None = None
        self._status: dict[str, Any] | None = None

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def failure(self) -> BaseException | None:
        """The exception the feed stopped with (feeds retry their own I/O errors, so a bug);
        subscribers end their responses and the next :meth:`subscribe` starts it again."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    def subscribe(self, put: Put) -> None:
        self._clients.add(put)
        if self._task is None or self._task.done():
            self._status = None
            self._task = asyncio.create_task(self._run(), name="events-alert-feed")
        elif self._status is not None:
            put("feed", self._status)

    async def unsubscribe(self, put: Put) -> None:
        self._clients.discard(put)
        if not self._clients:
            await self._stop()

    async def close(self) -> None:
        """Stop the feed for good (server shutdown)."""
        self._clients.clear()
        await self._stop()

    async def _stop(self) -> None:
        # Forget the task first: a client subscribing while it winds down starts a new one.
        task, self._task, self._status = self._task, None, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        me = asyncio.current_task()

        def deliver(name: str, data: dict[str, Any]) -> None:
            if self._task is not me:
                return  # a stopped feed's last words
            if name == "feed":
                self._status = data
            for put in list(self._clients):
                put(name, data)

        try:
            await self.feed.run(deliver)
        except Exception:
            log.exception("the alert feed for /events failed")
            raise


ALERT_HUB = web.AppKey("ui_alert_hub", AlertHub)


def _sse(name: str, data: dict[str, Any]) -> bytes:
    # json.dumps never emits a raw newline, so one data: line always holds the whole object.
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def add_event_routes(app: web.Application) -> None:

    monitor = cast("Monitor", app[MONITOR])
    hub = AlertHub(alert_feed(monitor))
    slots = Slots(monitor.cfg.api.max_sse_clients, "/events feeds (api.max_sse_clients)")

    async def events(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":
            return web.Response(headers=headers)  # no body: never enter the endless loop
        return await within(slots, monitor.cfg.api.retry_after_s, lambda: feed(request, headers))

    async def feed(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        closing = request.app[CLOSING]
        only = request.query.get("stream")
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(_QUEUE)

        def put(name: str, data: dict[str, Any]) -> None:
            if queue.full():
                queue.get_nowait()  # a slow client loses its oldest events, never blocks the feed
            queue.put_nowait((name, data))

        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        hub.subscribe(put)
        loop = asyncio.get_running_loop()
        sent: dict[str, tuple[int, int | None]] = {}  # stream id -> (its pipeline, frame seq) last sent
        try:
            await resp.write(f"retry: {RETRY_MS}\n\n".encode())
            await resp.write(_sse("config", {
                "redis": bool(monitor.cfg.redis.url), "alerts": hub.feed.source,
                "threshold": monitor.cfg.alerts.threshold, "worker": worker_name(monitor.cfg), "live_fps": LIVE_FPS,
                "streams_period_s": STREAMS_PERIOD_S}))
            next_streams = next_live = loop.time()
            while not closing.is_set() and request.transport is not None and not request.transport.is_closing():
                now = loop.time()
                if now >= next_streams:
                    await resp.write(_sse("streams", {"streams": [h.status() for h in list(monitor.streams.values())]}))
                    next_streams = now + STREAMS_PERIOD_S
                if now >= next_live:
                    for sid, handle in list(monitor.streams.items()):
                        if only is not None and sid != only:
                            continue
                        live = handle.pipeline.live()
                        key = (id(handle.pipeline), live["seq"])
                        if live["seq"] is not None and key != sent.get(sid):
                            sent[sid] = key
                            await resp.write(_sse("live", live))
                    next_live = now + 1.0 / LIVE_FPS
                wait = max(0.0, min(next_streams, next_live) - loop.time())
                with contextlib.suppress(asyncio.TimeoutError):
                    name, data = await asyncio.wait_for(queue.get(), wait)
                    await resp.write(_sse(name, data))
                    while not queue.empty():
                        await resp.write(_sse(*queue.get_nowait()))
                if hub.failure is not None:
                    break  # logged by the hub; the page reconnects after RETRY_MS
        except ConnectionError:
            pass  # the client left
        finally:
            await hub.unsubscribe(put)
        return resp

    async def on_shutdown(app: web.Application) -> None:
        # Long-lived feeds would otherwise hold the server's graceful shutdown for its full timeout.
        app[CLOSING].set()

    async def on_cleanup(app: web.Application) -> None:
        await app[ALERT_HUB].close()

    app[CLOSING] = asyncio.Event()
    app[ALERT_HUB] = hub
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/events", events)
