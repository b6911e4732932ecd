"""``/healthcheck`` (liveness), ``/readyz`` (readiness with reasons), ``/metrics``."""

from __future__ import annotations

from aiohttp import web

from ..metrics import CONTENT_TYPE
from .keys import MONITOR


def add_health_routes(app: web.Application, metrics_only: bool = False) -> None:

    async def healthcheck(request: web.Request) -> web.Response:
        return web.json_response({"healthy": True})

    async def metrics(request: web.Request) -> web.Response:
        body = request.app[MONITOR].metrics.render()  # type: ignore[attr-defined]
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def readyz(request: web.Request) -> web.Response:
        problems = request.app[MONITOR].problems()  # type: ignore[attr-defined]
        if problems:
            return web.json_response({"ready": False, "reasons": problems}, status=503)
        return web.json_response({"ready": True})

    app.router.add_get("/healthcheck", healthcheck)
    app.router.add_get("/metrics", metrics)
    if not metrics_only:
        app.router.add_get("/readyz", readyz)
