"""While the models load, the API answers but changes nothing.

``Monitor.start`` serves HTTP before ``engine.load`` so that ``/healthcheck`` and ``/readyz``
(503, reason ``starting``) answer from the first seconds. Until the engine is loaded (the
monitor has its alert policy), a request that would use it (any method but GET, HEAD and
OPTIONS: adding a stream, ``/predict``, a WHIP offer) gets ``503`` with ``Retry-After``.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web

from .auth import error

_READ_ONLY = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def starting_guard(monitor: Any, retry_after_s: float) -> Any:
    """The middleware refusing changes until ``monitor.policy`` exists (the models are loaded)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if monitor.policy is None and request.method not in _READ_ONLY:
            return error(503, "starting: the models are still loading", {"Retry-After": f"{retry_after_s:g}"})
        return await handler(request)

    return guard
