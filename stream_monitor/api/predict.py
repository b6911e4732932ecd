"""``POST /predict {"file_path": ...}``: score one local video or an allowed URL.

Refused before any file is opened or any connection is made: local paths outside the
configured roots (symlinks resolved), URLs whose scheme or host is not allowed (no hosts
are allowed unless configured), and malformed bodies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..config import ApiConfig
from ..errors import SourceError
from ..predict import predict_video
from .auth import error
from .streams import read_json_object


def check_target(target: str, cfg: ApiConfig) -> tuple[int, str] | None:
    """``None`` if allowed, else ``(status, reason)``. Never touches the network."""
    if "://" in target:
        parts = urlsplit(target)
        if parts.scheme.lower() not in {s.lower() for s in cfg.predict_schemes}:
            return 403, f"URL scheme {parts.scheme!r} is not allowed (allowed: {', '.join(cfg.predict_schemes)})"
        host = (parts.hostname or "").lower()
        if not host or host not in {h.lower() for h in cfg.predict_hosts}:
            return 403, f"URL host {host or '(none)'!r} is not in api.predict_hosts"
        return None
    if not cfg.predict_roots:
        return 403, "local files are not allowed: api.predict_roots is empty"
    path = Path(os.path.realpath(target))
    roots = [Path(os.path.realpath(r)) for r in cfg.predict_roots]
    if not any(path == r or r in path.parents for r in roots):
        return 403, "path is outside api.predict_roots"
    if not path.is_file():
        return 400, f"no such file: {target}"
    return None


def add_predict_routes(app: web.Application) -> None:
    from . import MONITOR

    async def predict(request: web.Request) -> web.Response:
        monitor: Any = request.app[MONITOR]
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        target = body.get("file_path")
        if not isinstance(target, str) or not target.strip():
            return error(400, "'file_path' must be a non-empty string")
        refusal = check_target(target, monitor.cfg.api)
        if refusal is not None:
            return error(*refusal)
        try:
            result = await predict_video(monitor.engine, monitor.cfg, target)
        except SourceError as exc:
            return error(422, str(exc))
        return web.json_response(result)

    app.router.add_post("/predict", predict)
