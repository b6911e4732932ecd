"""``GET /alerts`` (the alert history) and ``GET /evidence/{name}`` (an incident's JPEGs).

``GET /alerts?stream=&since=&limit=``: alert events, newest first, as
``{"alerts": [payload, ...], "source": "redis"|"local"}``.

- With ``redis.url`` set they come from the Redis Stream ``{prefix}:alerts`` (every worker's,
  as delivered) by ``XREVRANGE``, read in pages of :data:`PAGE` entries and at most
  :data:`MAX_SCAN` entries per request (a ``stream`` filter that matches little stops there).
  Redis unreachable: ``503`` with the reason (the history is Redis's; this worker's memory
  would silently show a different one).
- Without Redis: this worker's latest alerts since it started (at most 1000, in memory).
- ``stream``: only that stream's events (a stream id). ``since``: only events at or after
  this time, epoch milliseconds (``1733530000000``) or ISO 8601 with a time zone
  (``2026-12-07T00:00:00Z``); for Redis it is the entry id's time (when Redis took the event),
  otherwise ``emitted_at``. ``limit``: 1 to :data:`MAX_LIMIT` (default :data:`DEFAULT_LIMIT`).
  Anything else is a ``400`` that says what is wrong.

``GET /evidence/{name}``: a file named by an event's ``evidence`` URLs (``image/jpeg``),
behind the same token as the rest of the API (header only). Names not of the evidence form
and files outside ``alerts.evidence_dir`` are ``404``, like files that were pruned; ``404``
also when evidence is off.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from redis.exceptions import RedisError

from ..redis_client import redis_client
from .auth import error
from .streams import is_stream_id
from .keys import MONITOR

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..app import Monitor

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
PAGE = 500
MAX_SCAN = 20_000
_REDIS = web.AppKey("history_redis", object)


class BadQuery(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def parse_since(text: str) -> int:
    """``since`` as epoch milliseconds: digits (milliseconds) or ISO 8601 with a time zone."""
    if text.isdigit() and len(text) <= 15:
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadQuery(f"'since' must be epoch milliseconds or an ISO 8601 time, not {text[:40]!r}") from None
    if when.tzinfo is None:
        raise BadQuery("'since' needs a time zone (e.g. 2026-12-07T00:00:00Z)")
    return max(0, round(when.timestamp() * 1000))


def parse_query(query: Any) -> tuple[str | None, int | None, int]:
    """(stream, since in ms, limit) from the request's query, or :class:`BadQuery`."""
    extra = set(query) - {"stream", "since", "limit"}
    if extra:
        raise BadQuery(f"unknown parameters: {sorted(extra)}")
    stream = query.get("stream")
    if stream is not None and not is_stream_id(stream):
        raise BadQuery("'stream' must be a stream id: 1-64 letters, digits, '_', '.', '-' (not first)")
    since = parse_since(query["since"]) if "since" in query else None
    raw = query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadQuery(f"'limit' must be a whole number from 1 to {MAX_LIMIT}")
    return stream, since, int(raw)


def _iso_ms(text: Any) -> int | None:
    try:
        return round(dt.datetime.fromisoformat(str(text)).timestamp() * 1000)
    except ValueError:
        return None


def local_history(payloads: list[dict[str, Any]], stream: str | None, since: int | None,
                  limit: int) -> list[dict[str, Any]]:
    """The in-memory payloads (oldest first) filtered, newest first."""
    out = []
    for payload in reversed(payloads):
        if stream is not None and payload.get("stream_id") != stream:
            continue
        if since is not None and ((ms := _iso_ms(payload.get("emitted_at"))) is None or ms < since):
            continue
        out.append(payload)
        if len(out) == limit:
            break
    return out


async def redis_history(client: "aioredis.Redis", key: str, stream: str | None, since: int | None,
                        limit: int) -> list[dict[str, Any]]:
    """Newest first from the Redis Stream ``key`` by XREVRANGE, at most :data:`MAX_SCAN` entries read."""
    out: list[dict[str, Any]] = []
    upper, lower, scanned = "+", "-" if since is None else str(since), 0
    while len(out) < limit and scanned < MAX_SCAN:
        entries: list[Any] = await client.xrevrange(key, max=upper, min=lower, count=PAGE) or []
        for _, fields in entries:
            try:
                payload = json.loads(fields[b"alert"])
            except (KeyError, TypeError, ValueError):
                continue  # not one of ours: the key is shared with nothing else, but never fail on it
            if isinstance(payload, dict) and (stream is None or payload.get("stream_id") == stream):
                out.append(payload)
                if len(out) == limit:
                    break
        scanned += len(entries)
        if len(entries) < PAGE:
            break
        last = entries[-1][0]
        upper = "(" + (last.decode() if isinstance(last, bytes) else str(last))  # exclusive: the next page starts below the last id
    return out


def add_history_routes(app: web.Application) -> None:

    monitor = cast("Monitor", app[MONITOR])

    async def alerts(request: web.Request) -> web.Response:
        try:
            stream, since, limit = parse_query(request.query)
        except BadQuery as exc:
            return error(400, str(exc))
        if monitor.cfg.redis.url is None:
            found = local_history(list(monitor.recent.payloads), stream, since, limit)
            return web.json_response({"alerts": found, "source": "local"})
        client = cast("aioredis.Redis", request.app[_REDIS])
        try:
            found = await redis_history(client, f"{monitor.cfg.redis.prefix}:alerts", stream, since, limit)
        except (RedisError, OSError) as exc:
            return error(503, f"the alert history (Redis) is unavailable: {type(exc).__name__}: {exc}",
                         {"Retry-After": str(monitor.cfg.api.retry_after_s)})
        return web.json_response({"alerts": found, "source": "redis"})

    async def evidence(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        store = monitor.evidence
        path = store.path(name) if store is not None else None
        if path is None:
            return error(404, f"no evidence {name[:80]!r}" if store is not None
                         else "evidence is off (alerts.evidence_dir is not set)")
        return web.FileResponse(path, headers={"Content-Type": "image/jpeg", "Cache-Control": "private, max-age=3600",
                                               "X-Content-Type-Options": "nosniff"})

    async def close_redis(app: web.Application) -> None:
        client = app.get(_REDIS)
        if client is not None:
            await cast("aioredis.Redis", client).aclose()

    if monitor.cfg.redis.url is not None:
        app[_REDIS] = redis_client(monitor.cfg.redis.url, socket_timeout=2.0, socket_connect_timeout=2.0)
        app.on_cleanup.append(close_redis)
    app.router.add_get("/alerts", alerts)
    app.router.add_get("/evidence/{name}", evidence)
