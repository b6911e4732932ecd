"""The operator page: its HTTP feeds over real HTTP, and the page itself in headless Chromium.

Feeds (plain aiohttp clients on loopback): the page and its files are served without a
token while the data needs one (header, or ``?access_token=`` on the live feeds only); ``/events``
sends config, streams, live faces and alerts, from the in-process broadcast without Redis
and from Redis Pub/Sub with it (a foreign worker's alert published straight into Redis
shows up, so the feed really is Pub/Sub), survives a Redis outage, and releases its
subscription when the client leaves; ``live.mjpeg`` sends decodable JPEGs at ≤ 10 fps and
ends with its stream; shutdown does not wait for open feeds.

Browser (Debian's Chromium over CDP, in a loopback-only network namespace, see
tests/support/chromium.py): the page publishes its fake camera (a y4m of the synthetic
face) through its own "Publish" control over WHIP, the frames reach the pipeline, a second
tab is told the worker is full (503), and "Stop" ends the stream; and with a synthetic
stream running, the page shows the stream list, the video with face boxes and scores, and
the alert timeline. Screenshots are saved under artifacts/ui/ (git-ignored).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import cv2
import numpy as np
import redis.asyncio as aioredis

from stream_monitor.service import Service
from stream_monitor.config import load_config
from tests.support.schema import check_schema
from tests.support.chromium import (Chromium, Page, chromium_problem, netns_problem, run_in_private_netns,
                                    write_fake_camera)
from tests.support.servers import RedisServer, unavailable
from tests.support.small import small_config

TOKEN = "ui-test-token"
SYNTH = "synthetic:?fps=10&size=320x240"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "ui"


def ui_config(redis_url: str | None = None, sta: bool = False) -> dict[str, Any]:
    """Small random-weight detectors, threshold 0 and start_after 1: every scored face alerts."""
    detectors: dict[str, Any] = {"enabled": ["caddm", "sta"] if sta else ["caddm"],
                                 "caddm": {"sample_fps": "all", "window_len": 2, "window_stride": 2}}
    if sta:
        detectors["sta"] = {"sample_fps": 4.0, "window_stride": 2}
    return small_config(detectors=detectors, faces={"min_size": 20},
                        alerts={"threshold": 0.0, "start_after": 1, "end_after": 1, "stdout": False},
                        api={"port": 0, "token": TOKEN},
                        redis={"url": redis_url, "retry": {"initial_s": 0.2, "max_s": 1.0}} if redis_url else {})


async def start_monitor(overrides: dict[str, Any]) -> Service:
    monitor = Service(load_config(overrides=overrides, environ={}))
    await monitor.start()
    return monitor


def base_url(monitor: Service) -> str:
    return f"http://127.0.0.1:{monitor.api_port}"


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Server-Sent Events of a response as (event name, JSON data)."""
    name, data = "message", list[str]()
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", list[str]()
        elif line.startswith("event:"):
            name = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].lstrip())


Event = tuple[str, dict[str, Any]]


async def collect(resp: aiohttp.ClientResponse, until: Callable[[list[Event]], bool], timeout: float,
                  what: str) -> list[Event]:
    """Events until ``until(events)`` is true; fails naming ``what`` after ``timeout`` s."""
    events: list[Event] = []

    async def read() -> None:
        async for event in sse(resp):
            events.append(event)
            if until(events):
                return
        raise AssertionError(f"/events ended before {what}: {[n for n, _ in events]}")

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}; got {[n for n, _ in events][-20:]}") from None
    return events


async def add_stream(s: aiohttp.ClientSession, monitor: Service, stream_id: str, url: str = SYNTH) -> None:
    async with s.post(base_url(monitor) + "/streams", json={"id": stream_id, "url": url}, headers=bearer()) as r:
        assert r.status == 201, await r.text()


# ---------------------------------------------------------------------------------------------- feeds


async def raw_get(monitor: Service, raw_path: str) -> bytes:
    """The whole HTTP/1.1 reply to ``GET raw_path``, the path sent exactly as given."""
    reader, writer = await asyncio.open_connection("127.0.0.1", monitor.api_port)
    writer.write(f"GET {raw_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    reply = await reader.read()
    writer.close()
    return reply


def test_page_is_public_and_data_needs_the_token(tmp_path: Path) -> None:
    async def main() -> None:
        monitor = await start_monitor(ui_config())
        base = base_url(monitor)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/") as r:
                    page = await r.text()
                    assert r.status == 200 and r.content_type == "text/html", r.status
                    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
                for element in ('id="streams"', 'id="viewer"', 'id="timeline"', 'id="publish-btn"', 'id="publish-id"',
                                'id="token-form"', 'id="notice"', "/static/app.js", "/static/style.css"):
                    assert element in page, element
                for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
                    async with s.get(f"{base}/static/{name}") as r:
                        assert r.status == 200 and kind in r.content_type and len(await r.read()) > 1000, name
                for raw in ("/static/../streams", "/static/%2e%2e/streams", "/static/..%2fstreams"):
                    # Sent as written (a client would normalise it): no way out of static/ to the data.
                    reply = await raw_get(monitor, raw)
                    assert reply.split(b" ")[1] in (b"401", b"403", b"404") and b'"streams"' not in reply, reply

                async def status(method: str, path: str, **kw: Any) -> int:
                    async with s.request(method, base + path, **kw) as r:
                        return r.status

                assert await status("GET", "/streams") == 401
                assert await status("GET", "/streams", headers=bearer()) == 200
                live = "/streams/x/live.mjpeg"  # 404 (no such stream) once past the token check
                assert await status("GET", f"{live}?access_token=wrong") == 401
                assert await status("GET", f"{live}?access_token=wrong", headers=bearer()) == 404  # the header wins
                assert await status("GET", f"{live}?access_token={TOKEN}", headers=bearer("wrong")) == 401
                # Only the live feeds take the query token: the data routes want the header.
                assert await status("GET", f"/streams?access_token={TOKEN}") == 401
                assert await status("GET", "/events") == 401
                assert await status("GET", "/streams/x/live.mjpeg") == 401
                assert await status("GET", f"/streams/x/live.mjpeg?access_token={TOKEN}") == 404
                # HEAD answers at once instead of streaming forever.
                assert await asyncio.wait_for(status("HEAD", f"/events?access_token={TOKEN}"), 5) == 200
                # A token in a URL never authorises a change of state.
                assert await status("POST", f"/streams?access_token={TOKEN}", json={"id": "a", "url": SYNTH}) == 401
                assert await status("DELETE", f"/streams/a?access_token={TOKEN}") == 401
                assert monitor.streams == {}
        finally:
            await monitor.stop()

    asyncio.run(main())


def test_events_and_mjpeg_without_redis(tmp_path: Path) -> None:
    async def main() -> None:
        monitor = await start_monitor(ui_config())
        base = base_url(monitor)
        try:
            async with aiohttp.ClientSession() as s:
                await add_stream(s, monitor, "synth")
                async with s.get(f"{base}/events?access_token={TOKEN}") as r:
                    assert r.status == 200 and r.content_type == "text/event-stream"
                    assert monitor.broadcast.subscribers == 1

                    def enough(events: list[Event]) -> bool:
                        return ("alert" in [n for n, _ in events] and any(n == "live" and d["faces"] for n, d in events)
                                and any(n == "streams" and d["streams"] and d["streams"][0]["faces"]
                                        for n, d in events))

                    events = await collect(r, enough, 60, "streams, live faces and an alert")
                assert events[0] == ("config", {"redis": False, "alerts": "local", "threshold": 0.0,
                                                "worker": events[0][1]["worker"], "live_fps": 5.0,
                                                "streams_period_s": 1.0})
                assert ("feed", {"source": "local", "ok": True, "error": None}) in events
                streams = [d for n, d in events if n == "streams" and d["streams"] and d["streams"][0]["faces"]][0]
                entry = streams["streams"][0]
                assert entry["id"] == "synth" and entry["state"] == "up" and entry["frames_analysed"] > 0
                assert {"fps", "faces", "last_scores"} <= set(entry)
                live = [d for n, d in events if n == "live" and d["faces"]][-1]
                assert live["stream_id"] == "synth" and (live["width"], live["height"]) == (320, 240)
                assert live["threshold"] == 0.0
                face = live["faces"][0]
                x1, y1, x2, y2 = face["box"]
                assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240 and x2 - x1 > 20
                seqs = [d["seq"] for n, d in events if n == "live"]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # only new frames are sent
                alert = next(d for n, d in events if n == "alert")
                check_schema(alert)
                assert alert["stream_id"] == "synth" and alert["event"] == "start"
                # The client left: its broadcast queue is released.
                for _ in range(50):
                    if monitor.broadcast.subscribers == 0:
                        break
                    await asyncio.sleep(0.1)
                assert monitor.broadcast.subscribers == 0

                # MJPEG: decodable 320x240 JPEGs at most 10 a second; the feed ends with its stream.
                async with s.get(f"{base}/streams/synth/live.mjpeg", headers=bearer()) as r:
                    assert r.status == 200 and r.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
                    t0 = time.monotonic()
                    parts = [await read_part(r) for _ in range(12)]
                    elapsed = time.monotonic() - t0
                    for jpeg in parts:
                        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                        assert image is not None and image.shape == (240, 320, 3) and image.std() > 10
                    assert 11 / elapsed <= 10.5, f"{11 / elapsed:.1f} parts/s"  # 11 intervals between 12 parts
                    async with s.delete(f"{base}/streams/synth", headers=bearer()) as d:
                        assert d.status == 204
                    rest = await asyncio.wait_for(r.content.read(), 10)  # EOF: the feed ended with the stream
                    assert rest.endswith(b"--frame--\r\n"), rest[-40:]
        finally:
            await monitor.stop()

    asyncio.run(main())


async def read_part(resp: aiohttp.ClientResponse) -> bytes:
    """The next JPEG of a multipart/x-mixed-replace response."""
    line = await resp.content.readline()
    while line in (b"\r\n", b""):
        assert line, "the MJPEG feed ended"
        line = await resp.content.readline()
    assert line == b"--frame\r\n", line
    headers = {}
    while (line := await resp.content.readline()) != b"\r\n":
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    return await resp.content.readexactly(int(headers["content-length"]))


def test_events_from_redis_pubsub(tmp_path: Path, redis_server: RedisServer) -> None:
    foreign = {"alert_id": "other-worker-1", "event": "start", "seq": 0, "stream_id": "elsewhere"}

    async def numpat(client: aioredis.Redis) -> int:
        return int(await client.execute_command("PUBSUB", "NUMPAT"))

    async def main() -> None:
        monitor = await start_monitor(ui_config(redis_url=redis_server.url))
        base = base_url(monitor)
        client = aioredis.Redis.from_url(redis_server.url)
        stopped = False
        try:
            async with aiohttp.ClientSession() as s:
                await add_stream(s, monitor, "synth")
                async with s.get(f"{base}/events?stream=synth&access_token={TOKEN}") as r:
                    assert r.status == 200
                    events = await collect(r, lambda ev: ev[-1][0] == "feed", 10, "the feed to connect")
                    assert events[0][1]["redis"] is True and events[0][1]["alerts"] == "redis"
                    assert events[-1][1] == {"source": "redis", "ok": True, "error": None}
                    assert await numpat(client) == 1
                    assert monitor.broadcast.subscribers == 0  # Redis mode does not use the local feed
                    # Another worker's alert, straight into Redis: only a Pub/Sub feed can deliver it.
                    await client.publish("deepfake:alerts:elsewhere", json.dumps(foreign))
                    events = await collect(r, lambda ev: ("alert", foreign) in ev and any(
                        n == "alert" and d.get("stream_id") == "synth" for n, d in ev), 60, "both workers' alerts")
                    check_schema(next(d for n, d in events if n == "alert" and d["stream_id"] == "synth"))

                    # Redis goes away: the page is told, and the feed comes back with Redis.
                    redis_server.stop()
                    down = await collect(r, lambda ev: ev[-1][0] == "feed", 15, "the feed to report Redis down")
                    assert down[-1][1]["ok"] is False and "Redis unreachable" in down[-1][1]["error"], down[-1]
                    redis_server.start()
                    events = await collect(r, lambda ev: ev[-1][0] == "feed" and ev[-1][1]["ok"], 30,
                                           "the feed to reconnect")
                    assert all(d["stream_id"] == "synth" for n, d in events if n == "live")  # ?stream= filter
                await client.aclose()
                client = aioredis.Redis.from_url(redis_server.url)
                for _ in range(50):  # the client left: its pattern subscription is gone
                    if await numpat(client) == 0:
                        break
                    await asyncio.sleep(0.1)
                assert await numpat(client) == 0

                # Shutdown does not wait for open feeds (aiohttp would wait 60 s for their handlers).
                async with s.get(f"{base}/events?access_token={TOKEN}") as r1, \
                        s.get(f"{base}/streams/synth/live.mjpeg?access_token={TOKEN}") as r2:
                    assert r1.status == 200 and r2.status == 200
                    t0 = time.monotonic()
                    stopped = True
                    await monitor.stop()
                    assert time.monotonic() - t0 < 15
        finally:
            if not stopped:
                await monitor.stop()
            await client.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------- browser


def needs_browser() -> None:
    for problem in (chromium_problem(), netns_problem()):
        if problem is not None:
            unavailable(problem)


JS_SUBMIT_TOKEN = f"""(() => {{
  document.getElementById('token-input').value = {json.dumps(TOKEN)};
  document.getElementById('token-form').requestSubmit();
  return true;
}})()"""


def unexpected_errors(page: Page) -> list[dict[str, Any]]:
    """The browser's error log less the one 401 that makes the page ask for the token
    (a CSP violation, a missing file or a failed request would show up here)."""
    return [e for e in page.log if e.get("level") == "error"
            and not (e.get("url", "").endswith("/streams") and "401" in e.get("text", ""))]


async def open_page(browser: Chromium, monitor: Service, new_tab: bool = False) -> Page:
    """The operator page, after answering its token prompt (the API said 401 without one)."""
    page = await (browser.new_page() if new_tab else browser.page())
    await page.navigate(base_url(monitor) + "/")
    await page.wait_for("!document.getElementById('token-form').hidden", 15, "the page to ask for the token")
    await page.evaluate(JS_SUBMIT_TOKEN)
    await page.wait_for("document.getElementById('connection').textContent === 'live'", 15, "the live feed")
    return page


# The spread of the video's brightness as the page renders it (the <img> drawn on a small
# canvas): about 0 for a blank or black picture, about 19 for the synthetic face.
VIDEO_STD = """(() => {
  const img = document.getElementById('video');
  if (img.hidden || !img.naturalWidth) return 0;
  const canvas = document.createElement('canvas');
  canvas.width = 64; canvas.height = 48;
  const g = canvas.getContext('2d');
  g.drawImage(img, 0, 0, 64, 48);
  const d = g.getImageData(0, 0, 64, 48).data;
  let sum = 0, sum2 = 0;
  for (let i = 0; i < d.length; i += 4) { const y = (d[i] + d[i + 1] + d[i + 2]) / 3; sum += y; sum2 += y * y; }
  const n = d.length / 4, mean = sum / n;
  return Math.sqrt(sum2 / n - mean * mean);
})()"""


def check_screenshot(shot: Path, viewer: dict[str, float]) -> np.ndarray:
    """A real PNG of the page, not blank, whose video area shows a picture; that area (BGR)."""
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, len(data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the PNG does not decode"
    assert image.shape[0] >= 600 and image.shape[1] >= 1000, image.shape
    assert image.std() > 15, "the page is blank"
    x, y, w, h = (round(viewer[k]) for k in ("x", "y", "width", "height"))
    video = image[y:y + h, x:x + w]
    assert video.std() > 15, "the video area is blank"
    return video


DOM_SNAPSHOT = """(() => {
  const text = (el) => el ? el.textContent.trim() : null;
  const row = document.querySelector('#streams tr.stream[data-id="cam1"]');
  const img = document.getElementById('video');
  const viewer = document.getElementById('viewer').getBoundingClientRect();
  return {
    row: row && {cells: [...row.cells].map(text), selected: row.classList.contains('selected')},
    img: {hidden: img.hidden, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
          src: img.getAttribute('src') || ''},
    viewer: {x: viewer.x, y: viewer.y, width: viewer.width, height: viewer.height},
    boxes: [...document.querySelectorAll('#boxes .face-box')].map((b) => {
      const r = b.getBoundingClientRect();
      return {level: b.dataset.level, fused: b.dataset.fused, track: b.dataset.track,
              label: text(b.querySelector('.box-label')),
              detectors: [...b.querySelectorAll('.detector-score')].map((d) => d.dataset.detector),
              rect: {x: r.x, y: r.y, width: r.width, height: r.height}, colour: getComputedStyle(b).borderTopColor};
    }),
    alerts: [...document.querySelectorAll('#timeline li.alert')].map((li) => ({
      id: li.dataset.alertId, stream: li.dataset.stream, event: li.dataset.event, text: text(li)})),
    notice: {hidden: document.getElementById('notice').hidden, text: text(document.getElementById('notice'))},
    error: {hidden: document.getElementById('error').hidden, text: text(document.getElementById('error'))},
    feed: text(document.getElementById('feed')),
  };
})()"""


def test_page_shows_streams_boxes_and_alerts(tmp_path: Path) -> None:
    needs_browser()

    async def main() -> tuple[dict[str, Any], Path]:
        redis = RedisServer(tmp_path)  # started inside the namespace, like everything here
        redis.start()
        monitor = await start_monitor(ui_config(redis_url=redis.url, sta=True))
        try:
            async with aiohttp.ClientSession() as s:
                await add_stream(s, monitor, "cam1")
            async with Chromium(tmp_path) as browser:
                page = await open_page(browser, monitor)
                await page.wait_for("document.querySelector('#streams tr.stream[data-id=\"cam1\"]')", 30,
                                    "cam1 in the stream list")
                await page.evaluate("document.querySelector('#streams tr.stream[data-id=\"cam1\"]').click(), true")
                await page.wait_for(
                    "[...document.querySelectorAll('#boxes .face-box')].some(b => b.dataset.fused !== '' "
                    "&& b.querySelectorAll('.detector-score').length === 2)", 60,
                    "a face box with both detectors' scores")
                await page.wait_for("document.querySelector('#timeline li.alert')", 30, "an alert in the timeline")
                await page.wait_for(f"{VIDEO_STD} > 10", 15, "the video to show a picture")
                await page.wait_for("document.querySelector('#streams tr.stream[data-id=\"cam1\"]').cells[4]"
                                    ".textContent.includes('sta')", 30, "both detectors' last scores in the list")
                dom = await page.evaluate(DOM_SNAPSHOT)
                shot = await page.screenshot(ARTIFACTS / "operator-page.png")
                assert page.exceptions == [] and unexpected_errors(page) == [], (page.exceptions, page.log)
                return dom, shot
        finally:
            await monitor.stop()
            redis.stop()

    dom, shot = run_in_private_netns(lambda: asyncio.run(main()))
    print(f"operator page screenshot: {shot}")

    cells = dom["row"]["cells"]
    assert dom["row"]["selected"] and cells[0] == "cam1" and cells[1] == "up", cells
    assert float(cells[2]) > 0 and int(cells[3]) >= 1 and "caddm" in cells[4] and "sta" in cells[4], cells
    assert (dom["img"]["naturalWidth"], dom["img"]["naturalHeight"]) == (320, 240) and not dom["img"]["hidden"]
    assert "/streams/cam1/live.mjpeg?access_token=" in dom["img"]["src"]
    scored = [b for b in dom["boxes"] if b["fused"]]
    assert scored, dom["boxes"]
    box = scored[0]
    assert box["level"] == "alert" and box["colour"] == "rgb(229, 72, 77)", box  # fused >= threshold 0: red
    assert sorted(box["detectors"]) == ["caddm", "sta"] and "fused" in box["label"], box
    v, r = dom["viewer"], box["rect"]  # the box lies on the video, face-sized
    assert v["x"] <= r["x"] and r["x"] + r["width"] <= v["x"] + v["width"] + 1, (v, r)
    assert v["y"] <= r["y"] and r["y"] + r["height"] <= v["y"] + v["height"] + 1, (v, r)
    assert r["width"] > 0.1 * v["width"] and r["height"] > 0.1 * v["height"], (v, r)
    alert = dom["alerts"][0]
    assert alert["stream"] == "cam1" and alert["event"] in ("start", "update", "end"), alert
    assert "cam1" in alert["text"] and "score" in alert["text"] and "caddm" in alert["text"], alert
    assert dom["notice"]["hidden"] and dom["error"]["hidden"], dom  # Redis is there: no degraded notice
    assert dom["feed"] == "alerts: Redis"

    # The screenshot: a real PNG of the page, not blank, with the video and a red box on it.
    video = check_screenshot(shot, v)
    red = np.all(np.abs(video.astype(int) - (77, 72, 229)) <= 12, axis=2)  # BGR of the alert colour
    assert red.sum() > 200, f"no red face box in the screenshot ({red.sum()} px)"


def test_page_publishes_its_camera_over_whip(tmp_path: Path) -> None:
    needs_browser()
    # The service offers only webrtc.host_addresses (default 127.0.0.1) as ICE candidates,
    # which is all there is in the test's namespace anyway.
    camera = write_fake_camera(tmp_path / "camera.y4m")

    async def main() -> dict[str, Any]:
        monitor = await start_monitor({**ui_config(), "webrtc": {"max_sessions": 1, "retry_after_s": 7}})
        base = base_url(monitor)
        try:
            async with Chromium(tmp_path, camera=camera) as browser, aiohttp.ClientSession() as s:
                page = await open_page(browser, monitor)
                await page.wait_for("!document.getElementById('notice').hidden", 10, "the no-Redis notice")
                notice = await page.evaluate("document.getElementById('notice').textContent")
                assert notice == "no Redis: showing this worker's alerts only"
                await page.evaluate("document.getElementById('publish-id').value = 'browser-cam', "
                                    "document.getElementById('publish-btn').click(), true")
                await page.wait_for("document.getElementById('publish-status').textContent.startsWith('Publishing')",
                                    30, "the page to publish")

                async def status() -> dict[str, Any]:
                    async with s.get(f"{base}/streams/browser-cam", headers=bearer()) as r:
                        return await r.json() if r.status == 200 else {}

                deadline = time.monotonic() + 60
                while not ((st := await status()).get("frames_analysed", 0) > 0 and st.get("faces", 0) > 0):
                    assert time.monotonic() < deadline, f"no analysed frames with faces from the browser: {st}"
                    await asyncio.sleep(0.25)
                async with s.get(f"{base}/streams", headers=bearer()) as r:
                    listed = [x["id"] for x in (await r.json())["streams"]]
                await page.wait_for("document.querySelector('#streams tr.stream[data-id=\"browser-cam\"]')", 10,
                                    "the published stream in the page's list")
                await page.wait_for("[...document.querySelectorAll('#boxes .face-box')].some(b => b.dataset.fused)", 30,
                                    "a scored face box on the camera's video")
                await page.wait_for(f"{VIDEO_STD} > 10", 15, "the camera's video to show a picture")
                await page.wait_for("document.getElementById('local-preview').videoWidth === 320", 10,
                                    "the local preview of the fake camera")
                shot = await page.screenshot(ARTIFACTS / "publish-camera.png")
                check_screenshot(shot, await page.evaluate(
                    "(() => { const r = document.getElementById('viewer').getBoundingClientRect(); "
                    "return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"))
                # A second tab finds the worker full (webrtc.max_sessions = 1) and says so.
                other = await open_page(browser, monitor, new_tab=True)
                await other.evaluate("document.getElementById('publish-id').value = 'second-cam', "
                                     "document.getElementById('publish-btn').click(), true")
                await other.wait_for("document.getElementById('publish-status').textContent.includes('full')", 20,
                                     "the second tab to report the full worker")
                refusal = await other.evaluate("document.getElementById('publish-status').textContent")
                assert "the worker is full" in refusal and "try again in 7 s" in refusal, refusal
                assert await other.evaluate("!document.getElementById('publish-btn').disabled")
                assert "second-cam" not in monitor.streams
                assert other.exceptions == [] and [e for e in unexpected_errors(other)
                                                   if "503" not in e.get("text", "")] == [], other.log
                # Stop: the page DELETEs its WHIP session and the stream ends.
                await page.evaluate("document.getElementById('publish-stop').click(), true")
                deadline = time.monotonic() + 20
                while (await status()).get("state") not in (None, "ended", "stopped"):
                    assert time.monotonic() < deadline, f"the stream did not end after Stop: {await status()}"
                    await asyncio.sleep(0.25)
                assert page.exceptions == [] and unexpected_errors(page) == [], (page.exceptions, page.log)
                return {"listed": listed, "status": st, "shot": shot}
        finally:
            await monitor.stop()

    result = run_in_private_netns(lambda: asyncio.run(main()))
    print(f"publish screenshot: {result['shot']}")
    assert "browser-cam" in result["listed"]
    st = result["status"]
    assert st["frames_analysed"] > 0 and st["faces"] >= 1 and st["state"] == "up", st
