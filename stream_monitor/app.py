"""The Monitor: the boot order as readable code, and the streams it runs.

It knows nothing of HTTP: :class:`stream_monitor.service.Service` puts the API and metrics
listeners in front of it (imports point one way: service → api → app → fleet, pipeline, ...).

Start: metrics → (the service's HTTP servers: they answer while the models load, ``/readyz``
503 ``starting``; changes get 503, :mod:`.api.starting`) → models (engine.load, in a thread:
may raise ``WeightsError``) → worker → alert sinks → streams (with ``fleet.enabled``: the fleet,
which adds the configured streams to Redis's desired set and claims streams from it).
Stop, in reverse and in budgets (:meth:`Monitor.stop`): the fleet stops claiming → every
stream's ingest stops at once, all streams together → their in-flight frames and windows get
what is left of the grace (final windows, tracks' end events) → what is unfinished then is
abandoned (``work_abandoned_total{kind}``), every incident still open ends (reason
``shutdown``) and each lease is released, in a ``finally`` that a cancellation does not skip
→ the fleet leaves → (the service's HTTP servers) → worker threads (not waited for past the budget: a forward cannot
be interrupted) → sinks (the end events delivered within the rest of the grace).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .alerts.evidence import EvidenceStore
from .alerts.policy import AlertPolicy, PolicyConfig
from .alerts.publisher import (AlertSink, Broadcast, FanOut, JsonLinesSink, RecentAlerts, RedisPublisher,
                               redis_publishers)
from .config import Config, StreamSettings, worker_name
from .errors import StreamExists, UnknownStream
from .fleet import Fleet
from .inference.engine import Engine
from .ingest.base import Source
from .ingest.policy import SourceGuard, predict_guard, stream_guard
from .ingest.supervisor import StreamSupervisor
from .ingest.urls import redact, scheme_of
from .metrics import Metrics
from .pipeline import StreamPipeline
from .retry import Backoff

log = logging.getLogger(__name__)

# How long a stopping stream's ingest may take to hand back its last frame (supervisor.stop
# cancels it after this): ingest stops at once, the frame in hand is not worth the wait.
_INGEST_STOP_S = 0.5
# After a stream's finishing deadline: its synchronous last step (incidents' end events) and
# its lease release (one Redis call within the fleet's socket timeout, at most 2 s).
_RELEASE_S = 2.5
# How long the worker threads get to end once the streams are closed (within the grace).
_ENGINE_STOP_S = 1.0
# The part of the grace kept for delivering the end events (the sinks drain then).
_SINK_SHARE = 0.25
_SINK_MAX_S = 3.0


@dataclass
class StreamHandle:
    id: str
    url: str
    supervisor: StreamSupervisor
    pipeline: StreamPipeline
    task: asyncio.Task[None]
    added_at: float = field(default_factory=time.time)
    settings: StreamSettings = field(default_factory=StreamSettings)
    # The settings in effect (the stream's own, else the global ones), for GET /streams.
    effective: dict[str, Any] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        sup = self.supervisor.status()
        stats = self.pipeline.stats
        return {
            "id": self.id, "url": self.url, "transport": scheme_of(self.url), **self.effective, **sup,
            "faces": len(self.pipeline.last_faces), "tracks": stats.tracks, "frames_analysed": stats.frames_analysed,
            "windows": stats.windows, "alerts": stats.alerts, "last_scores": dict(stats.last_scores),
            "inference_errors": stats.inference_errors, "last_inference_error": stats.last_inference_error,
        }


def build_sink(cfg: Config, metrics: Metrics) -> AlertSink:
    """Redis when configured (plus a JSON-lines file if asked); else JSON lines on stdout."""
    sinks: list[AlertSink] = []
    a, r = cfg.alerts, cfg.redis
    primary_has_metrics = False
    if r.url:
        spool = None
        if a.spool_dir is not None:
            spool = a.spool_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", worker_name(cfg)) + ".alerts.jsonl")
        sinks.append(RedisPublisher(r.url, prefix=r.prefix, maxlen=r.stream_maxlen, outbox_max=r.outbox_max,
                                    backoff=Backoff(r.retry.initial_s, r.retry.max_s, r.retry.multiplier,
                                                    r.retry.jitter), metrics=metrics, spool=spool))
        primary_has_metrics = True
    if a.jsonl is not None:
        sinks.append(JsonLinesSink(path=str(a.jsonl), metrics=None if primary_has_metrics else metrics))
        primary_has_metrics = True
    if a.stdout if a.stdout is not None else not r.url:
        sinks.append(JsonLinesSink(metrics=None if primary_has_metrics else metrics))
    return sinks[0] if len(sinks) == 1 else FanOut(sinks)


class Monitor:
    """Owns the engine, the sinks, the HTTP servers and the streams."""

    def __init__(self, cfg: Config, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.engine = Engine(cfg, self.metrics)
        self.broadcast = Broadcast()  # live alert feed for in-process subscribers (the page)
        self.recent = RecentAlerts()  # GET /alerts without Redis
        self.sink: AlertSink = FanOut([build_sink(cfg, self.metrics), self.broadcast, self.recent])
        a = cfg.alerts
        self.evidence: EvidenceStore | None = None
        if a.evidence_dir is not None:
            self.evidence = EvidenceStore(a.evidence_dir, round(a.evidence_max_mb * 1e6), a.evidence_max_age_h * 3600)
        self.policy: AlertPolicy | None = None
        self.streams: dict[str, StreamHandle] = {}
        self.started_at = time.time()
        self.ready = False
        # Where this worker's API answers (http://host:port), set by the service that serves it
        # (stream_monitor.service); the fleet advertises it.
        self.api_url: str | None = None
        # Streams stopped but still finishing (final windows): an id is not reused until done.
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._closing_handles: dict[str, StreamHandle] = {}
        self._background: set[asyncio.Future[None]] = set()
        self.fleet: Fleet | None = Fleet(self, cfg, worker_name(cfg)) if cfg.fleet.enabled else None
        if self.fleet is not None:
            for publisher in redis_publishers(self.sink):  # Redis refused an alert: the stream is lost
                publisher.on_stale = self.fleet.fenced_out
        # What URLs from the network may open (stream_monitor.ingest.policy).
        self.source_guard: SourceGuard = stream_guard(cfg)
        self.predict_guard: SourceGuard = predict_guard(cfg)

    async def start(self) -> None:
        await asyncio.to_thread(self.engine.load)
        await self.engine.start()
        self.policy = AlertPolicy(PolicyConfig.from_config(self.cfg.alerts, self.engine.model_ids,
                                                           worker_name(self.cfg), self.engine.calibration))
        await self.sink.start()
        if self.fleet is not None:
            await self.fleet.start()  # adds cfg.streams to the fleet; some may land on other workers
        else:
            for s in self.cfg.streams:
                await self.add_stream(s.id, s.url, trusted=True, settings=s.settings())
        self.ready = True

    def stream_count(self) -> int:
        """Streams holding resources here: running (whatever started them: configuration, API,
        WHIP, fleet) or stopped and still finishing. Ended streams, kept for their last status
        until replaced or deleted, do not count. What ``api.max_streams`` caps."""
        running = {sid for sid, handle in self.streams.items() if not handle.task.done()}
        return len(running | self._closing.keys())

    def busy(self, stream_id: str) -> bool:
        """A stream with this id is running or still finishing here."""
        handle = self.streams.get(stream_id)
        return (handle is not None and not handle.task.done()) or stream_id in self._closing

    async def add_stream(self, stream_id: str, url: str, opener: Callable[[], Source] | None = None, *,
                         leased: bool = False, trusted: bool = False,
                         settings: StreamSettings | None = None) -> StreamHandle:
        """Start a stream on this worker. ``opener`` supplies the Source instead of ``url``
        (WebRTC sessions: ``url`` is then only a label). A stream that has ended under the
        same id is replaced. In a fleet the stream holds a lease on its id: ``leased`` says
        the fleet already took it (a desired stream); otherwise it is leased here (raises
        ``StreamExists`` when another worker has the id). ``trusted``: the URL is the
        operator's (the config file); otherwise it came from the network and every open goes
        through :attr:`source_guard` (raises ``SourceRefused`` before anything connects).
        ``settings``: the stream's own detectors, threshold, ``max_fps`` and display name
        (ValueError when it names a detector that is not enabled)."""
        if self.busy(stream_id):
            state = "already exists" if stream_id in self.streams else "is still finishing"
            raise StreamExists(f"stream {stream_id!r} {state}")
        assert self.policy is not None, "start() first"
        settings = settings or StreamSettings()
        settings.check_detectors(self.cfg.detectors.enabled)
        guard = None if trusted or opener is not None else self.source_guard
        if guard is not None:
            guard.check(url)  # SourceRefused before a lease, a pipeline or a connection
        if self.fleet is not None and not leased:
            await self.fleet.claim_local(stream_id)
        try:
            self.policy.set_threshold(stream_id, settings.threshold)
            pipeline = StreamPipeline(stream_id, self.engine, self.policy, self.sink, self.metrics,
                                      evidence=self.evidence,
                                      detectors=None if settings.detectors is None else list(settings.detectors),
                                      lease_epoch=self.fleet.epoch(stream_id) if self.fleet is not None else None)
            await pipeline.open()
        except BaseException:
            self.policy.set_threshold(stream_id, None)
            if self.fleet is not None and not leased:
                await self.fleet.unclaim_local(stream_id)
            raise
        ingest = self.cfg.ingest
        if settings.max_fps is not None:
            ingest = ingest.model_copy(update={"max_fps": settings.max_fps})
        supervisor = StreamSupervisor(stream_id, url, ingest, self.metrics, on_frame=pipeline.on_frame,
                                      on_session=pipeline.on_session, opener=opener,
                                      guard=guard)
        task = asyncio.create_task(self._run_stream(stream_id, supervisor, pipeline), name=f"stream-{stream_id}")
        effective = {"name": settings.name,
                     "detectors": list(settings.detectors or self.cfg.detectors.enabled),
                     # null: a calibration file's thresholds apply (detectors.calibration)
                     "threshold": settings.threshold if settings.threshold is not None else
                     None if self.engine.calibration is not None else self.cfg.alerts.threshold,
                     "max_fps": ingest.max_fps}
        handle = StreamHandle(stream_id, url, supervisor, pipeline, task, settings=settings, effective=effective)
        self.streams[stream_id] = handle
        if self.fleet is not None:
            self.fleet.bind(stream_id, pipeline)
        log.info("stream %s: %r", stream_id, redact(url))
        return handle

    async def _run_stream(self, stream_id: str, supervisor: StreamSupervisor, pipeline: StreamPipeline) -> None:
        # Ingest runs in a task of its own: supervisor.stop() cancels it when a frame is stuck in
        # on_frame, and that must not cancel the finishing below (incidents, lease).
        ingest = asyncio.create_task(supervisor.run(), name=f"ingest-{stream_id}")
        try:
            await asyncio.wait({ingest})
        finally:
            if not ingest.done():  # this task is cancelled (the loop is closing): ingest goes too
                ingest.cancel()
            try:
                await pipeline.close()  # bounded by pipeline.stop_by; ends open incidents even if cancelled
            finally:
                if self.fleet is not None:
                    await self._release(stream_id, pipeline, ended=supervisor.status()["state"] == "ended")
        if not ingest.cancelled() and ingest.exception() is not None:
            raise ingest.exception()  # type: ignore[misc]  # a pipeline callback's bug: stop() logs it

    async def _release(self, stream_id: str, pipeline: StreamPipeline, ended: bool) -> None:
        """Give the stream's lease back. Shielded: when this task is cancelled meanwhile the
        release still completes, in the background (``stop()`` waits for it)."""
        assert self.fleet is not None
        release = asyncio.ensure_future(self.fleet.stream_done(stream_id, pipeline, ended=ended))
        self._background.add(release)
        release.add_done_callback(self._background.discard)
        await asyncio.shield(release)

    async def remove_stream(self, stream_id: str, wait_s: float = 5.0) -> None:
        """Stop a stream. Ingest stops at once; its in-flight frames and windows get ``wait_s``
        seconds (final windows scored, tracks' incidents ended); what is unfinished then is
        abandoned and every incident still open ends (reason ``stream_removed``). Returns once
        that is done and, in a fleet, the lease is released (about ``wait_s`` at most), so the
        id can be added again at once."""
        handle = self.streams.pop(stream_id, None)
        if handle is None:
            raise UnknownStream(f"no stream {stream_id!r}")
        self._finishing(handle)
        handle.pipeline.stop_by(time.monotonic() + wait_s, "stream_removed")
        await handle.supervisor.stop(grace_s=_INGEST_STOP_S)
        await asyncio.wait({handle.task}, timeout=wait_s + _RELEASE_S)

    def abort_stream(self, stream_id: str) -> None:
        """Stop processing a stream at once (its fleet lease is lost: another worker may take
        it). From this call on its pipeline drops every frame and result; its open incidents
        get their ``end`` events (reason ``lease_lost``); no final windows are scored."""
        handle = self.streams.pop(stream_id, None)
        if handle is None:
            return
        handle.pipeline.abort()
        self._finishing(handle)
        stopping = asyncio.ensure_future(handle.supervisor.stop(grace_s=_INGEST_STOP_S))
        self._background.add(stopping)  # the loop keeps only weak references to tasks
        stopping.add_done_callback(self._background.discard)

    def _finishing(self, handle: StreamHandle, forget_metrics: bool = True) -> None:
        """``handle`` is stopping: its id is busy until its task is done; then its per-stream
        series go too (``forget_metrics``: a removed stream's; a stopping service keeps its
        streams' final figures for the last scrape and whoever reads them after ``stop()``)."""
        self._closing[handle.id] = handle.task
        self._closing_handles[handle.id] = handle

        def closed(task: asyncio.Task[None]) -> None:
            if self._closing.get(handle.id) is task:
                del self._closing[handle.id]
                del self._closing_handles[handle.id]
            if forget_metrics and handle.id not in self.streams:
                self.metrics.forget_stream(handle.id)

        handle.task.add_done_callback(closed)

    async def wait_streams(self, timeout: float | None = None) -> None:
        """Until every stream has ended (finite sources) or ``timeout`` seconds pass."""
        tasks = [h.task for h in self.streams.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def problems(self) -> list[str]:
        out = [] if self.ready else ["starting"]
        if self.fleet is not None:
            out += self.fleet.problems()
        return out + self.engine.problems() + self.sink.problems()

    async def stop(self, grace: float | None = None) -> None:
        """Stop everything within about ``grace`` seconds (default ``shutdown_grace_s``), whatever
        the detectors are doing. Every stream's ingest stops at once, all streams together; their
        in-flight frames and windows get the grace less the sinks' share; then unfinished work
        is abandoned (counted), every incident still open ends (reason ``shutdown``), leases
        are released; then the fleet, HTTP and the worker threads stop (threads still inside a
        forward are not waited for: they are daemons), and the sinks deliver the end events in
        what is left of the grace. Only calls bounded by their own timeouts (Redis socket, HTTP
        shutdown) can take it a few seconds past ``grace``."""
        grace = self.cfg.shutdown_grace_s if grace is None else grace
        t0 = time.monotonic()
        sink_s = min(_SINK_MAX_S, grace * _SINK_SHARE)
        deadline = t0 + grace - sink_s  # streams' finishing; the rest is the sinks'
        self.ready = False
        if self.fleet is not None:
            self.fleet.stop_claiming()
        handles = list(self.streams.values())
        self.streams.clear()
        for handle in handles:
            self._finishing(handle, forget_metrics=False)
            handle.pipeline.stop_by(deadline, "shutdown")
        for handle in self._closing_handles.values():  # removed earlier and still finishing
            handle.pipeline.stop_by(deadline, "shutdown")
        await asyncio.gather(*(h.supervisor.stop(grace_s=_INGEST_STOP_S) for h in handles))
        await self._wait_streams_done(deadline)
        if self._background:  # shielded lease releases of cancelled streams, aborted ingests
            await asyncio.wait(set(self._background), timeout=_RELEASE_S)
        if self.fleet is not None:
            await self.fleet.close()
        await self._close_listeners()
        # The streams are closed: what a thread still computes is not wanted. Threads finishing at
        # once exit cleanly; one inside a long forward is left to the process exit.
        await self.engine.stop(timeout=max(0.0, min(_ENGINE_STOP_S, deadline - time.monotonic())))
        await self.sink.close(timeout=max(0.5, t0 + grace - time.monotonic()))
        if self.evidence is not None:  # the streams' last events' files
            await self.evidence.aclose(timeout=max(0.5, t0 + grace - time.monotonic()))

    async def _close_listeners(self) -> None:
        """Where the stop closes the listeners in front of the Monitor: none here (the HTTP
        service, :class:`stream_monitor.service.Service`, closes its servers)."""

    async def _wait_streams_done(self, deadline: float) -> None:
        """Until every stopping stream has finished: each ends by itself by ``deadline`` (its
        pipeline's budget) plus its release; one that does not is cancelled, which still ends
        its incidents and releases its lease."""
        tasks = set(self._closing.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()) + _RELEASE_S)
        for task in pending:
            log.error("%s did not finish within its grace; cancelling it", task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_RELEASE_S)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("%s ended with %r", task.get_name(), task.exception())
