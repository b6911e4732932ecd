"""Bearer-token authentication and JSON error bodies."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthcheck", "/metrics"})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def auth_middleware(token: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Require ``Authorization: Bearer <token>`` on everything but the open paths."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                return error(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="stream-monitor"'})
        return await handler(request)

    return middleware


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTTP errors into JSON bodies and unexpected errors into a logged 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error(exc.status, exc.reason, allow)
    except json.JSONDecodeError as exc:
        return error(400, f"body is not valid JSON: {exc}")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal error (see the server log)")
