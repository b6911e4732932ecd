"""The ``Host`` check in front of every route of the API and the metrics listener.

A request whose ``Host`` header is not in the listener's allow-list
(:class:`~stream_monitor.host_allowlist.HostAllowList`: ``api.allowed_hosts`` plus the bind
address) gets ``421 Misdirected Request`` (RFC 9110 §15.5.20: this server is not configured
to answer for that authority) with a JSON error, before authentication and before any
handler runs, so a page that reached a loopback server by DNS rebinding reads nothing,
``/healthcheck`` and ``/metrics`` included.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import hdrs, web

from ..host_allowlist import HostAllowList
from .auth import Handler, error

Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def host_middleware(allowed: HostAllowList) -> Middleware:
    """Refuse (421) requests whose ``Host`` header ``allowed`` does not allow."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The raw header: request.host would fall back to the socket's own address when it is absent.
        if not allowed.allows(request.headers.get(hdrs.HOST)):
            return error(421, "this server does not answer for that Host (see api.allowed_hosts)")
        return await handler(request)

    return middleware
