"""``POST /predict {"file_path": ...}``: score one local video or an allowed URL.

Targets go through the monitor's ``predict_guard`` (:mod:`stream_monitor.ingest.policy`):
refused with 403, before any file is opened or any connection is made, are local paths
outside ``api.predict_roots`` (symlinks resolved; opened as resolved, no link followed),
URLs whose scheme is not in ``api.predict_schemes`` or whose host (after DNS, and on every
redirect and playlist entry) is not in ``api.predict_hosts`` (none unless configured).
Malformed bodies and URLs get 400.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import SourceError, SourceRefused
from ..predict import predict_video
from .auth import error
from .streams import check_source, read_json_object
from .keys import MONITOR


def add_predict_routes(app: web.Application) -> None:

    async def predict(request: web.Request) -> web.Response:
        monitor: Any = request.app[MONITOR]
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        target = body.get("file_path")
        if not isinstance(target, str) or not target.strip():
            return error(400, "'file_path' must be a non-empty string")
        refusal = await check_source(target, monitor.predict_guard)
        if refusal is not None:
            return refusal
        try:
            result = await predict_video(monitor.engine, monitor.cfg, target, monitor.predict_guard)
        except SourceRefused as exc:  # a redirect or playlist entry the policy does not allow
            return error(403, str(exc))
        except SourceError as exc:
            return error(422, str(exc))
        return web.json_response(result)

    app.router.add_post("/predict", predict)
