"""The application keys of the API's ``web.Application``s (a module of its own, so the route
modules import them at the top instead of from the package that imports them)."""

from __future__ import annotations

from aiohttp import web

# The Monitor the routes act on (stream_monitor.app.Monitor; typed as object: the key is read
# with a cast where it is used, and app.py stays out of the API's imports at run time).
MONITOR = web.AppKey("monitor", object)
