"""The operator page: ``GET /`` (the page), ``/static/*`` (its script and style) and
``GET /streams/{id}/live.mjpeg`` (the stream's newest analysed frame as Motion JPEG).

The page is plain HTML, CSS and JavaScript in ``static/`` (no build step). It holds no data,
so ``/`` and ``/static/`` are served without a token (see :mod:`.auth`); everything it shows
comes from the token-protected ``/streams``, ``/events`` (:mod:`.events`) and the MJPEG feed.

``live.mjpeg`` is ``multipart/x-mixed-replace`` (what ``<img>`` plays natively) of
``pipeline.last_frame``: at most :data:`MJPEG_MAX_FPS` parts a second, a part only when a new
frame was analysed, each frame JPEG-encoded once in a worker thread however many viewers
watch (:class:`JpegCache`). It ends when the client leaves, when the stream ends or is
removed (a stream started again under the same id needs a new request), or when the server
shuts down. The frame is the one whose faces ``/events`` ``live`` events describe, so boxes
drawn from those events line up with the picture. At most ``api.max_mjpeg_clients`` feeds are
open at once (all streams together); beyond, ``503`` with ``Retry-After`` (:mod:`.limits`).
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, cast

import cv2
import numpy as np
from aiohttp import web

from ..pipeline import StreamPipeline
from ..types import Frame
from .auth import error
from .events import CLOSING, add_event_routes
from .limits import Slots, within
from .keys import MONITOR

if TYPE_CHECKING:
    from ..app import Monitor, StreamHandle

STATIC_DIR = Path(__file__).with_name("static")
MJPEG_MAX_FPS = 10.0
JPEG_QUALITY = 75
MAX_JPEG_WIDTH = 960  # wider frames are scaled down: the page shows them at about this size
_BOUNDARY = "frame"
# The page loads only its own files; the token it keeps in sessionStorage must not leak to
# other origins through a script or a connection. img-src blob: shows the evidence JPEGs, which
# the page fetches with the token in a header (never in their URLs).
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
                                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def encode_jpeg(image: np.ndarray) -> bytes:
    """uint8 RGB ``[H, W, 3]`` → JPEG bytes, at most :data:`MAX_JPEG_WIDTH` wide.
    CPU work: call it in a thread, never on the event loop."""
    height, width = image.shape[:2]
    if width > MAX_JPEG_WIDTH:
        size = (MAX_JPEG_WIDTH, max(1, round(height * MAX_JPEG_WIDTH / width)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a {width}x{height} frame")
    return bytes(buf)


class JpegCache:
    """The newest frame's JPEG per stream, so N viewers cost one encode per frame, not N.
    Keyed weakly by the stream's pipeline: an entry goes when its stream is dropped."""

    def __init__(self) -> None:
        self._last: weakref.WeakKeyDictionary[StreamPipeline, tuple[Frame, asyncio.Future[bytes]]] = (
            weakref.WeakKeyDictionary())

    async def jpeg(self, pipeline: StreamPipeline, frame: Frame) -> bytes:
        entry = self._last.get(pipeline)
        if entry is None or entry[0] is not frame:
            entry = (frame, asyncio.ensure_future(asyncio.to_thread(encode_jpeg, frame.image)))
            self._last[pipeline] = entry
        # shield: a viewer that leaves mid-encode must not cancel the encode others wait on.
        return await asyncio.shield(entry[1])


JPEGS = web.AppKey("ui_jpegs", JpegCache)


def _part(jpeg: bytes) -> bytes:
    head = f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return head + jpeg + b"\r\n"


def add_ui_routes(app: web.Application) -> None:
    """The page, its static files, the MJPEG feed and ``/events``."""

    monitor = cast("Monitor", app[MONITOR])
    slots = Slots(monitor.cfg.api.max_mjpeg_clients, "live.mjpeg feeds (api.max_mjpeg_clients)")

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    async def live_mjpeg(request: web.Request) -> web.StreamResponse:
        stream_id = request.match_info["id"]
        handle = monitor.streams.get(stream_id)
        if handle is None:
            return error(404, f"no stream {stream_id!r}")
        headers = {"Content-Type": f"multipart/x-mixed-replace; boundary={_BOUNDARY}", "Cache-Control": "no-store",
                   "X-Content-Type-Options": "nosniff"}
        if request.method == "HEAD":
            return web.Response(headers=headers)  # no body: never enter the endless loop
        return await within(slots, monitor.cfg.api.retry_after_s, lambda: feed(request, handle, headers))

    async def feed(request: web.Request, handle: "StreamHandle", headers: dict[str, str]) -> web.StreamResponse:
        stream_id = handle.id
        closing, jpegs = request.app[CLOSING], request.app[JPEGS]
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        period = 1.0 / MJPEG_MAX_FPS
        sent: Frame | None = None
        try:
            while (not closing.is_set() and monitor.streams.get(stream_id) is handle and not handle.task.done()
                   and request.transport is not None and not request.transport.is_closing()):
                started = loop.time()
                frame = handle.pipeline.last_frame
                if frame is not None and frame is not sent:
                    await resp.write(_part(await jpegs.jpeg(handle.pipeline, frame)))
                    sent = frame
                await asyncio.sleep(max(0.0, started + period - loop.time()))
            await resp.write(f"--{_BOUNDARY}--\r\n".encode())
            await resp.write_eof()
        except ConnectionError:
            pass  # the viewer left
        return resp

    app[JPEGS] = JpegCache()
    app.router.add_get("/", page)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.router.add_get("/streams/{id}/live.mjpeg", live_mjpeg)
    add_event_routes(app)
