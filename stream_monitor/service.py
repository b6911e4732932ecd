"""The service: a :class:`~stream_monitor.app.Monitor` behind its HTTP listeners.

Composed above both the Monitor and the API, as uvicorn's ``Server`` serves an app from a
``Config``: the Monitor runs streams and knows nothing of HTTP, the API
(:mod:`stream_monitor.api`) is built on a Monitor, and this module puts the two together, so
imports point one way (``cli`` → ``service`` → ``api`` → ``app`` → ``fleet``, ``pipeline``, ...).

Start: the API and metrics listeners first (``api.port``, ``metrics.port``; a port that cannot
be bound is a ``StreamMonitorError`` naming it), so a supervisor sees the process answer while
the models load (``/readyz`` 503 ``starting``), then the Monitor. Stop: the Monitor's, in its
budgets; the listeners close where it says (after the streams and the fleet, before the worker
threads): in-flight requests get :data:`HTTP_SHUTDOWN_S`, idle keep-alive connections are closed.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .api import build_api, build_metrics_app
from .api.server import ConnectionLimits, GuardedSite
from .app import Monitor
from .config import Config
from .errors import StreamMonitorError
from .metrics import Metrics

log = logging.getLogger(__name__)

# Idle keep-alive clients (browsers, scrapers) must not hold a stop for aiohttp's default
# 60 s: in-flight requests get this long, then connections are closed.
HTTP_SHUTDOWN_S = 3.0


class Service(Monitor):
    """The Monitor with its HTTP listeners; ``api_port`` / ``metrics_port``: the bound ports
    (None when not configured), set by :meth:`start`."""

    def __init__(self, cfg: Config, metrics: Metrics | None = None) -> None:
        super().__init__(cfg, metrics)
        self._runners: list[web.AppRunner] = []
        self.api_port: int | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        await self._start_http()  # first: a supervisor sees the process answer while models load
        await super().start()

    async def _start_http(self) -> None:
        cfg = self.cfg
        if cfg.api.port is not None:
            self.api_port = await self._serve(build_api(self), cfg.api.host, cfg.api.port)
            self.api_url = f"http://{cfg.api.host}:{self.api_port}"
            log.info("API on http://%s:%d", cfg.api.host, self.api_port)
        if cfg.metrics.port is not None:
            self.metrics_port = await self._serve(build_metrics_app(self), cfg.metrics.host, cfg.metrics.port)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, self.metrics_port)

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        """Serve ``app`` on ``host``:``port`` within the ``api`` connection limits (header and
        keep-alive timeouts, connection count: :mod:`.api.server`); the bound port. Raises
        ``StreamMonitorError`` naming the address when it cannot be bound (in use, not local)."""
        api = self.cfg.api
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_S,
                               keepalive_timeout=api.keepalive_timeout_s)
        await runner.setup()
        self._runners.append(runner)  # stop() cleans it up even if binding fails
        site = GuardedSite(runner, host, port, ConnectionLimits(api.header_timeout_s, api.max_connections))
        try:
            await site.start()
        except OSError as exc:
            raise StreamMonitorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return site.port

    async def _close_listeners(self) -> None:
        await asyncio.gather(*(runner.cleanup() for runner in self._runners))
        self._runners.clear()
