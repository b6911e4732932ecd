"""Bearer-token authentication and JSON error bodies.

The token travels in ``Authorization: Bearer <token>`` (RFC 6750 §2.1). Browsers cannot set
that header on ``<img>`` or ``EventSource`` requests, so for ``GET``/``HEAD`` the operator
page's live feeds may pass it as the ``access_token`` query parameter instead (RFC 6750 §2.3;
the header wins when both are present). Requests that change state (POST, DELETE, ...)
accept the header only, so a token in a URL can never be replayed to change anything. The
service logs no request URLs (``access_log=None``), so a query token is not written to logs.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthcheck", "/metrics", "/"})
# The operator page's files hold no data: the page asks for the token when the API answers 401.
OPEN_PREFIXES = ("/static/",)
_QUERY_TOKEN_METHODS = frozenset({"GET", "HEAD"})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def auth_middleware(token: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Require the bearer token (see the module docstring) on everything but the open paths."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and not is_open(request.path):
            given = presented_token(request)
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                return error(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="stream-monitor"'})
        return await handler(request)

    return middleware


def is_open(path: str) -> bool:
    """Paths served without a token: health, metrics and the operator page's own files.
    A path with dot segments is never open (``/static/../streams`` must not escape)."""
    if path in OPEN_PATHS:
        return True
    return path.startswith(OPEN_PREFIXES) and not any(seg in (".", "..") for seg in path.split("/"))


def presented_token(request: web.Request) -> str | None:
    """The bearer token the request carries, or None: the ``Authorization`` header, else
    (``GET``/``HEAD`` only) the ``access_token`` query parameter."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    if request.method in _QUERY_TOKEN_METHODS:
        return request.query.get("access_token")
    return None


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
