"""Alert sinks: Redis (Stream + Pub/Sub, behind a bounded outbox) and JSON lines.

Redis contract (DESIGN.md): every event is appended to the durable log
``XADD {prefix}:alerts MAXLEN ~ N * alert <json>`` and fanned out live with
``PUBLISH {prefix}:alerts:{stream_id} <json>``.

Delivery: ``publish()`` never blocks the caller; it appends to an :class:`~.outbox.Outbox`
that a single sender task drains in order, a few events per pipeline round trip. While Redis
is down the sender retries with exponential backoff and jitter, and events wait in the
outbox (``stream_monitor_alerts_pending``), so an outage delays alerts but loses none and
keeps their order. Beyond ``outbox_max`` events in memory they spill to the spool file
(``alerts.spool_dir``), which also keeps what is undelivered at shutdown for the next start;
without one an ``update`` is dropped before any ``start`` or ``end``, and every drop is
counted with its reason (``stream_monitor_alerts_dropped_total{reason}``).

Exactly once into Redis: each event goes through one Lua script (:data:`_EMIT`) that appends,
publishes and raises the incident's high-water mark ``{prefix}:seen:{alert_id}`` atomically,
and writes nothing for a ``seq`` at or below the mark. The client has no library retries
(:mod:`stream_monitor.redis_client`): the sender owns the retry policy, and a batch resent
after a reply that came too late is recognised instead of written twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, Callable, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..metrics import Metrics
from ..redis_client import redis_client
from ..retry import Backoff
from .outbox import Outbox
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


def _count(metrics: Metrics | None, event: AlertEvent) -> None:
    # At hand-over, not at delivery: a stream's series are removed when it is deleted, and an
    # event delivered later (Redis slow or down) must not bring them back.
    if metrics is not None:
        metrics.alerts.labels(event.stream_id, event.event).inc()


def _delivered(metrics: Metrics | None, event: AlertEvent) -> None:
    if metrics is not None:
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
        _count(self._metrics, event)
        _delivered(self._metrics, event)

    async def close(self, timeout: float = 5.0) -> None:
        if self._owned and self._out is not None:
            self._out.close()
            self._out = None

    def problems(self) -> list[str]:
        return [] if self._out is not None else ["alert output not open"]


# Exactly once per event: Redis applies the append, the fan-out and the incident's high-water mark
# together, or none of them. A resend (our retry after a reply that came too late, a replay of
# the spool) finds seq at or below the mark and writes nothing. One key per incident, not per
# event: events of an incident leave in seq order (the outbox keeps order). The shebang makes
# Redis 7 refuse the whole script up front under OOM instead of failing after a partial write.
#
# Fencing (an event with a ``lease_epoch``, i.e. of a stream leased in a fleet), checked before the
# mark (a stale owner's next seq is often the one the new owner's ``owner_lost`` end took): refused (-1)
# when a later owner has claimed the stream (``{prefix}:epoch:{id}`` above the event's epoch) or
# the lease is held by anyone but the event's worker under its epoch. An absent lease with no
# later claim is accepted: the owner released it after its last events were queued (a graceful
# stop's ends, a spool replayed at the next start) or it lapsed and nobody has taken over —
# either way no other owner has written anything for the stream since. Fenced events also keep
# the stream's open incidents in ``{prefix}:open:{id}`` (alert_id → last event), for the next
# owner to end (fleet.py). KEYS: seen, log, lease, epoch counter, open hash; ARGV: seq, TTL s,
# MAXLEN, channel, JSON, epoch ('' unfenced), our lease value, alert_id, event.
_EMIT = """#!lua
local fenced = ARGV[6] ~= ''
if fenced then
  if tonumber(redis.call('GET', KEYS[4]) or '0') > tonumber(ARGV[6]) then return -1 end
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= ARGV[7] then return -1 end
end
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if seq <= last then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'alert', ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[5])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if fenced then
  if ARGV[9] == 'end' then
    redis.call('HDEL', KEYS[5], ARGV[8])
  else
    redis.call('HSET', KEYS[5], ARGV[8], ARGV[5])
  end
  redis.call('EXPIRE', KEYS[5], ARGV[2])
end
return 1
"""
# Connection trouble: the command may or may not have run; resending is safe (dedupe).
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisPublisher:
    """Redis Stream + Pub/Sub sink with an ordered, bounded (optionally spooled) outbox.

    Errors are told apart: connection errors and timeouts are retried with backoff;
    ``READONLY`` (a replica after a fail-over) drops the connections and retries on fresh ones;
    any other error Redis answers (``OOM``, ``WRONGTYPE`` on our keys, a script error) is a
    refusal that retrying soon will not fix: counted, shown by :meth:`problems` (``/readyz``
    red with Redis's reason), and retried with backoff while the events stay queued.
    """

    def __init__(self, url: str, prefix: str = "deepfake", maxlen: int = 100_000, outbox_max: int = 10_000,
                 backoff: Backoff = Backoff(initial=0.2, maximum=5.0), batch: int = 64,
                 metrics: Metrics | None = None, socket_timeout: float = 2.0, idle_ping_s: float = 5.0,
                 spool: Path | None = None, dedupe_ttl_s: int = 7 * 86400) -> None:
        self.url = url
        self.prefix = prefix
        self.maxlen = maxlen
        self.batch = batch
        self.dedupe_ttl_s = dedupe_ttl_s
        self._metrics = metrics
        self._outbox = Outbox(outbox_max, spool, self._dropped)
        self._backoff = backoff
        self._socket_timeout = socket_timeout
        self._idle_ping_s = idle_ping_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: aioredis.Redis | None = None
        self._emit_sha: str | None = None  # the dedupe script, loaded into Redis
        self._connected = False
        self._refusal: str | None = None  # Redis answered with an error it will repeat
        self._closing = False
        self.dropped = 0
        self.duplicates = 0  # resends that Redis recognised and did not write again
        self.stale = 0  # events Redis refused: a later owner holds their stream (fencing)
        # Told (stream id, epoch) of each refused event: the fleet then gives the stream up.
        self.on_stale: Callable[[str, int], None] | None = None
        self._gauge()

    @property
    def stream_key(self) -> str:
        return f"{self.prefix}:alerts"

    def channel(self, stream_id: str) -> str:
        return f"{self.prefix}:alerts:{stream_id}"

    def seen_key(self, alert_id: str) -> str:
        return f"{self.prefix}:seen:{alert_id}"

    def lease_key(self, stream_id: str) -> str:
        return f"{self.prefix}:lease:{stream_id}"  # fleet.py's keys, same prefix

    def epoch_key(self, stream_id: str) -> str:
        return f"{self.prefix}:epoch:{stream_id}"

    def open_key(self, stream_id: str) -> str:
        return f"{self.prefix}:open:{stream_id}"

    @property
    def pending(self) -> int:
        return len(self._outbox)

    def queued(self) -> list[AlertEvent]:
        """The events waiting in memory, oldest first (a copy; spooled ones not included)."""
        return self._outbox.peek(self._outbox.memory_max)

    async def start(self) -> None:
        self._client = redis_client(self.url, socket_timeout=self._socket_timeout,
                                    socket_connect_timeout=self._socket_timeout, health_check_interval=0)
        await self._ping()
        if not self._connected:
            log.warning("redis %r unreachable at start; alerts will wait in the outbox", self._safe_url())
        self._task = asyncio.create_task(self._run(), name="redis-publisher")

    def publish(self, event: AlertEvent) -> None:
        _count(self._metrics, event)
        self._outbox.append(event)
        self._gauge()
        self._wake.set()

    def _dropped(self, event: AlertEvent | None, reason: str) -> None:
        self.dropped += 1
        if self._metrics is not None:
            self._metrics.alerts_dropped.labels(reason).inc()
        if event is not None:
            log.error("alert outbox: dropped %s %s of %s (%s)", event.payload.get("event"),
                      event.payload.get("alert_id"), event.stream_id, reason)
        else:
            log.error("alert outbox: dropped an unreadable spooled event (%s)", reason)

    def problems(self) -> list[str]:
        if self._refusal is not None:
            return [f"redis {self._safe_url()} refuses alert writes ({self._refusal}); "
                    f"{len(self._outbox)} alerts waiting"]
        if self._connected:
            return []
        return [f"redis {self._safe_url()} unreachable; {len(self._outbox)} alerts waiting"]

    async def close(self, timeout: float = 5.0) -> None:
        """Try to deliver what is queued within ``timeout`` seconds, then stop; what is left
        goes to the spool (delivered by the next start) or is counted as lost."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        left = len(self._outbox)
        if left:
            try:
                kept = self._outbox.persist()
            except OSError as exc:
                log.error("alert spool %s cannot be written (%s)", self._outbox.spool, exc)
                kept = 0
            if kept:
                log.warning("closing with %d alerts undelivered: kept in %s for the next start", kept,
                            self._outbox.spool)
            else:
                log.error("closing with %d alerts undelivered and no alerts.spool_dir: they are lost", left)
                for event in self._outbox.peek(left):
                    self._dropped(event, "shutdown")
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
        if self._emit_sha is None:
            self._emit_sha = str(await self._client.script_load(_EMIT))
        # EVALSHA straight in the pipeline: one round trip per batch (redis-py's Script objects
        # would ask SCRIPT EXISTS before every batch).
        pipe = self._client.pipeline(transaction=False)
        for ev in events:
            p, sid = ev.payload, ev.stream_id
            epoch = p.get("lease_epoch")
            pipe.evalsha(self._emit_sha, 5, self.seen_key(str(p["alert_id"])), self.stream_key, self.lease_key(sid),
                         self.epoch_key(sid), self.open_key(sid),
                         int(p["seq"]), self.dedupe_ttl_s, self.maxlen, self.channel(sid), encode(ev),
                         "" if epoch is None else int(epoch), f"{epoch}:{p.get('worker')}", str(p["alert_id"]),
                         ev.event)
        try:
            written = await pipe.execute()
        except NoScriptError:
            self._emit_sha = None  # Redis restarted or flushed its scripts: load again and resend
            raise
        self.duplicates += sum(1 for w in written if w == 0)
        for ev, w in zip(events, written):
            if w == -1:
                self._fenced(ev)

    def _fenced(self, event: AlertEvent) -> None:
        """Redis refused ``event``: a later owner holds its stream. Counted as dropped
        (``stale_owner``); the fleet is told, so the stream stops here if it still runs."""
        self.stale += 1
        self._dropped(event, "stale_owner")
        if self.on_stale is not None:
            self.on_stale(event.stream_id, int(event.payload["lease_epoch"]))

    async def _failed(self, exc: BaseException, attempt: int) -> None:
        """Count, classify and wait out one failed send (see the class docstring)."""
        if self._metrics is not None:
            self._metrics.alert_publish_failures.inc()
        if isinstance(exc, NoScriptError):
            what = "redis lost the dedupe script; loading it again"
        elif isinstance(exc, ReadOnlyError):
            self._connected, self._refusal = False, f"{type(exc).__name__}: {exc}"
            assert self._client is not None
            await self._client.connection_pool.disconnect()  # reconnect: the primary may have moved
            what = "redis is read-only (a replica?); reconnecting"
        elif isinstance(exc, _TRANSIENT):
            self._connected, self._refusal = False, None
            what = "redis unreachable"
        else:
            self._connected, self._refusal = True, f"{type(exc).__name__}: {exc}"
            what = "redis refused the write"
        delay = self._backoff.delay(attempt)
        log.warning("%s (%s); %d alerts waiting, retry in %.1fs", what, exc, len(self._outbox), delay)
        await asyncio.sleep(delay)

    async def _run(self) -> None:
        attempt = 0
        while True:
            events = self._outbox.peek(self.batch)
            if not events:
                if self._closing:
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._idle_ping_s)
                except asyncio.TimeoutError:
                    await self._ping()  # keeps /readyz truthful while no alerts flow
                continue
            try:
                await self._send(events)
            except (RedisError, OSError) as exc:
                await self._failed(exc, attempt)
                attempt += 1
                continue
            if not self._connected or self._refusal is not None:
                log.info("redis %r accepts alerts again; delivering %d waiting", self._safe_url(), len(self._outbox))
            self._connected, self._refusal, attempt = True, None, 0
            self._outbox.pop(events)
            for ev in events:
                _delivered(self._metrics, ev)
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


class RecentAlerts:
    """This worker's latest ``maxlen`` alert payloads in memory, oldest first: what
    ``GET /alerts`` answers when there is no Redis (``redis.url`` unset)."""

    def __init__(self, maxlen: int = 1000) -> None:
        self.payloads: deque[dict[str, Any]] = deque(maxlen=maxlen)

    async def start(self) -> None:
        pass

    def publish(self, event: AlertEvent) -> None:
        self.payloads.append(event.payload)

    async def close(self, timeout: float = 5.0) -> None:
        pass

    def problems(self) -> list[str]:
        return []
def redis_publishers(sink: AlertSink) -> list[RedisPublisher]:
    """The :class:`RedisPublisher` instances in ``sink`` (itself, or inside nested fan-outs)."""
    if isinstance(sink, RedisPublisher):
        return [sink]
    if isinstance(sink, FanOut):
        return [p for s in sink.sinks for p in redis_publishers(s)]
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
