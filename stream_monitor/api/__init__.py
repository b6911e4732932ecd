"""The HTTP API (aiohttp): health, readiness, metrics, streams, predict; ``/openapi.json`` describes it.

``build_api(monitor)`` is the full API; ``build_metrics_app(monitor)`` serves only
``/metrics`` and ``/healthcheck`` (the ``--metrics-port`` listener). With ``api.token``
set, every route except ``/healthcheck``, ``/metrics``, ``/openapi.json`` and the operator
page's own files (``/``, ``/static/``) needs ``Authorization: Bearer <token>`` (the page's two live feeds,
``/events`` and ``live.mjpeg``, may instead pass ``?access_token=`` for its ``EventSource``
and ``<img>``: see :mod:`.auth`).
Both answer only the ``Host`` names of ``api.allowed_hosts`` (421 otherwise: see
:mod:`.hosts`). Errors are JSON ``{"error": "..."}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..host_allowlist import HostAllowList
from .auth import auth_middleware, json_errors
from .health import add_health_routes
from .history import add_history_routes
from .hosts import host_middleware
from .keys import MONITOR
from .openapi import add_openapi_route
from .predict import add_predict_routes
from .starting import starting_guard
from .streams import add_stream_routes
from .ui import add_ui_routes
from .whip import add_whip_routes

if TYPE_CHECKING:
    from ..app import Monitor



def build_api(monitor: "Monitor") -> web.Application:
    cfg = monitor.cfg.api
    hosts = HostAllowList.for_listener(cfg.allowed_hosts, cfg.host)
    middlewares: list[Any] = [json_errors, host_middleware(hosts), auth_middleware(cfg.token),
                              starting_guard(monitor, cfg.retry_after_s)]
    app = web.Application(middlewares=middlewares, client_max_size=cfg.max_body_bytes)
    app[MONITOR] = monitor
    add_health_routes(app)
    add_stream_routes(app)
    add_predict_routes(app)
    add_ui_routes(app)
    add_history_routes(app)
    add_whip_routes(app)
    add_openapi_route(app)
    return app


def build_metrics_app(monitor: "Monitor") -> web.Application:
    hosts = HostAllowList.for_listener(monitor.cfg.api.allowed_hosts, monitor.cfg.metrics.host)
    middlewares: list[Any] = [json_errors, host_middleware(hosts)]
    app = web.Application(middlewares=middlewares)
    app[MONITOR] = monitor
    add_health_routes(app, metrics_only=True)
    return app
