"""WHIP (RFC 9725) ingest: ``/whip/{stream_id}`` creates sessions, ``/whip/{stream_id}/{session}`` ends them.

``POST /whip/{stream_id}`` with ``Content-Type: application/sdp`` and the publisher's offer
(all candidates gathered: trickle ICE is not supported):

- ``201 Created``: the SDP answer (``application/sdp``, every local candidate included),
  ``Location: /whip/{stream_id}/{session}`` (a 128-bit random id, as RFC 9725 §5 asks) and
  ``ETag`` (the ICE session's entity tag);
- ``400`` the stream id is malformed, the body is not UTF-8, or the offer cannot be ingested
  (not SDP, no video sent, more than one video track, no VP8/H.264; the error says which);
- ``401`` missing or wrong bearer token (the API's middleware);
- ``409`` a stream with that id is live (added by URL, or another WHIP session);
- ``413`` the body is larger than ``api.max_body_bytes`` (aiohttp);
- ``415`` any other content type (with ``Accept-Post: application/sdp``);
- ``503`` with ``Retry-After`` when ``webrtc.max_sessions`` sessions run (RFC 9725 §4.5),
  or when the worker runs ``api.max_streams`` streams of any kind (:mod:`.limits`; a WHIP
  publisher is a stream like the others).

``DELETE /whip/{stream_id}/{session}``: ``200`` once the session is ended and its stream has
finished (final windows scored, incidents' end events sent; bounded wait), ``404`` if there
is no such session (never created, or already ended).

``PATCH`` on a session: ``405 Method Not Allowed`` with ``Allow``. RFC 9725 §4.3.1 only
prescribes ``422`` for a server that supports one of trickle ICE and ICE restarts but not
the other; a server that supports neither does not support the method on the resource,
which RFC 9110 §15.5.6 answers with 405 and an ``Allow`` header.

``OPTIONS`` on either URL: ``200`` with ``Allow`` and, on the endpoint, ``Accept-Post:
application/sdp`` (RFC 9725 §4.2). No CORS headers: the operator page publishes from the
same origin, so every WHIP request, OPTIONS included, needs the bearer token when one is
configured (RFC 9725 §4.7 exempts only CORS preflights). ``GET`` on either URL: ``204`` (RFC 9725 §4.1: the resources have no
representation). Other methods: ``405`` with ``Allow`` (aiohttp's router).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ..errors import StreamExists
from ..fleet import FleetUnavailable
from ..ingest.sdp import BadOffer
from .auth import error
from .limits import AtLimit, refused, stream_cap
from .streams import is_stream_id
from .whip_sessions import AtCapacity, WhipSessions
from .keys import MONITOR

log = logging.getLogger(__name__)

WHIP_SESSIONS = web.AppKey("whip_sessions", WhipSessions)
SDP = "application/sdp"
ENDPOINT_METHODS = "GET, HEAD, OPTIONS, POST"
SESSION_METHODS = "GET, HEAD, OPTIONS, DELETE"


def add_whip_routes(app: web.Application) -> None:
    """Add the WHIP routes; the sessions are ended when the app shuts down (``Monitor.stop``)."""

    monitor: Any = app[MONITOR]
    sessions = WhipSessions(monitor, monitor.cfg.webrtc)
    app[WHIP_SESSIONS] = sessions
    cap = stream_cap(app)

    async def publish(request: web.Request) -> web.Response:
        stream_id = request.match_info["stream_id"]
        if not is_stream_id(stream_id):
            return error(400, "the stream id must be 1-64 characters: letters, digits, '_', '.', '-' (not first)")
        if request.content_type != SDP:
            return error(415, f"expected Content-Type {SDP}, got {request.content_type or 'none'}",
                         {"Accept-Post": SDP})
        try:
            offer = (await request.read()).decode("utf-8")
        except UnicodeDecodeError:
            return error(400, "the SDP offer is not UTF-8 text")
        try:
            with cap.admit():
                session = await sessions.create(stream_id, offer)
        except AtLimit as exc:
            return refused(exc, monitor.cfg.api.retry_after_s)
        except AtCapacity as exc:
            return error(503, str(exc), {"Retry-After": str(monitor.cfg.webrtc.retry_after_s)})
        except StreamExists as exc:
            return error(409, str(exc))
        except FleetUnavailable as exc:  # the id cannot be leased fleet-wide now
            return error(503, str(exc), {"Retry-After": str(monitor.cfg.webrtc.retry_after_s)})
        except BadOffer as exc:
            log.info("WHIP %s: bad offer: %s", stream_id, exc)
            return error(400, str(exc))
        return web.Response(status=201, text=session.answer, content_type=SDP,
                            headers={"Location": session.location, "ETag": session.etag})

    async def endpoint_options(request: web.Request) -> web.Response:
        return web.Response(status=200, headers={"Allow": ENDPOINT_METHODS, "Accept-Post": SDP})

    async def end(request: web.Request) -> web.Response:
        session = sessions.get(request.match_info["stream_id"], request.match_info["session_id"])
        if session is None:
            return error(404, "no such WHIP session (never created, or already ended)")
        await sessions.end(session, "the publisher sent DELETE")
        return web.Response(status=200)

    async def patch(request: web.Request) -> web.Response:
        return error(405, "trickle ICE and ICE restarts are not supported: gather all candidates before the POST",
                     {"Allow": SESSION_METHODS})

    async def session_options(request: web.Request) -> web.Response:
        return web.Response(status=200, headers={"Allow": SESSION_METHODS})

    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def shutdown(app: web.Application) -> None:
        await sessions.close_all()

    app.router.add_post("/whip/{stream_id}", publish)
    app.router.add_get("/whip/{stream_id}", no_content)
    app.router.add_get("/whip/{stream_id}/{session_id}", no_content)
    app.router.add_route("OPTIONS", "/whip/{stream_id}", endpoint_options)
    app.router.add_delete("/whip/{stream_id}/{session_id}", end)
    app.router.add_patch("/whip/{stream_id}/{session_id}", patch)
    app.router.add_route("OPTIONS", "/whip/{stream_id}/{session_id}", session_options)
    app.on_shutdown.append(shutdown)
