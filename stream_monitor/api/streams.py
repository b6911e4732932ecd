"""``/streams``: list, add, inspect and delete streams at run time.

Alone, a worker's streams are its own. In a fleet (``fleet.enabled``) the routes act on the
fleet's desired streams in Redis, the same from any worker: ``GET /streams`` lists every
stream with its ``owner`` (``null`` while unassigned) and the owner's latest status, plus
the live ``workers``; ``POST`` adds a desired stream (201, ``"state": "unassigned"`` until
a worker claims it, usually within ``fleet.tick_s``); ``DELETE`` removes it (204 when it
stopped here or ran nowhere, 202 when its owner, another worker, stops it within a tick).
503 when Redis cannot be reached.

``POST`` takes ``{"id", "url"}`` and optionally the stream's own settings, checked like the
configuration's ``streams:`` entries (:class:`~stream_monitor.config.StreamSettings`):
``"name"`` (display name), ``"detectors"`` (a non-empty subset of ``detectors.enabled``),
``"threshold"`` (0 to 1), ``"max_fps"`` (> 0); a bad one is a 400 naming the field. The
settings in effect are part of every stream's status (``GET /streams``). Not with
``fleet.enabled`` yet (400): the fleet's desired streams hold only an id and a URL.

``POST`` is refused with 503 and ``Retry-After`` (:mod:`.limits`) when the worker runs
``api.max_streams`` streams (every stream it runs counts, WHIP publishers and configured
streams too), or in a fleet when the desired set holds ``api.max_streams`` streams.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, TypeGuard

from aiohttp import web
from pydantic import ValidationError

from ..errors import StreamExists, UnknownStream
from ..config import StreamSettings
from ..errors import SourceError, SourceRefused
from ..fleet import FleetFull, FleetUnavailable
from ..ingest.base import check_url
from ..ingest.policy import SourceGuard
from .auth import error
from .limits import AtLimit, refused, stream_cap
from .keys import MONITOR

# Always with fullmatch: re.match with "$" would take a trailing newline ("nl\n").
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Our bodies are flat objects; nesting deeper than this is refused before anything reads it.
MAX_JSON_DEPTH = 32


def is_stream_id(value: object) -> TypeGuard[str]:
    """True for a valid stream id: 1-64 of letters, digits, ``_``, ``.``, ``-``, not starting with
    one of the last three (the same rule as ``StreamConfig.id``)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests arrays and objects (a scalar is 0), without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


async def read_json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The JSON object body, or a 400/415 response saying what is wrong (400 also when it nests
    deeper than :data:`MAX_JSON_DEPTH`)."""
    if request.content_type not in ("application/json", ""):
        return error(415, f"expected application/json, got {request.content_type}")
    try:
        body = await request.json()
    except ValueError as exc:
        return error(400, f"body is not valid JSON: {exc}")
    except RecursionError:  # json.loads recurses once per nesting level
        return error(400, f"body nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(body, dict):
        return error(400, "body must be a JSON object")
    if json_depth(body) > MAX_JSON_DEPTH:
        return error(400, f"body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


SETTINGS = frozenset(StreamSettings.model_fields)


def parse_settings(fields: dict[str, Any], enabled: list[str]) -> StreamSettings | str:
    """The stream's own settings from a request body, or what is wrong with them (one line)."""
    try:
        settings = StreamSettings.model_validate(fields, strict=True)  # JSON: "0.5" is not a number
        settings.check_detectors(enabled)  # type: ignore[arg-type]
    except ValidationError as exc:
        return "; ".join(f"'{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors())
    except ValueError as exc:
        return f"'detectors': {exc}"
    return settings


async def check_source(url: str, guard: SourceGuard) -> web.Response | None:
    """None if ``url`` may become a source from the network, else the 403 (the policy refused:
    the same answer whether a host answers or a file exists) or 400 (a malformed URL, no such
    file inside the roots, a host that does not resolve). Resolves the host in a thread; the
    source checks again at every connection and redirect."""
    try:
        check_url(url, guard)
        await asyncio.to_thread(guard.check_resolved, url)
    except SourceRefused as exc:
        return error(403, str(exc))
    except SourceError as exc:
        return error(400, str(exc))
    return None


def add_stream_routes(app: web.Application) -> None:

    cap = stream_cap(app)

    async def list_streams(request: web.Request) -> web.Response:
        monitor: Any = request.app[MONITOR]
        if monitor.fleet is not None:
            try:
                return web.json_response(await monitor.fleet.view())
            except FleetUnavailable as exc:
                return error(503, str(exc))
        return web.json_response({"streams": [h.status() for h in monitor.streams.values()]})

    async def add_stream(request: web.Request) -> web.Response:
        monitor: Any = request.app[MONITOR]
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        stream_id, url = body.get("id"), body.get("url")
        if not is_stream_id(stream_id):
            return error(400, "'id' must be 1-64 characters: letters, digits, '_', '.', '-' (not first)")
        if not isinstance(url, str) or not url:
            return error(400, "'url' must be a non-empty string")
        extra = set(body) - {"id", "url"} - SETTINGS
        if extra:
            return error(400, f"unknown fields: {sorted(extra)}")
        settings = parse_settings({k: v for k, v in body.items() if k in SETTINGS}, monitor.cfg.detectors.enabled)
        if isinstance(settings, str):
            return error(400, settings)
        if monitor.fleet is not None and settings != StreamSettings():
            return error(400, "per-stream settings (name, detectors, threshold, max_fps) are not supported with "
                              "fleet.enabled yet")
        refusal = await check_source(url, monitor.source_guard)
        if refusal is not None:
            return refusal
        location = {"Location": f"/streams/{stream_id}"}
        retry_after_s = monitor.cfg.api.retry_after_s
        try:
            if monitor.fleet is not None:
                added = await monitor.fleet.add(stream_id, url, max_desired=monitor.cfg.api.max_streams)
                return web.json_response(added, status=201, headers=location)
            with cap.admit():
                handle = await monitor.add_stream(stream_id, url, settings=settings)
        except StreamExists as exc:
            return error(409, str(exc))
        except (AtLimit, FleetFull) as exc:
            return refused(exc, retry_after_s)
        except FleetUnavailable as exc:
            return error(503, str(exc))
        except SourceRefused as exc:
            return error(403, str(exc))
        return web.json_response(handle.status(), status=201, headers=location)

    async def get_stream(request: web.Request) -> web.Response:
        monitor: Any = request.app[MONITOR]
        if monitor.fleet is not None:
            try:
                fleet = await monitor.fleet.view()
            except FleetUnavailable as exc:
                return error(503, str(exc))
            found = [s for s in fleet["streams"] if s["id"] == request.match_info["id"]]
            if not found:
                return error(404, f"no stream {request.match_info['id']!r}")
            return web.json_response(found[0])
        handle = monitor.streams.get(request.match_info["id"])
        if handle is None:
            return error(404, f"no stream {request.match_info['id']!r}")
        return web.json_response(handle.status())

    async def delete_stream(request: web.Request) -> web.Response:
        monitor: Any = request.app[MONITOR]
        try:
            if monitor.fleet is not None:
                stopped = await monitor.fleet.delete(request.match_info["id"])
                return web.Response(status=204 if stopped else 202)
            await monitor.remove_stream(request.match_info["id"])
        except UnknownStream as exc:
            return error(404, str(exc))
        except FleetUnavailable as exc:
            return error(503, str(exc))
        return web.Response(status=204)

    app.router.add_get("/streams", list_streams)
    app.router.add_post("/streams", add_stream)
    app.router.add_get("/streams/{id}", get_stream)
    app.router.add_delete("/streams/{id}", delete_stream)
