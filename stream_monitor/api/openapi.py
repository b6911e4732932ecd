"""``GET /openapi.json``: an OpenAPI 3.1 description of every route of the API listener.

The document is written here by hand (aiohttp has no schema of its own) and checked against
the router by ``tests/stream_monitor/test_openapi.py``: every (method, path) the router
answers is described and every described one is routed (a ``GET`` also answers ``HEAD``).
It is served without the token, like the operator page's files: it describes the API and
holds no data. Security follows :mod:`.auth`: ``bearer`` everywhere but the open paths, and
``bearer`` or the ``access_token`` query parameter on the page's two live feeds. Schemas are
JSON Schema 2020-12 (OpenAPI 3.1's dialect).
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from .. import __version__
from .streams import _ID as STREAM_ID_RE

JSON = "application/json"
SDP = "application/sdp"

_ERROR = {"$ref": "#/components/schemas/Error"}
_STREAM_ID = {"name": "id", "in": "path", "required": True, "description": "The stream id.",
              "schema": {"$ref": "#/components/schemas/StreamId"}}
_WHIP_STREAM = {**_STREAM_ID, "name": "stream_id", "description": "The stream id the WebRTC publisher's video gets."}
_WHIP_SESSION = {"name": "session_id", "in": "path", "required": True,
                 "description": "The session id from the POST's Location (128-bit random, hex).",
                 "schema": {"type": "string"}}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
BEARER_OR_QUERY: list[dict[str, list[str]]] = [{"bearer": []}, {"access_token": []}]
OPEN: list[dict[str, list[str]]] = []


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ERROR}}}


def _json(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


_UNAUTHORIZED = _error("Missing or wrong bearer token (with WWW-Authenticate: Bearer).")
_RETRY = {"Retry-After": _header("Seconds to wait before trying again.")}
_BUSY = {"description": "At a configured limit (streams, sessions, feeds) or the fleet is unavailable.",
         "headers": _RETRY, "content": {JSON: {"schema": _ERROR}}}
_BODY_TOO_LARGE = _error("The body is larger than api.max_body_bytes.")


def _op(summary: str, responses: dict[str, Any], security: list[dict[str, list[str]]] = BEARER,
        **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, **extra, "security": security}
    if security:
        responses = {**responses, "401": _UNAUTHORIZED}
    out["responses"] = {**responses, "421": _error("The Host header is not one of api.allowed_hosts.")}
    return out


# A stream's own settings (config.StreamSettings): in POST /streams bodies and GET /streams statuses.
_SETTINGS: dict[str, Any] = {
    "name": {"type": ["string", "null"], "minLength": 1, "maxLength": 100,
             "description": "A display name (plain text)."},
    "detectors": {"type": ["array", "null"], "minItems": 1, "uniqueItems": True,
                  "items": {"enum": ["caddm", "sta", "styleflow"]},
                  "description": "The detectors that score this stream (a subset of detectors.enabled; "
                                 "unset: all)."},
    "threshold": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                  "description": "Its incidents start at this fused score (unset: alerts.threshold)."},
    "max_fps": {"type": ["number", "null"], "exclusiveMinimum": 0,
                "description": "Frames a second decoded at most (unset: ingest.max_fps)."},
}

_STREAMS_BODY = {"required": True, "content": {JSON: {"schema": {
    "type": "object", "required": ["id", "url"], "additionalProperties": False,
    "properties": {"id": {"$ref": "#/components/schemas/StreamId"},
                   "url": {"type": "string", "minLength": 1,
                           "description": "rtsp://, rtsps://, http(s):// (HLS, MP4), file paths under "
                                          "api.source_roots, synthetic: (README: sources)"},
                   **_SETTINGS}}}}}

_PATHS: dict[str, dict[str, Any]] = {
    "/healthcheck": {"get": _op("Liveness: the process answers.", {
        "200": _json("Alive.", {"type": "object", "required": ["healthy"],
                                "properties": {"healthy": {"const": True}}})}, OPEN)},
    "/readyz": {"get": _op("Readiness, with the reasons when not ready.", {
        "200": _json("Ready.", {"type": "object", "required": ["ready"], "properties": {"ready": {"const": True}}}),
        "503": _json("Not ready.", {"type": "object", "required": ["ready", "reasons"],
                                    "properties": {"ready": {"const": False},
                                                   "reasons": {"type": "array", "items": {"type": "string"}}}})})},
    "/metrics": {"get": _op("Prometheus metrics (text exposition format 0.0.4).", {
        "200": {"description": "The metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}}, OPEN)},
    "/openapi.json": {"get": _op("This document.", {
        "200": _json("The OpenAPI 3.1 description of the API.", {"type": "object"})}, OPEN)},
    "/streams": {
        "get": _op("The streams this worker runs (with fleet.enabled: the fleet's desired streams).", {
            "200": _json("The streams.", {"type": "object", "required": ["streams"], "properties": {
                "streams": {"type": "array", "items": {"$ref": "#/components/schemas/Stream"}}}}),
            "503": _BUSY}),
        "post": _op("Start analysing a stream.", {
            "201": _json("Added.", {"$ref": "#/components/schemas/Stream"},
                         {"Location": _header("/streams/{id}")}),
            "400": _error("Malformed body: bad id, empty url, unknown fields, not a JSON object."),
            "403": _error("The source is refused by the source policy (api.source_*)."),
            "409": _error("A stream with this id exists."),
            "413": _BODY_TOO_LARGE,
            "415": _error("The content type is not application/json."),
            "503": _BUSY}, requestBody=_STREAMS_BODY)},
    "/streams/{id}": {
        "parameters": [_STREAM_ID],
        "get": _op("One stream's status.", {
            "200": _json("The stream.", {"$ref": "#/components/schemas/Stream"}),
            "404": _error("No such stream."), "503": _BUSY}),
        "delete": _op("Stop a stream (its final windows are scored and open incidents ended).", {
            "202": {"description": "Stopping (still finishing its final windows)."},
            "204": {"description": "Stopped."},
            "404": _error("No such stream."), "503": _BUSY})},
    "/streams/{id}/live.mjpeg": {
        "parameters": [_STREAM_ID],
        "get": _op("The stream's last analysed frame as MJPEG (multipart/x-mixed-replace), until the client "
                   "leaves.", {
                       "200": {"description": "The feed.", "content": {"multipart/x-mixed-replace": {
                           "schema": {"type": "string", "contentMediaType": "image/jpeg"}}}},
                       "404": _error("No such stream."), "503": _BUSY}, BEARER_OR_QUERY)},
    "/events": {"get": _op(
        "Server-Sent Events for the operator page: config, streams, live, alert, feed.", {
            "200": {"description": "The event stream, until the client leaves.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "503": _BUSY}, BEARER_OR_QUERY,
        parameters=[{"name": "stream", "in": "query", "required": False,
                     "description": "Limit `live` events to this stream.", "schema": {"type": "string"}}])},
    "/predict": {"post": _op("Score one video file (under api.predict_roots) or an allowed URL.", {
        "200": _json("Per-detector and fused scores of the video.", {"type": "object"}),
        "400": _error("Malformed body or URL."),
        "403": _error("Refused by the predict policy (api.predict_*)."),
        "413": _BODY_TOO_LARGE,
        "415": _error("The content type is not application/json."),
        "422": _error("The video cannot be read.")},
        requestBody={"required": True, "content": {JSON: {"schema": {
            "type": "object", "required": ["file_path"],
            "properties": {"file_path": {"type": "string", "minLength": 1,
                                         "description": "A local path or an http(s) URL."}}}}}})},
    "/": {"get": _op("The operator page (HTML; it asks for the token when the API answers 401).", {
        "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}}, OPEN)},
    "/static/{path}": {
        "parameters": [{"name": "path", "in": "path", "required": True, "description": "A file of the page.",
                        "schema": {"type": "string"}}],
        "get": _op("The operator page's scripts and styles.", {
            "200": {"description": "The file."}, "403": _error("Outside the static folder."),
            "404": _error("No such file.")}, OPEN)},
    "/alerts": {"get": _op(
        "The alert history, newest first: the Redis Stream (every worker's alerts) or, without Redis, this "
        "worker's latest 1000.", {
            "200": _json("The alert events.", {"type": "object", "required": ["alerts", "source"], "properties": {
                "alerts": {"type": "array", "items": {"type": "object",
                                                       "description": "An alert event (README: alert schema)."}},
                "source": {"enum": ["redis", "local"]}}}),
            "400": _error("A bad stream, since or limit."),
            "503": _error("Redis is unreachable.")},
        parameters=[
            {"name": "stream", "in": "query", "required": False, "description": "Only this stream's events.",
             "schema": {"$ref": "#/components/schemas/StreamId"}},
            {"name": "since", "in": "query", "required": False,
             "description": "Only events at or after this time: epoch milliseconds or ISO 8601 with a zone.",
             "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "required": False, "description": "At most this many (default 50).",
             "schema": {"type": "integer", "minimum": 1, "maximum": 500}}])},
    "/evidence/{name}": {
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "description": "A file named by an alert event's evidence URLs.",
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,64}-[0-9]{1,9}-(frame|faces)\\.jpg$"}}],
        "get": _op("An incident's evidence: the frame with the face's box, or the strip of the window's face "
                   "crops.", {
                       "200": {"description": "The JPEG.", "content": {"image/jpeg": {
                           "schema": {"type": "string", "contentMediaType": "image/jpeg"}}}},
                       "404": _error("No such file (pruned, never written, or alerts.evidence_dir unset).")})},
    "/whip/{stream_id}": {
        "parameters": [_WHIP_STREAM],
        "post": _op("WHIP (RFC 9725): publish a WebRTC video as a stream; the body is the SDP offer with every "
                    "candidate (no trickle ICE).", {
                        "201": {"description": "The SDP answer.", "content": {SDP: {"schema": {"type": "string"}}},
                                "headers": {"Location": _header("/whip/{stream_id}/{session_id}"),
                                            "ETag": _header("The ICE session's entity tag.")}},
                        "400": _error("Bad stream id, not UTF-8, or an offer that cannot be ingested."),
                        "409": _error("A stream with this id is live."),
                        "413": _BODY_TOO_LARGE,
                        "415": _error("The content type is not application/sdp (Accept-Post says which is)."),
                        "503": _BUSY},
                    requestBody={"required": True, "content": {SDP: {"schema": {"type": "string"}}}}),
        "get": _op("No representation (RFC 9725 §4.1).", {"204": {"description": "No content."}}),
        "options": _op("The methods of the endpoint.", {
            "200": {"description": "Allowed methods.", "headers": {
                "Allow": _header("GET, HEAD, OPTIONS, POST"), "Accept-Post": _header("application/sdp")}}})},
    "/whip/{stream_id}/{session_id}": {
        "parameters": [_WHIP_STREAM, _WHIP_SESSION],
        "get": _op("No representation (RFC 9725 §4.1).", {"204": {"description": "No content."}}),
        "delete": _op("End the WHIP session; answers once its stream has finished.", {
            "200": {"description": "Ended."}, "404": _error("No such session (never created, or already ended).")}),
        "patch": _op("Trickle ICE and ICE restarts are not supported.", {
            "405": {"description": "Not allowed.", "headers": {"Allow": _header("GET, HEAD, OPTIONS, DELETE")},
                    "content": {JSON: {"schema": _ERROR}}}}),
        "options": _op("The methods of the session.", {
            "200": {"description": "Allowed methods.", "headers": {"Allow": _header("GET, HEAD, OPTIONS, DELETE")}}})},
}

_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "api.token (STREAM_MONITOR_API_TOKEN); without one configured, nothing is "
                                  "required."},
        "access_token": {"type": "apiKey", "in": "query", "name": "access_token",
                         "description": "The same token as a query parameter: only GET/HEAD of /events and "
                                        "live.mjpeg (a browser's EventSource and <img> cannot set headers)."},
    },
    "schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "StreamId": {"type": "string", "pattern": f"^{STREAM_ID_RE.pattern}$"},
        "Stream": {"type": "object", "required": ["id", "url"], "properties": {
            "id": {"$ref": "#/components/schemas/StreamId"}, "url": {"type": "string"},
            "transport": {"type": "string"}, "faces": {"type": "integer"}, "tracks": {"type": "integer"},
            "frames_analysed": {"type": "integer"}, "windows": {"type": "integer"}, "alerts": {"type": "integer"},
            "last_scores": {"type": "object", "additionalProperties": {"type": "number"}},
            "inference_errors": {"type": "integer"}, "last_inference_error": {"type": ["string", "null"]},
            **_SETTINGS},
            "description": "Also the supervisor's state (connected, reconnects, errors) and, with "
                           "fleet.enabled, the owning worker."},
    },
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh copy: callers may change it)."""
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {"title": "stream-monitor API", "version": __version__,
                 "description": "Real-time deepfake monitor: streams, predictions, the operator page's feeds, "
                                "WHIP ingest. Errors are JSON {\"error\": ...}. Every GET also answers HEAD."},
        "servers": [{"url": "/"}],
        "paths": _PATHS,
        "components": _COMPONENTS,
    })


def add_openapi_route(app: web.Application) -> None:
    """``GET /openapi.json`` (open: see :mod:`.auth`)."""
    body = openapi_document()

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(body)

    app.router.add_get("/openapi.json", openapi)
