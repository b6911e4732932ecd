"""The Monitor: the boot order as readable code, and the streams it runs.

Start: metrics → models (engine.load, in a thread: may raise ``WeightsError``) → worker
→ alert sinks → HTTP servers (API, metrics) → streams. Stop, in reverse: streams (each
finishes its in-flight frames, closes its tracks and emits their final windows and end
events) → HTTP → worker → sinks (drained within the grace time).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from .alerts.policy import AlertPolicy, PolicyConfig
from .alerts.publisher import AlertSink, Broadcast, FanOut, JsonLinesSink, RedisPublisher
from .config import Config
from .errors import StreamMonitorError
from .inference.engine import Engine
from .ingest.base import Source
from .ingest.supervisor import StreamSupervisor
from .ingest.urls import redact, scheme_of
from .metrics import Metrics
from .pipeline import StreamPipeline
from .retry import Backoff

log = logging.getLogger(__name__)


class StreamExists(StreamMonitorError):
    """A stream with that id is already running."""


class UnknownStream(StreamMonitorError):
    """No stream with that id."""


@dataclass
class StreamHandle:
    id: str
    url: str
    supervisor: StreamSupervisor
    pipeline: StreamPipeline
    task: asyncio.Task[None]
    added_at: float = field(default_factory=time.time)

    def status(self) -> dict[str, Any]:
        sup = self.supervisor.status()
        stats = self.pipeline.stats
        return {
            "id": self.id, "url": self.url, "transport": scheme_of(self.url), **sup,
            "faces": len(self.pipeline.last_faces), "tracks": stats.tracks, "frames_analysed": stats.frames_analysed,
            "windows": stats.windows, "alerts": stats.alerts, "last_scores": dict(stats.last_scores),
        }


def worker_name(cfg: Config) -> str:
    return cfg.worker_name or f"{socket.gethostname()}:{os.getpid()}"


def build_sink(cfg: Config, metrics: Metrics) -> AlertSink:
    """Redis when configured (plus a JSON-lines file if asked); else JSON lines on stdout."""
    sinks: list[AlertSink] = []
    a, r = cfg.alerts, cfg.redis
    primary_has_metrics = False
    if r.url:
        sinks.append(RedisPublisher(r.url, prefix=r.prefix, maxlen=r.stream_maxlen, outbox_max=r.outbox_max,
                                    backoff=Backoff(r.retry.initial_s, r.retry.max_s, r.retry.multiplier,
                                                    r.retry.jitter), metrics=metrics))
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
        self.sink: AlertSink = FanOut([build_sink(cfg, self.metrics), self.broadcast])
        self.policy: AlertPolicy | None = None
        self.streams: dict[str, StreamHandle] = {}
        self.started_at = time.time()
        self.ready = False
        self._runners: list[web.AppRunner] = []
        self.api_port: int | None = None
        self.metrics_port: int | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await asyncio.to_thread(self.engine.load)
        await self.engine.start()
        a = self.cfg.alerts
        self.policy = AlertPolicy(PolicyConfig(
            threshold=a.threshold, fusion=a.fusion, weights=a.weights, start_after=a.start_after,
            end_after=a.end_after, cooldown_s=a.cooldown_s, calibrated=self.engine.calibrated,
            models=self.engine.model_ids, worker=worker_name(self.cfg)))
        await self.sink.start()
        await self._start_http()
        for s in self.cfg.streams:
            await self.add_stream(s.id, s.url)
        self.ready = True

    async def _start_http(self) -> None:
        from .api import build_api, build_metrics_app

        if self.cfg.api.port is not None:
            self.api_port = await self._serve(build_api(self), self.cfg.api.host, self.cfg.api.port)
            log.info("API on http://%s:%d", self.cfg.api.host, self.api_port)
        if self.cfg.metrics.port is not None:
            self.metrics_port = await self._serve(build_metrics_app(self), self.cfg.metrics.host, self.cfg.metrics.port)
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.host, self.metrics_port)

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        server = site._server  # the bound port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def add_stream(self, stream_id: str, url: str, opener: Callable[[], Source] | None = None) -> StreamHandle:
        """Start a stream. ``opener`` supplies the Source instead of ``url`` (WebRTC sessions:
        ``url`` is then only a label). A stream that has ended under the same id is replaced."""
        old = self.streams.get(stream_id)
        if old is not None and not old.task.done():
            raise StreamExists(f"stream {stream_id!r} already exists")
        assert self.policy is not None, "start() first"
        pipeline = StreamPipeline(stream_id, self.engine, self.policy, self.sink, self.metrics)
        await pipeline.open()
        supervisor = StreamSupervisor(stream_id, url, self.cfg.ingest, self.metrics, on_frame=pipeline.on_frame,
                                      on_session=pipeline.on_session, opener=opener)
        task = asyncio.create_task(self._run_stream(supervisor, pipeline), name=f"stream-{stream_id}")
        handle = StreamHandle(stream_id, url, supervisor, pipeline, task)
        self.streams[stream_id] = handle
        log.info("stream %s: %s", stream_id, redact(url))
        return handle

    async def _run_stream(self, supervisor: StreamSupervisor, pipeline: StreamPipeline) -> None:
        try:
            await supervisor.run()
        finally:
            await pipeline.close()

    async def remove_stream(self, stream_id: str, wait_s: float = 5.0) -> None:
        """Stop a stream. Its open windows are scored and its incidents ended; if that takes
        longer than ``wait_s`` it finishes in the background (``stop()`` waits for it)."""
        handle = self.streams.pop(stream_id, None)
        if handle is None:
            raise UnknownStream(f"no stream {stream_id!r}")
        await handle.supervisor.stop()
        self._closing.add(handle.task)

        def closed(task: asyncio.Task[None]) -> None:
            self._closing.discard(task)
            self.metrics.forget_stream(stream_id)

        handle.task.add_done_callback(closed)
        await asyncio.wait({handle.task}, timeout=wait_s)

    async def wait_streams(self, timeout: float | None = None) -> None:
        """Until every stream has ended (finite sources) or ``timeout`` seconds pass."""
        tasks = [h.task for h in self.streams.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def problems(self) -> list[str]:
        out = [] if self.ready else ["starting"]
        return out + self.sink.problems()

    async def stop(self, grace: float = 10.0) -> None:
        self.ready = False
        for stream_id in list(self.streams):
            handle = self.streams.pop(stream_id)
            await handle.supervisor.stop()
            done, _ = await asyncio.wait({handle.task}, timeout=grace)
            if not done:
                log.error("stream %s did not finish within %.0fs (the worker is busy)", stream_id, grace)
            elif not handle.task.cancelled() and handle.task.exception() is not None:
                log.error("stream %s ended with %r", stream_id, handle.task.exception())
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=grace)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.engine.stop()
        await self.sink.close(timeout=grace)

