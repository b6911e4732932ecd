"""Bearer-token authentication and JSON error bodies.

The token travels in ``Authorization: Bearer <token>`` (RFC 6750 §2.1). Browsers cannot set
that header on ``<img>`` or ``EventSource`` requests, so the operator page's two live feeds,
``GET``/``HEAD`` ``/events`` and ``/streams/{id}/live.mjpeg``, may pass it as the
``access_token`` query parameter instead (RFC 6750 §2.3; the header wins when both are
present). Every other route, and every request that changes state, accepts the header only:
a token in a URL (which ends up in browser history and proxy logs) can neither be replayed
to change anything nor read the API's data. The service logs no request URLs
(``access_log=None``), so a query token is not written to its own logs.

A presented token is compared with :func:`hmac.compare_digest` on bytes; one that is not
valid text (raw non-UTF-8 bytes in the header, undecodable percent-escapes) is simply wrong.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# /openapi.json describes the API and holds no data (as the page's files).
OPEN_PATHS = frozenset({"/healthcheck", "/metrics", "/openapi.json", "/"})
# The operator page's files hold no data: the page asks for the token when the API answers 401.
OPEN_PREFIXES = ("/static/",)
_QUERY_TOKEN_METHODS = frozenset({"GET", "HEAD"})
# The routes (aiohttp's canonical templates) a browser opens without custom headers.
QUERY_TOKEN_ROUTES = frozenset({"/events", "/streams/{id}/live.mjpeg"})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def auth_middleware(token: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Require the bearer token (see the module docstring) on everything but the open paths."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and not is_open(request.path):
            if not token_matches(presented_token(request), token):
                return error(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="stream-monitor"'})
        return await handler(request)

    return middleware


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of UTF-8 bytes. aiohttp keeps undecodable header bytes as
    surrogate escapes, which strict UTF-8 cannot encode: such a token is wrong, not an error."""
    if given is None:
        return False
    try:
        presented = given.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(presented, token.encode("utf-8"))


def is_open(path: str) -> bool:
    """Paths served without a token: health, metrics and the operator page's own files.
    A path with dot segments is never open (``/static/../streams`` must not escape)."""
    if path in OPEN_PATHS:
        return True
    return path.startswith(OPEN_PREFIXES) and not any(seg in (".", "..") for seg in path.split("/"))


def presented_token(request: web.Request) -> str | None:
    """The bearer token the request carries, or None: the ``Authorization`` header, else
    (``GET``/``HEAD`` of the :data:`QUERY_TOKEN_ROUTES` only) the ``access_token`` query parameter."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    if request.method in _QUERY_TOKEN_METHODS and _route(request) in QUERY_TOKEN_ROUTES:
        return request.query.get("access_token")
    return None


def _route(request: web.Request) -> str | None:
    """The matched route's template (``/streams/{id}/live.mjpeg``), None when nothing matched."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


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
        log.exception("unhandled error on %s %r", request.method, request.path)  # %r: no forged lines
        return error(500, "internal error (see the server log)")
