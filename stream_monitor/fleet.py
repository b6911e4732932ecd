"""Scale-out across workers: the desired streams and their leases live in Redis.

Keys (``P`` is ``redis.prefix``):

- ``P:streams`` — hash, stream id → JSON ``{"url", "added_at", "added_by"}``: the streams the
  fleet should watch. Any worker's API adds one (``HSETNX``) or deletes one (``HDEL``); the
  ``streams:`` of a worker's configuration are added at its start (existing entries kept).
- ``P:lease:{id}`` — string ``<epoch>:<worker>``, expiring after ``fleet.lease_ttl_s``.
  Taken (in one script that also checks the stream is still desired), renewed each tick by
  its owner only (compare-and-``PEXPIRE``), deleted by its owner only (compare-and-``DEL``)
  once the stream has stopped gracefully.
- ``P:epoch:{id}`` — integer, ``INCR``'d by every claim of the stream (never expires, so
  epochs only grow): the claim's epoch fences its owner. Alerts carry it as ``lease_epoch``
  (the stream's pipeline stamps it) and the alert emit script (:mod:`.alerts.publisher`)
  refuses an event whose epoch is below the counter or whose lease holds another value; a
  refusal makes the stream lost here (:meth:`Fleet.fenced_out`), as a failed renewal does.
- ``P:open:{id}`` — hash, alert_id → JSON of the last event of each incident open on the
  stream, kept by the emit script for fenced events. A claim ends what is there (the
  previous owner was killed or paused past its lease) with ``end`` events of ``reason``
  ``owner_lost`` under the new epoch, right after the stream starts here.
- ``P:worker:{name}`` — string, the worker's JSON heartbeat (name, API address, capacity,
  and a status snapshot of every stream it runs), expiring with the lease TTL;
  ``P:workers`` — sorted set of worker names scored by heartbeat expiry (Unix ms), so a
  reader finds live workers without ``SCAN``.

Every ``fleet.tick_s`` a worker renews its leases, stops (gracefully, then releases) the
streams deleted from the desired set, publishes its heartbeat, reports how many desired
streams have no lease (``stream_monitor_streams_unassigned``) and — below its capacity and
no busier than the least-loaded live worker with room — claims one unassigned stream. So
streams spread evenly, a stream added through any worker is started by exactly one worker
(the ``SET NX`` decides), and a dead worker's streams move once its leases expire.

Never two workers on one stream: a lease is valid here until the moment its last
successful renewal was *sent* plus the TTL minus a margin for clock-rate drift. A watchdog
checks that deadline every 100 ms, independently of Redis calls (which may hang up to
their socket timeout); past it, or when a renewal finds the key gone or another owner's,
the stream is aborted at once: its pipeline drops every frame and result from then on and
only its open incidents get their ``end`` events. Another worker can take the key only
after Redis expired it, which is at least the margin after our deadline.

Streams a worker runs that are not in the desired set (WHIP publishers, which are tied to
the worker holding the peer connection) also hold a lease on their id, so ids stay unique
fleet-wide and the fleet view shows their owner. A finite stream (a file) that ends is
removed from the desired set: replaying it elsewhere would analyse the same frames again.

Every ownership change is logged and, with ``fleet.journal``, appended to a JSON-lines file
(``{"t", "worker", "stream", "event", "reason", "frames_analysed"}``, ``event`` one of
``acquired``, ``released``, ``deleted``, ``ended``, ``lost``; ``t`` is ``time.time()``
when the change took effect: after the start for ``acquired``, after the stop for the rest).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .alerts.policy import AlertEvent, iso_time
from .config import Config
from .errors import SourceRefused, StreamExists, StreamMonitorError, UnknownStream
from .ingest.urls import redact
from .redis_client import redis_client

if TYPE_CHECKING:
    from .app import Monitor
    from .pipeline import StreamPipeline

log = logging.getLogger(__name__)

_WATCH_S = 0.1
# Take the renewal's round trip and the two clocks' rate difference off the lease's life.
_DRIFT_FRACTION = 0.05
_MIN_MARGIN_S = 0.2

# A lease's value is ``<epoch>:<worker>``; the epoch comes from ``INCR P:epoch:{id}`` at every
# claim, so each ownership of a stream has its own number, larger than every earlier one's.
# (A value without ``<epoch>:`` is read as an owner with no epoch.)
_OWNER = """
local function owner_of(value)
  if not value then return nil end
  local rest = string.match(value, '^%d+:(.*)$')
  return rest or value
end
"""
# KEYS[1] desired hash, KEYS[2] lease, KEYS[3] epoch counter; ARGV: worker, ttl ms, stream id.
# The new epoch when the lease is ours now (free, or held under our name: a restarted worker
# with the same name), else 0; never for a stream deleted meanwhile.
_CLAIM = _OWNER + """
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then return 0 end
local owner = owner_of(redis.call('GET', KEYS[2]))
if owner and owner ~= ARGV[1] then return 0 end
local epoch = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[2], epoch .. ':' .. ARGV[1], 'PX', ARGV[2])
return epoch
"""
# KEYS[1] desired hash, KEYS[2] lease, KEYS[3] epoch counter; ARGV: worker, ttl ms, stream id.
# A stream outside the desired set (WHIP): -1 when the id is a desired stream's, the new epoch
# when the lease is ours, 0 when taken.
_CLAIM_LOCAL = """
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local epoch = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[2], epoch .. ':' .. ARGV[1], 'PX', ARGV[2])
return epoch
"""
# KEYS: leases; ARGV[1] ttl ms, ARGV[1 + i] the value KEYS[i] holds while it is ours. Per key
# 1 when renewed (still ours, same epoch), else 0.
_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
# KEYS[1] lease; ARGV[1] our lease value. Deletes the lease only when it is ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] desired hash, KEYS[2] lease; ARGV: our lease value, stream id. A finished stream:
# drop it from the desired set and release, only while the lease is ours.
_FINISH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
return redis.call('DEL', KEYS[2])
"""
# KEYS[1] desired hash, KEYS[2] lease; ARGV: stream id, entry[, most desired streams]. -1 when
# the id is held by a stream outside the desired set (WHIP), -2 when a new id would make the
# set larger than ARGV[3], else HSETNX's 1 (added) or 0 (exists).
_ADD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if ARGV[3] and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -2 end
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
"""


def owner_of(value: str | None) -> str | None:
    """The worker named by a lease value ``<epoch>:<worker>`` (a value without an epoch: itself)."""
    if value is None:
        return None
    epoch, sep, owner = value.partition(":")
    return owner if sep and epoch.isdigit() else value


class FleetUnavailable(StreamMonitorError):
    """Redis cannot be reached, so the fleet cannot be read or changed now."""


class FleetFull(StreamMonitorError):
    """The desired set holds as many streams as :meth:`Fleet.add` was allowed to let it."""


@dataclass(eq=False)
class _Lease:
    stream_id: str
    desired: bool  # in P:streams; False for a stream only this worker can run (WHIP)
    valid_until: float  # time.monotonic() deadline for processing the stream
    pipeline: "StreamPipeline | None" = None  # the run the lease covers (set once it starts)
    epoch: int = 0  # this ownership's number (INCR P:epoch:{id} at the claim)
    # Incidents a previous owner left open (P:open:{id} at the claim), ended once we start.
    orphans: dict[str, str] = field(default_factory=dict)
    stopping: str | None = None  # why we are stopping it ("deleted"), if we are


class Fleet:
    """This worker's side of the fleet: claims, renewals, releases, the fleet-wide view.

    Lives on the monitor's event loop. :meth:`start` after the monitor's engine and sinks,
    :meth:`stop_claiming` first thing at shutdown, :meth:`close` after the streams stopped.
    """

    def __init__(self, monitor: "Monitor", cfg: Config, name: str) -> None:
        assert cfg.redis.url, "config validation requires redis.url with fleet.enabled"
        self.monitor = monitor
        self.cfg = cfg.fleet
        self.url = cfg.redis.url
        self.name = name
        self.prefix = cfg.redis.prefix
        self.ttl_s = cfg.fleet.lease_ttl_s
        self.margin_s = max(_MIN_MARGIN_S, _DRIFT_FRACTION * self.ttl_s)
        self.metrics = monitor.metrics
        self.history: deque[dict[str, Any]] = deque(maxlen=500)
        self.last_error: str | None = None
        self.started_at = time.time()
        self._seed = [(s.id, s.url) for s in cfg.streams]
        self._leases: dict[str, _Lease] = {}
        self._claiming = True
        self._stopped = False
        self._reachable = False
        self._wake = asyncio.Event()
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: set[asyncio.Task[None]] = set()
        # Socket timeout well inside the TTL: a hung call must not outlive the lease by much
        # (the watchdog does not wait for it either way).
        self._timeout_s = min(2.0, self.ttl_s / 4)

    # ------------------------------------------------------------------ keys

    @property
    def streams_key(self) -> str:
        return f"{self.prefix}:streams"

    @property
    def workers_key(self) -> str:
        return f"{self.prefix}:workers"

    def lease_key(self, stream_id: str) -> str:
        return f"{self.prefix}:lease:{stream_id}"

    def worker_key(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def epoch_key(self, stream_id: str) -> str:
        return f"{self.prefix}:epoch:{stream_id}"

    def open_key(self, stream_id: str) -> str:
        return f"{self.prefix}:open:{stream_id}"

    def epoch(self, stream_id: str) -> int | None:
        """The epoch of our lease on ``stream_id`` (``None`` when we hold none)."""
        lease = self._leases.get(stream_id)
        return lease.epoch if lease is not None else None

    @property
    def owned(self) -> list[str]:
        return sorted(self._leases)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # No library retries: a resent SET NX whose first try did claim the lease would refuse
        # our own claim (stream_monitor.redis_client).
        self._client = redis_client(self.url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s,
                                    health_check_interval=0, decode_responses=True)
        r = self._client
        self._s_claim = r.register_script(_CLAIM)
        self._s_claim_local = r.register_script(_CLAIM_LOCAL)
        self._s_renew = r.register_script(_RENEW)
        self._s_release = r.register_script(_RELEASE)
        self._s_finish = r.register_script(_FINISH)
        self._s_add = r.register_script(_ADD)
        self._tasks = [asyncio.create_task(self._run(), name="fleet"),
                       asyncio.create_task(self._watch(), name="fleet-watchdog")]
        log.info("fleet: worker %s, capacity %d, lease %.1fs", self.name, self.cfg.capacity, self.ttl_s)

    def stop_claiming(self) -> None:
        """Shutdown begins: claim nothing more; leases are still renewed until released."""
        self._claiming = False

    async def close(self) -> None:
        """After the streams stopped: stop the loops, release what is left, leave the fleet."""
        self._claiming = False
        # A flag as well as cancel(): Python 3.11's wait_for can swallow a cancellation that
        # races with the event it waits on, and the loop would then go on forever.
        self._stopped = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._timeout_s + 1.0)
        self._tasks = []
        if self._client is None:
            return
        try:
            for stream_id, lease in list(self._leases.items()):
                if lease.pipeline is None or lease.pipeline.closed:
                    await self._release(stream_id, "released", "shutdown")
            await self._client.delete(self.worker_key(self.name))
            await self._client.zrem(self.workers_key, self.name)
        except RedisError as exc:
            log.warning("fleet: could not leave cleanly (%s); leases expire in %.0fs", exc, self.ttl_s)
        await self._client.aclose()
        self._client = None

    def problems(self) -> list[str]:
        return [] if self._reachable else [f"fleet: redis {redact(self.url)} unreachable ({self.last_error})"]

    # ------------------------------------------------------------------ the loops

    async def _run(self) -> None:
        while not self._stopped:
            started = time.monotonic()
            self._wake.clear()
            try:
                await self._tick()
                if not self._reachable:
                    log.info("fleet: redis %r reachable", redact(self.url))
                self._reachable, self.last_error = True, None
            except RedisError as exc:
                if self._reachable or self.last_error is None:
                    log.warning("fleet: redis unreachable (%s); streams stop when their leases run out", exc)
                self._reachable, self.last_error = False, str(exc) or type(exc).__name__
            except Exception:
                log.exception("fleet: tick failed")
            delay = max(0.0, self.cfg.tick_s - (time.monotonic() - started))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass

    async def _watch(self) -> None:
        while not self._stopped:
            await asyncio.sleep(_WATCH_S)
            now = time.monotonic()
            for stream_id, lease in list(self._leases.items()):
                if now >= lease.valid_until:
                    self._lost(stream_id, f"the lease was not renewed within {self.ttl_s - self.margin_s:.1f}s")

    async def _tick(self) -> None:
        r = self._redis()
        while self._seed:
            stream_id, url = self._seed[0]
            if not await self._s_add(keys=[self.streams_key, self.lease_key(stream_id)],
                                     args=[stream_id, self._entry(url)]):
                log.info("fleet: configured stream %s is already in the fleet; keeping its entry", stream_id)
            self._seed.pop(0)
        await self._renew()
        desired = cast(dict[str, str], await r.hgetall(self.streams_key))  # decode_responses: str
        for stream_id, lease in list(self._leases.items()):
            if lease.desired and stream_id not in desired and lease.stopping is None:
                lease.stopping = "deleted"
                stopping = asyncio.create_task(self._stop_local(stream_id))
                self._stopping.add(stopping)  # the loop keeps only weak references to tasks
                stopping.add_done_callback(self._stopping.discard)
        ids = sorted(desired)
        owners = cast(list[Optional[str]], await r.mget([self.lease_key(i) for i in ids])) if ids else []
        unassigned = [i for i, owner in zip(ids, owners) if owner is None]
        workers = await self._heartbeat()
        self.metrics.streams_unassigned.set(len(unassigned))
        self.metrics.fleet_workers.set(len(workers))
        claimable = [i for i, owner in zip(ids, owners)
                     if (owner is None or owner_of(owner) == self.name)
                     and i not in self._leases and not self.monitor.busy(i)]
        if self._claiming and claimable and len(self._leases) < self.cfg.capacity and self._least_loaded(workers):
            stream_id = random.choice(claimable)  # random: workers claiming at once rarely collide
            await self._claim(stream_id, json.loads(desired[stream_id]))

    def _least_loaded(self, workers: list[dict[str, Any]]) -> bool:
        """No other live worker with room runs fewer streams (ties claim too: SET NX decides)."""
        mine = len(self._leases)
        others = [int(w.get("owned", 0)) for w in workers
                  if w.get("name") != self.name and int(w.get("owned", 0)) < int(w.get("capacity", 0))]
        return not others or mine <= min(others)

    async def _renew(self) -> None:
        ids = list(self._leases)
        if not ids:
            return
        sent = time.monotonic()
        renewed = await self._s_renew(keys=[self.lease_key(i) for i in ids],
                                      args=[self._ttl_ms, *(self._value(self._leases[i]) for i in ids)])
        for stream_id, ok in zip(ids, renewed):
            lease = self._leases.get(stream_id)
            if lease is None:
                continue
            if ok:
                lease.valid_until = max(lease.valid_until, sent + self.ttl_s - self.margin_s)
            else:
                self._lost(stream_id, "the lease expired or another worker holds it")

    async def _heartbeat(self) -> list[dict[str, Any]]:
        """Publish this worker's record; return every live worker's (this one included)."""
        r = self._redis()
        now_ms = int(time.time() * 1000)
        record = {"name": self.name, "api": self._api_url(), "capacity": self.cfg.capacity,
                  "owned": len(self._leases), "started_at": self.started_at, "updated_at": time.time(),
                  "streams": {sid: h.status() for sid, h in self.monitor.streams.items() if sid in self._leases}}
        pipe = r.pipeline(transaction=False)
        pipe.set(self.worker_key(self.name), json.dumps(record), px=self._ttl_ms)
        pipe.zadd(self.workers_key, {self.name: now_ms + self._ttl_ms})
        pipe.zremrangebyscore(self.workers_key, "-inf", now_ms)
        await pipe.execute()
        self.metrics.streams_owned.set(len(self._leases))
        return await self._workers()

    async def _workers(self) -> list[dict[str, Any]]:
        r = self._redis()
        names = cast(list[str], await r.zrangebyscore(self.workers_key, int(time.time() * 1000), "+inf"))
        raw = cast(list[Optional[str]], await r.mget([self.worker_key(n) for n in names])) if names else []
        return [json.loads(x) for x in raw if x]

    # ------------------------------------------------------------------ ownership changes

    async def _claim(self, stream_id: str, entry: dict[str, Any]) -> None:
        sent = time.monotonic()
        epoch = int(await self._s_claim(keys=[self.streams_key, self.lease_key(stream_id), self.epoch_key(stream_id)],
                                        args=[self.name, self._ttl_ms, stream_id]))
        if not epoch:
            return
        lease = _Lease(stream_id, desired=True, valid_until=sent + self.ttl_s - self.margin_s, epoch=epoch)
        self._leases[stream_id] = lease
        lease.orphans = await self._orphans(stream_id)
        try:
            handle = await self.monitor.add_stream(stream_id, str(entry["url"]), leased=True)
        except SourceRefused as exc:
            # Not allowed by this worker's api.source_hosts/source_roots: claiming it again would
            # be refused again, so it leaves the desired set like a stream that ended.
            log.error("fleet: desired stream %s refused: %s", stream_id, exc)
            self._end_orphans(lease)  # nobody will run it again to end them
            await self._finish(stream_id, f"refused: {exc}", None)
            return
        except Exception as exc:
            log.error("fleet: claimed %s but could not start it: %s", stream_id, exc)
            await self._release(stream_id, "released", f"start failed: {exc}")
            return
        lease.pipeline = handle.pipeline
        self._record(stream_id, "acquired", None)
        self._end_orphans(lease)

    async def claim_local(self, stream_id: str) -> None:
        """Lease ``stream_id`` for a stream that only this worker can run (a WHIP publisher).

        Raises :class:`~stream_monitor.errors.StreamExists` when the id is a desired stream's or
        another worker holds it, :class:`FleetUnavailable` when Redis cannot be reached.
        """

        sent = time.monotonic()
        try:
            got = int(await self._s_claim_local(
                keys=[self.streams_key, self.lease_key(stream_id), self.epoch_key(stream_id)],
                args=[self.name, self._ttl_ms, stream_id]))
        except RedisError as exc:
            raise FleetUnavailable(f"cannot reach redis to lease stream {stream_id!r}: {exc}") from exc
        if got == -1:
            raise StreamExists(f"stream {stream_id!r} is one of the fleet's desired streams")
        if got == 0:
            raise StreamExists(f"stream {stream_id!r} is running on another worker")
        lease = _Lease(stream_id, desired=False, valid_until=sent + self.ttl_s - self.margin_s, epoch=got)
        self._leases[stream_id] = lease
        lease.orphans = await self._orphans(stream_id)

    def bind(self, stream_id: str, pipeline: "StreamPipeline") -> None:
        """The stream under a local lease has started with ``pipeline``."""
        lease = self._leases.get(stream_id)
        if lease is not None and lease.pipeline is None:
            lease.pipeline = pipeline
            if not lease.desired:  # (a desired stream's record and ends follow in _claim)
                self._record(stream_id, "acquired", "local stream")
                self._end_orphans(lease)

    async def unclaim_local(self, stream_id: str) -> None:
        """A :meth:`claim_local` whose stream never started: give the id back."""
        lease = self._leases.get(stream_id)
        if lease is not None and lease.pipeline is None:
            await self._release(stream_id, None, None)

    async def stream_done(self, stream_id: str, pipeline: "StreamPipeline", ended: bool) -> None:
        """A local stream's run finished (``ended``: its finite source ran out). Releases its
        lease, and a finished desired stream leaves the desired set. A stream aborted for a
        lost lease has nothing left to release."""
        lease = self._leases.get(stream_id)
        if lease is None or lease.pipeline is not pipeline:
            return
        if ended and lease.desired and lease.stopping is None:
            await self._finish(stream_id, "the source ended", pipeline)
            return
        await self._release(stream_id, lease.stopping or "released", None, pipeline)

    async def _finish(self, stream_id: str, reason: str, pipeline: "StreamPipeline | None") -> None:
        """A desired stream of ours is over for good: it leaves the desired set with its lease."""
        lease = self._leases.pop(stream_id, None)
        try:
            if lease is not None:
                await self._s_finish(keys=[self.streams_key, self.lease_key(stream_id)],
                                     args=[self._value(lease), stream_id])
        except RedisError as exc:
            log.warning("fleet: could not remove ended stream %s (%s); its lease expires", stream_id, exc)
        self._record(stream_id, "ended", reason, pipeline)

    async def _release(self, stream_id: str, event: str | None, reason: str | None,
                       pipeline: "StreamPipeline | None" = None) -> None:
        lease = self._leases.pop(stream_id, None)
        if event is not None:
            self._record(stream_id, event, reason, pipeline)  # before the key goes: no overlap in records
        try:
            if lease is not None:
                await self._s_release(keys=[self.lease_key(stream_id)], args=[self._value(lease)])
        except RedisError as exc:
            log.warning("fleet: could not release %s (%s); it expires in %.0fs", stream_id, exc, self.ttl_s)
        self._wake.set()

    def _lost(self, stream_id: str, reason: str) -> None:
        lease = self._leases.pop(stream_id, None)
        if lease is None:
            return
        self.metrics.leases_lost.inc()
        self.monitor.abort_stream(stream_id)
        log.error("fleet: stream %s stopped: %s", stream_id, reason)
        self._record(stream_id, "lost", reason, lease.pipeline)

    def fenced_out(self, stream_id: str, epoch: int) -> None:
        """Redis refused an alert of ``stream_id`` under ``epoch``: a later owner has claimed the
        stream. If that is our current lease (we have not noticed yet: a pause past the TTL),
        the stream is lost here at once."""
        lease = self._leases.get(stream_id)
        if lease is not None and lease.epoch == epoch:
            self._lost(stream_id, f"redis refused its alerts: epoch {epoch} is no longer the stream's")

    async def _orphans(self, stream_id: str) -> dict[str, str]:
        """The incidents a previous owner left open on ``stream_id`` (it was killed, or paused
        past its lease): ``P:open:{id}``, alert_id → the JSON of its last event. Read after our
        claim: the previous owner's epoch is older than ours now, so it can add nothing."""
        try:
            return cast(dict[str, str], await self._redis().hgetall(self.open_key(stream_id)))
        except RedisError as exc:
            log.warning("fleet: cannot read %s's open incidents (%s); they stay open", stream_id, exc)
            return {}

    def _end_orphans(self, lease: _Lease) -> None:
        """Queue an ``end`` (``reason`` ``owner_lost``, our worker name and epoch, the next
        ``seq``) for each of ``lease.orphans``. Called right after the stream's ``acquired``
        record with no await since the start, so the ends precede every event of our run."""
        orphans, lease.orphans = lease.orphans, {}
        for alert_id, text in sorted(orphans.items()):
            try:
                last = json.loads(text)
                payload = {**last, "event": "end", "seq": int(last["seq"]) + 1,
                           "emitted_at": iso_time(time.time()), "worker": self.name, "lease_epoch": lease.epoch,
                           "reason": "owner_lost"}
            except (ValueError, TypeError, KeyError):
                log.error("fleet: unreadable open incident %s of %s; skipped", alert_id, lease.stream_id)
                continue
            log.info("fleet: ending incident %s of %s: its owner lost the stream", alert_id, lease.stream_id)
            self.monitor.sink.publish(AlertEvent(payload, time.time()))

    async def _stop_local(self, stream_id: str) -> None:

        try:
            await self.monitor.remove_stream(stream_id)
        except UnknownStream:
            pass

    def _record(self, stream_id: str, event: str, reason: str | None,
                pipeline: "StreamPipeline | None" = None) -> None:
        if pipeline is None:
            handle = self.monitor.streams.get(stream_id)
            pipeline = handle.pipeline if handle is not None else None
        entry = {"t": time.time(), "worker": self.name, "stream": stream_id, "event": event, "reason": reason,
                 "frames_analysed": pipeline.stats.frames_analysed if pipeline is not None else None}
        self.history.append(entry)
        log.info("fleet: %s %s%s", event, stream_id, f" ({reason})" if reason else "")
        if self.cfg.journal is not None:
            try:
                with open(self.cfg.journal, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")  # one write per line: whole lines even if killed
            except OSError as exc:
                log.error("fleet: cannot write the journal %s: %s", self.cfg.journal, exc)

    # ------------------------------------------------------------------ the API's operations

    async def add(self, stream_id: str, url: str, max_desired: int | None = None) -> dict[str, Any]:
        """Add a desired stream; one worker will claim it. Raises ``StreamExists``, and
        :class:`FleetFull` when the desired set already holds ``max_desired`` streams
        (checked in the same script as the addition, so concurrent adds cannot overshoot)."""

        limit = [] if max_desired is None else [max_desired]
        got = await self._call(self._s_add(keys=[self.streams_key, self.lease_key(stream_id)],
                                           args=[stream_id, self._entry(url), *limit]))
        if got == -1:
            raise StreamExists(f"stream {stream_id!r} is live on a worker (a WHIP publisher)")
        if got == -2:
            raise FleetFull(f"the fleet has {max_desired} desired streams (api.max_streams); remove one or try later")
        if got == 0:
            raise StreamExists(f"stream {stream_id!r} already exists")
        self._wake.set()
        return {"id": stream_id, "url": redact(url), "owner": None, "desired": True, "state": "unassigned"}

    async def delete(self, stream_id: str) -> bool:
        """Remove a stream from the fleet. True when it stopped here (or ran nowhere);
        False when its owner is another worker, which stops it within a tick. Raises
        ``UnknownStream``."""

        removed = await self._call(self._redis().hdel(self.streams_key, stream_id))
        lease = self._leases.get(stream_id)
        if lease is not None:
            lease.stopping = "deleted"
            await self._stop_local(stream_id)
            return True
        if not removed:
            raise UnknownStream(f"no stream {stream_id!r} in the fleet")
        owner = await self._call(self._redis().get(self.lease_key(stream_id)))
        return owner is None

    async def view(self) -> dict[str, Any]:
        """The whole fleet: every desired or leased stream with its owner and the owner's
        latest status (at most a tick old for other workers' streams), and the live workers."""
        r = self._redis()
        desired: dict[str, str] = await self._call(r.hgetall(self.streams_key))
        workers = await self._call(self._workers())
        remote = {sid: (w["name"], st) for w in workers for sid, st in w.get("streams", {}).items()}
        ids = sorted(set(desired) | set(remote) | set(self._leases))
        owners = await self._call(r.mget([self.lease_key(i) for i in ids])) if ids else []
        streams = []
        for stream_id, value in zip(ids, owners):
            owner = owner_of(value)
            local = self.monitor.streams.get(stream_id)
            if owner is None and stream_id not in desired:
                continue  # a stale heartbeat entry
            if local is not None and owner == self.name:
                status = local.status()
            elif owner is not None and remote.get(stream_id, ("",))[0] == owner:
                status = dict(remote[stream_id][1])
            else:
                url = json.loads(desired[stream_id])["url"] if stream_id in desired else ""
                status = {"id": stream_id, "url": redact(url), "state": "unassigned" if owner is None else "starting"}
            streams.append({**status, "id": stream_id, "owner": owner, "desired": stream_id in desired})
        return {"worker": self.name, "streams": streams,
                "workers": [{k: w.get(k) for k in ("name", "api", "capacity", "owned", "started_at", "updated_at")}
                            for w in sorted(workers, key=lambda w: str(w.get("name")))]}

    # ------------------------------------------------------------------ helpers

    def _value(self, lease: _Lease) -> str:
        """What ``P:lease:{id}`` holds while ``lease`` is ours."""
        return f"{lease.epoch}:{self.name}"

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise FleetUnavailable("the fleet is not started")
        return self._client

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise FleetUnavailable(f"redis {redact(self.url)} unreachable: {exc}") from exc

    def _entry(self, url: str) -> str:
        return json.dumps({"url": url, "added_at": time.time(), "added_by": self.name})

    def _api_url(self) -> str | None:
        if self.cfg.advertise_url:
            return self.cfg.advertise_url
        return self.monitor.api_url
