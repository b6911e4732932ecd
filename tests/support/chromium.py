"""Debian's headless Chromium, driven over the Chrome DevTools Protocol, in a loopback-only netns.

- :func:`run_in_private_netns` runs a function in a new thread that first moves itself into
  a fresh network namespace (``unshare(CLONE_NEWNET)``, then ``ip link set lo up``): only
  127.0.0.1 exists there. Network namespaces belong to threads, and everything that thread
  creates inherits its namespace: sockets (the service under test, aiortc's UDP ports,
  Redis clients), threads and child processes (Chromium, redis-server). So the service,
  the browser and the test talk over loopback, and nothing can leave the machine
  (ENVIRONMENT.md §1). Needs root or CAP_SYS_ADMIN; :func:`netns_problem` says why not.
- :class:`Chromium` starts ``/usr/bin/chromium`` headless with a fake camera (a y4m file,
  looped) and ``--remote-debugging-port``; :class:`Page` speaks CDP over aiohttp's websocket
  client (``Runtime.evaluate``, ``Page.navigate``, ``Page.captureScreenshot``) and records
  the page's uncaught exceptions and console errors. No npm or Playwright downloads.
- :func:`write_fake_camera` makes the y4m from the synthetic moving face.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import aiohttp

from tests.support.servers import free_port

CHROMIUM = "/usr/bin/chromium"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


@functools.lru_cache(maxsize=1)
def chromium_problem() -> str | None:
    """Why Chromium cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (apt-get install chromium; scripts/bootstrap.sh does)"
    return None


def _enter_private_netns() -> None:
    """Move the calling thread into a new network namespace with loopback up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise PermissionError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)


@functools.lru_cache(maxsize=1)
def netns_problem() -> str | None:
    """Why a private network namespace cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is missing: cannot bring loopback up in a private network namespace"
    try:
        run_in_private_netns(lambda: None)
    except (PermissionError, subprocess.CalledProcessError) as exc:
        return (f"cannot make a loopback-only network namespace ({exc}); the browser tests run only as root or "
                "with CAP_SYS_ADMIN, so that Chromium can reach nothing but 127.0.0.1")
    return None


def run_in_private_netns(fn: Callable[[], T]) -> T:
    """``fn()`` in a new thread inside a fresh loopback-only network namespace; its result
    or its exception. The thread (and so the namespace) ends when ``fn`` returns."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            _enter_private_netns()
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name="private-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def write_fake_camera(path: Path, seconds: float = 4.0, fps: int = 10, size: tuple[int, int] = (320, 240)) -> Path:
    """A y4m (yuv420p) of the synthetic moving face, for ``--use-file-for-fake-video-capture``
    (Chromium loops it). 320x240 at 10 fps is 1.1 MB a second."""
    import av

    from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames

    spec = SyntheticSpec(fps=fps, width=size[0], height=size[1], faces=1, seconds=seconds)
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("wrapped_avframe", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for image in synthetic_frames(spec):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


class CdpError(RuntimeError):
    """A CDP command failed, or the page threw while evaluating an expression."""


class Page:
    """One page target over CDP. Create with :meth:`Chromium.page`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.exceptions: list[str] = []  # uncaught exceptions in the page
        self.console: list[str] = []  # console messages, "level: text"
        self.log: list[dict[str, Any]] = []  # browser log entries (network errors, CSP violations, ...)
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.exceptions.append(details.get("exception", {}).get("description") or details.get("text", "?"))
            elif data.get("method") == "Log.entryAdded":
                self.log.append(data["params"]["entry"])
            elif data.get("method") == "Runtime.consoleAPICalled":
                params = data["params"]
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                self.console.append(f"{params.get('type')}: {text}")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CdpError("the DevTools connection closed"))

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """One CDP command; its ``result`` object."""
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply.get("result", {})  # type: ignore[no-any-return]

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The JSON value of a JavaScript expression (promises awaited)."""
        result = await self.send("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                                 awaitPromise=True, userGesture=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(f"{expression!r} threw: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    async def navigate(self, url: str, timeout: float = 30.0) -> None:
        """Load ``url`` and wait until its document has finished loading."""
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", timeout,
                            f"{url} to load")

    async def wait_for(self, expression: str, timeout: float, what: str, interval: float = 0.2) -> None:
        """Poll until ``expression`` is truthy in JavaScript (a DOM element counts, though it
        comes back as ``{}``). Fails naming ``what`` (and the page's exceptions) after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            if await self.evaluate(f"!!({expression})") is True:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} "
                                     f"(page exceptions: {self.exceptions}; console: {self.console[-10:]})")
            await asyncio.sleep(interval)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport (the whole page when it is taller), written to ``path``."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
        params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = await self.send("Page.captureScreenshot", **params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class Chromium:
    """Headless Chromium with a fake camera, on loopback. Use ``async with``; it must run in
    the thread that will own it (inside :func:`run_in_private_netns` for the tests)."""

    def __init__(self, workdir: Path, camera: Path | None = None, window: tuple[int, int] = (1400, 900)) -> None:
        problem = chromium_problem()
        if problem is not None:
            raise RuntimeError(problem)
        self.workdir = workdir
        self.camera = camera
        self.window = window
        self.port = free_port()
        self.profile = workdir / f"chromium-profile-{self.port}"
        self.log = workdir / f"chromium-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pages: list[Page] = []

    def args(self) -> list[str]:
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                f"--user-data-dir={self.profile}", f"--window-size={self.window[0]},{self.window[1]}",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                "--allow-loopback-in-peer-connection", "--remote-debugging-address=127.0.0.1",
                f"--remote-debugging-port={self.port}"]
        if self.camera is not None:
            args.append(f"--use-file-for-fake-video-capture={self.camera}")
        return args + ["about:blank"]

    async def __aenter__(self) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            # Its own process group, so teardown can end the browser's helper processes too.
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self._session = aiohttp.ClientSession()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                async with self._session.get(f"http://127.0.0.1:{self.port}/json/version") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium's DevTools did not answer within 30 s: {self.log_tail()}")
            await asyncio.sleep(0.1)
        return self

    async def page(self) -> Page:
        """The first page target (``about:blank``), with Runtime, Page and Log events enabled."""
        assert self._session is not None, "use 'async with'"
        async with self._session.get(f"http://127.0.0.1:{self.port}/json/list") as resp:
            targets = await resp.json()
        return await self._attach(next(t for t in targets if t.get("type") == "page"))

    async def new_page(self) -> Page:
        """Another tab (``about:blank``), like :meth:`page`."""
        assert self._session is not None, "use 'async with'"
        async with self._session.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as resp:
            return await self._attach(await resp.json())

    async def _attach(self, target: dict[str, Any]) -> Page:
        assert self._session is not None
        ws = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        self._pages.append(page)
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.send("Log.enable")
        return page

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    async def __aexit__(self, *exc: object) -> None:
        for page in self._pages:
            await page.close()
        if self._session is not None:
            await self._session.close()
        if self.proc is not None:
            pid = self.proc.pid
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    await asyncio.to_thread(self.proc.wait, 10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    await asyncio.to_thread(self.proc.wait, 10)
            try:
                os.killpg(pid, signal.SIGKILL)  # helpers (renderer, GPU, zygote) left in its group
            except ProcessLookupError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)
