"""Alert sinks: Redis (Stream + Pub/Sub, behind a bounded outbox) and JSON lines.

Redis contract (DESIGN.md): every event is appended to the durable log
``XADD {prefix}:alerts MAXLEN ~ N * alert <json>`` and fanned out live with
``PUBLISH {prefix}:alerts:{stream_id} <json>``.

Delivery: ``publish()`` never blocks the caller; it appends to an in-memory outbox that a
single sender task drains in order, a few events per pipeline round trip. While Redis is
down the sender retries with exponential backoff and jitter, and events wait in the
outbox (``stream_monitor_alerts_pending``), so an outage delays alerts but loses none and
keeps their order. Only when the outbox holds ``outbox_max`` events is the oldest dropped,
counted (``stream_monitor_alerts_dropped_total``) and logged. Delivery is at least once:
if a connection breaks after Redis applied a pipeline but before the reply arrived, the
batch is sent again (consumers can de-duplicate on ``alert_id`` + ``seq``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from typing import IO, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..metrics import Metrics
from ..retry import Backoff
from .policy import AlertEvent

log = logging.getLogger(__name__)


def encode(event: AlertEvent) -> str:
    """The event's JSON text (compact, keys in schema order)."""
    return json.dumps(event.payload, separators=(",", ":"))


class AlertSink(Protocol):
    """Where alert events go. ``publish`` must not block; ``close`` drains what it can."""

    async def start(self) -> None: ...

    def publish(self, event: AlertEvent) -> None: ...

    async def close(self, timeout: float = 5.0) -> None: ...

    def problems(self) -> list[str]:
        """Reasons the sink is not ready (empty when ready), for ``/readyz``."""
        ...


def _observe(metrics: Metrics | None, event: AlertEvent) -> None:
    if metrics is not None:
        metrics.alerts.labels(event.stream_id, event.event).inc()
        metrics.alert_latency.observe(max(0.0, time.time() - event.last_arrival))


class JsonLinesSink:
    """Writes one JSON object per line to a text stream (stdout by default) or a file."""

    def __init__(self, out: IO[str] | None = None, path: str | None = None, metrics: Metrics | None = None) -> None:
        self._path = path
        self._out = out
        self._metrics = metrics
        self._owned = False

    async def start(self) -> None:
        if self._path is not None:
            self._out = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._owned = True
        elif self._out is None:
            self._out = sys.stdout

    def publish(self, event: AlertEvent) -> None:
        assert self._out is not None, "start() first"
        self._out.write(encode(event) + "\n")
        self._out.flush()
        _observe(self._metrics, event)

    async def close(self, timeout: float = 5.0) -> None:
        if self._owned and self._out is not None:
            self._out.close()
            self._out = None

    def problems(self) -> list[str]:
        return [] if self._out is not None else ["alert output not open"]


class RedisPublisher:
    """Redis Stream + Pub/Sub sink with a bounded, ordered outbox and retry."""

    def __init__(self, url: str, prefix: str = "deepfake", maxlen: int = 100_000, outbox_max: int = 10_000,
                 backoff: Backoff = Backoff(initial=0.2, maximum=5.0), batch: int = 64,
                 metrics: Metrics | None = None, socket_timeout: float = 2.0, idle_ping_s: float = 5.0) -> None:
        self.url = url
        self.prefix = prefix
        self.maxlen = maxlen
        self.batch = batch
        self._outbox: deque[AlertEvent] = deque()
        self._outbox_max = outbox_max
        self._backoff = backoff
        self._metrics = metrics
        self._socket_timeout = socket_timeout
        self._idle_ping_s = idle_ping_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: aioredis.Redis | None = None
        self._connected = False
        self._closing = False
        self.dropped = 0

    @property
    def stream_key(self) -> str:
        return f"{self.prefix}:alerts"

    def channel(self, stream_id: str) -> str:
        return f"{self.prefix}:alerts:{stream_id}"

    @property
    def pending(self) -> int:
        return len(self._outbox)

    def queued(self) -> list[AlertEvent]:
        """The events waiting in the outbox, oldest first (a copy)."""
        return list(self._outbox)

    async def start(self) -> None:
        self._client = aioredis.Redis.from_url(self.url, socket_timeout=self._socket_timeout,
                                               socket_connect_timeout=self._socket_timeout,
                                               retry_on_timeout=False, health_check_interval=0)
        await self._ping()
        if not self._connected:
            log.warning("redis %r unreachable at start; alerts will wait in the outbox", self._safe_url())
        self._task = asyncio.create_task(self._run(), name="redis-publisher")

    def publish(self, event: AlertEvent) -> None:
        if len(self._outbox) >= self._outbox_max:
            lost = self._outbox.popleft()
            self.dropped += 1
            if self._metrics is not None:
                self._metrics.alerts_dropped.inc()
            log.error("alert outbox full (%d events): dropped %s %s of %s", self._outbox_max,
                      lost.payload.get("event"), lost.payload.get("alert_id"), lost.stream_id)
        self._outbox.append(event)
        self._gauge()
        self._wake.set()

    def problems(self) -> list[str]:
        if self._connected:
            return []
        return [f"redis {self._safe_url()} unreachable; {len(self._outbox)} alerts waiting"]

    async def close(self, timeout: float = 5.0) -> None:
        """Try to deliver what is queued within ``timeout`` seconds, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                log.error("closing with %d alerts undelivered (Redis unreachable)", len(self._outbox))
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.alerts_pending.set(len(self._outbox))

    def _safe_url(self) -> str:
        # Never log a password that may be part of the URL.
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rsplit('@', 1)[-1]}"

    async def _ping(self) -> None:
        assert self._client is not None
        try:
            self._connected = bool(await self._client.ping())
        except (RedisError, OSError):
            self._connected = False

    async def _send(self, events: list[AlertEvent]) -> None:
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for ev in events:
            text = encode(ev)
            pipe.xadd(self.stream_key, {"alert": text}, maxlen=self.maxlen, approximate=True)
            pipe.publish(self.channel(ev.stream_id), text)
        await pipe.execute()

    async def _run(self) -> None:
        attempt = 0
        while True:
            if not self._outbox:
                if self._closing:
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._idle_ping_s)
                except asyncio.TimeoutError:
                    await self._ping()  # keeps /readyz truthful while no alerts flow
                continue
            events = [self._outbox[i] for i in range(min(self.batch, len(self._outbox)))]
            try:
                await self._send(events)
            except (RedisConnectionError, RedisTimeoutError, OSError, RedisError) as exc:
                self._connected = False
                if self._metrics is not None:
                    self._metrics.alert_publish_failures.inc()
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning("redis publish failed (%s); %d alerts waiting, retry in %.1fs", exc, len(self._outbox),
                            delay)
                await asyncio.sleep(delay)
                continue
            if not self._connected:
                log.info("redis %r reachable; delivering %d waiting alerts", self._safe_url(), len(self._outbox))
            self._connected, attempt = True, 0
            for ev in events:
                # publish() may have dropped the oldest while we were sending: pop by identity.
                if self._outbox and self._outbox[0] is ev:
                    self._outbox.popleft()
                _observe(self._metrics, ev)
            self._gauge()


class Broadcast:
    """In-process fan-out of alert events to live subscribers (the operator page's timeline
    when there is no Redis). Each subscriber has a bounded queue; a slow one loses its
    oldest events, never blocks the publisher."""

    def __init__(self, queue_size: int = 256) -> None:
        self._queues: set[asyncio.Queue[AlertEvent]] = set()
        self._size = queue_size

    def subscribe(self) -> "asyncio.Queue[AlertEvent]":
        q: asyncio.Queue[AlertEvent] = asyncio.Queue(self._size)
        self._queues.add(q)
        return q

    def unsubscribe(self, q: "asyncio.Queue[AlertEvent]") -> None:
        self._queues.discard(q)

    @property
    def subscribers(self) -> int:
        """How many subscribers are listening (a page that left must not linger here)."""
        return len(self._queues)

    async def start(self) -> None:
        pass

    def publish(self, event: AlertEvent) -> None:
        for q in self._queues:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    async def close(self, timeout: float = 5.0) -> None:
        self._queues.clear()

    def problems(self) -> list[str]:
        return []


class FanOut:
    """Several sinks as one (e.g. Redis plus a JSON-lines file)."""

    def __init__(self, sinks: list[AlertSink]) -> None:
        self.sinks = sinks

    async def start(self) -> None:
        for s in self.sinks:
            await s.start()

    def publish(self, event: AlertEvent) -> None:
        for s in self.sinks:
            s.publish(event)

    async def close(self, timeout: float = 5.0) -> None:
        await asyncio.gather(*(s.close(timeout) for s in self.sinks))

    def problems(self) -> list[str]:
        return [p for s in self.sinks for p in s.problems()]
