"""Incident evidence, the alert history and the operator page's history, end to end.

- :class:`EvidenceStore` on its own: the frame with the box and the crops' strip as real
  JPEGs, names from ``alert_id``/``seq`` only, retention by age and total size (oldest first),
  and names or links that would leave the directory refused.
- A running service (small random-weight CADDM, threshold 0: every scored face alerts) with
  a real Redis: start and end events carry ``evidence`` URLs whose JPEGs the API serves behind
  the token, path tricks get nothing, ``GET /alerts`` reads Redis's log with its filters and
  says 503 when Redis is down; without Redis it answers from this worker's memory.
- Headless Chromium with no API token (the default): the live video is not black, and after
  a reload the alert history shows an incident with its evidence thumbnail loaded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import redis.asyncio as aioredis
import torch

from stream_monitor.alerts.evidence import STRIP_HEIGHT, EvidenceStore, evidence_names, strip_jpeg
from stream_monitor.alerts.policy import AlertEvent
from stream_monitor.types import Clip, Frame, WindowItem
from tests.support.api import Api, alert_log
from tests.support.chromium import Chromium, run_in_private_netns
from tests.support.schema import check_schema
from tests.support.servers import RedisServer
from tests.stream_monitor.test_ui import (SYNTH, VIDEO_STD, base_url, check_screenshot, needs_browser, start_monitor,
                                          ui_config, unexpected_errors)

TOKEN = "ui-test-token"  # ui_config's
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "ui"


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, f"not a JPEG: {data[:16]!r}"
    return image


# ---------------------------------------------------------------------------------------------- store


def make_event(alert_id: str, seq: int, kind: str = "start") -> AlertEvent:
    return AlertEvent({"alert_id": alert_id, "event": kind, "seq": seq, "stream_id": "cam", "track_id": 1,
                       "bbox": [100.0, 50.0, 200.0, 170.0], "evidence": None}, time.time())


def make_window(n: int = 12) -> tuple[Frame, Clip]:
    image = np.zeros((240, 320, 3), np.uint8)
    image[:, :, 1] = 90  # green frame, RGB
    items = tuple(WindowItem(seq=i, pts=i / 10, arrival=time.time(), box=(100.0, 50.0, 200.0, 170.0),
                             points=np.zeros((5, 2), np.float32), patch=np.full((224, 224, 3), 20 * i % 255, np.uint8))
                  for i in range(n))
    return Frame("cam", n - 1, (n - 1) / 10, time.time(), image), Clip("cam", 1, "caddm", items)


def test_store_writes_evidence_and_prunes_oldest_first(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "ev", max_bytes=10**9, max_age_s=3600)
    frame, clip = make_window()
    start, update, unsafe = make_event("a1b2", 0), make_event("a1b2", 1, "update"), make_event("../../x", 0)
    for event in (start, update, unsafe):
        store.attach(event, frame, clip)
    store.close()
    assert start.payload["evidence"] == {"frame": "/evidence/a1b2-0-frame.jpg", "faces": "/evidence/a1b2-0-faces.jpg"}
    assert update.payload["evidence"] is None and unsafe.payload["evidence"] is None
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["a1b2-0-faces.jpg", "a1b2-0-frame.jpg"]
    shot = decode((tmp_path / "ev" / "a1b2-0-frame.jpg").read_bytes())
    assert shot.shape == (240, 320, 3)
    assert abs(int(shot[110, 150, 1]) - 90) < 8  # inside the box: the frame itself (BGR green)
    assert shot[50:170, 100, 2].mean() > 180 and shot[50:170, 100, 0].mean() < 120  # the box's edge: red
    strip = decode((tmp_path / "ev" / "a1b2-0-faces.jpg").read_bytes())
    assert strip.shape == (STRIP_HEIGHT, 8 * STRIP_HEIGHT, 3)  # 8 of the 12 square crops, side by side
    assert store.written == 1 and store.failed == 0
    # Crops aligned on the detectors' device are tensors: the strip takes them as they are.
    tensor_strip = decode(strip_jpeg([torch.full((224, 224, 3), 200, dtype=torch.uint8)] * 3))
    assert tensor_strip.shape == (STRIP_HEIGHT, 3 * STRIP_HEIGHT, 3) and abs(tensor_strip.mean() - 200) < 3

    # Names come only from a safe alert_id and seq; lookups accept nothing else.
    assert evidence_names("../x", 0) is None and evidence_names("a" * 65, 0) is None
    assert store.path("a1b2-0-frame.jpg") == (tmp_path / "ev" / "a1b2-0-frame.jpg").resolve()
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"secret")
    (tmp_path / "ev" / "zz-0-frame.jpg").symlink_to(outside)  # a link out of the directory
    for name in ("../secret.jpg", "a1b2-0-frame.jpg/..", "..", "", "a1b2-0-frame.JPG", "a1b2-0-other.jpg",
                 "a1b2-x-frame.jpg", "zz-0-frame.jpg", "nope-0-frame.jpg", "/etc/passwd"):
        assert store.path(name) is None, name

    # Retention: anything older than max_age_s goes; then the oldest until the total fits.
    ev = tmp_path / "ev"
    (ev / "zz-0-frame.jpg").unlink()
    now = time.time()
    for i in range(5):
        path = ev / f"old{i}-0-frame.jpg"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - 100 + i, now - 100 + i))  # old0 is the oldest
    (ev / "unrelated.txt").write_bytes(b"y" * 5000)  # not evidence: never counted or deleted
    store.max_age_s = 97.5  # old0, old1 and old2 are older
    assert sorted(store.prune(now)) == ["old0-0-frame.jpg", "old1-0-frame.jpg", "old2-0-frame.jpg"]
    sizes = sum(p.stat().st_size for p in ev.glob("*.jpg"))
    store.max_age_s = 3600
    store.max_bytes = sizes - 1  # one file too many: the oldest (old3) goes, nothing else
    assert store.prune(now) == ["old3-0-frame.jpg"]
    assert (ev / "unrelated.txt").exists() and (ev / "a1b2-0-frame.jpg").exists()


# ---------------------------------------------------------------------------------------------- service


def evidence_config(redis_url: str | None, evidence_dir: Path, token: str | None = TOKEN) -> dict[str, Any]:
    cfg = ui_config(redis_url=redis_url)
    cfg["alerts"]["evidence_dir"] = str(evidence_dir)
    cfg["api"]["token"] = token
    return cfg


async def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)
    return result


def test_evidence_and_alert_history_over_http(tmp_path: Path, redis_server: RedisServer) -> None:
    async def main() -> None:
        monitor = await start_monitor(evidence_config(redis_server.url, tmp_path / "evidence"))
        try:
            async with aiohttp.ClientSession() as s:
                api = Api(s, monitor.api_port or 0, TOKEN)
                assert (await api.call("POST", "/streams", json={"id": "cam1", "url": SYNTH}))[0] == 201

                async def started() -> list[dict[str, Any]]:
                    return [a for a in await alert_log(redis_server.url) if a["event"] == "start"]

                starts = await wait_for(started, 60, "a start event in Redis")
                assert (await api.call("DELETE", "/streams/cam1"))[0] == 204  # its incidents end
                log = await wait_for(lambda: _ended(redis_server.url), 30, "the end events")
                for alert in log:
                    check_schema(alert)
                    assert (alert["evidence"] is None) == (alert["event"] == "update"), alert
                # Every start and end event's two JPEGs are served, behind the token.
                for alert in [a for a in log if a["evidence"]]:
                    frame_url, faces_url = alert["evidence"]["frame"], alert["evidence"]["faces"]
                    assert frame_url == f"/evidence/{alert['alert_id']}-{alert['seq']}-frame.jpg"
                    assert decode(await served(s, api.base + frame_url)).shape == (240, 320, 3)
                    assert decode(await served(s, api.base + faces_url)).shape[0] == STRIP_HEIGHT
                url = starts[0]["evidence"]["frame"]
                assert (await api.call("GET", url, token=None))[0] == 401
                assert (await api.call("GET", f"{url}?access_token={TOKEN}", token=None))[0] == 401  # header only
                # Path tricks never reach a file: the evidence name rule and the directory check.
                (tmp_path / "secret.jpg").write_bytes(b"TOP-SECRET-BYTES")
                for path in ("/evidence/..%2Fsecret.jpg", "/evidence/%2e%2e%2fsecret.jpg", "/evidence/..",
                             "/evidence/x-0-frame.jpg%00", "/evidence/" + "a" * 70 + "-0-frame.jpg",
                             "/evidence/../../secret.jpg"):
                    status, raw = await raw_get(monitor.api_port or 0, path)
                    assert status in (400, 404) and b"TOP-SECRET" not in raw, (path, status, raw[:300])

                # GET /alerts: newest first from Redis's log, filtered and capped.
                status, body = await api.call("GET", "/alerts?limit=3")
                assert status == 200 and body["source"] == "redis" and len(body["alerts"]) == min(3, len(log))
                assert body["alerts"] == list(reversed(log))[:3]
                assert (await api.call("GET", "/alerts", token=None))[0] == 401
                foreign = {**log[0], "alert_id": "f" * 32, "stream_id": "elsewhere", "seq": 0}
                client = aioredis.Redis.from_url(redis_server.url)
                await client.xadd("deepfake:alerts", {"alert": json.dumps(foreign)})
                await client.aclose()
                status, body = await api.call("GET", "/alerts?stream=elsewhere")
                assert status == 200 and body["alerts"] == [foreign]
                status, body = await api.call("GET", "/alerts?stream=cam1&limit=500")
                assert status == 200 and body["alerts"] == list(reversed(log))
                future_ms = int((time.time() + 60) * 1000)
                assert (await api.call("GET", f"/alerts?since={future_ms}"))[1]["alerts"] == []
                past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
                status, body = await api.call("GET", "/alerts", params={"since": past, "limit": "500"})
                assert status == 200 and len(body["alerts"]) == len(log) + 1, body
                for query, words in (("limit=0", "'limit'"), ("limit=501", "'limit'"), ("limit=x", "'limit'"),
                                     ("since=yesterday", "'since'"), ("since=2026-01-01T00:00:00", "time zone"),
                                     ("stream=../x", "'stream'"), ("foo=1", "unknown parameters")):
                    status, body = await api.call("GET", f"/alerts?{query}")
                    assert status == 400 and words in body["error"], (query, status, body)
                redis_server.stop()
                status, body = await api.call("GET", "/alerts")
                assert status == 503 and "Redis" in body["error"], body
        finally:
            await monitor.stop()

    asyncio.run(main())


async def raw_get(port: int, raw_path: str) -> tuple[int, bytes]:
    """(status, whole reply) of ``GET raw_path`` with the token, the path sent exactly as given
    (an HTTP client would normalise ``..`` away before the server could refuse it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {raw_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    reply = await reader.read()
    writer.close()
    return int(reply.split(b" ", 2)[1]), reply


async def served(s: aiohttp.ClientSession, url: str) -> bytes:
    """The JPEG at ``url`` (with the token); its file is written just after its event, so a
    404 is retried for a few seconds."""
    async def get() -> bytes | None:
        async with s.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            if r.status == 404:
                return None
            assert r.status == 200 and r.content_type == "image/jpeg", (url, r.status)
            return await r.read()

    return await wait_for(get, 5, f"{url} to be written")  # type: ignore[no-any-return]


async def _ended(url: str) -> list[dict[str, Any]] | None:
    """The whole log once every incident in it has ended."""
    log = await alert_log(url)
    ids = {a["alert_id"] for a in log}
    return log if ids and ids == {a["alert_id"] for a in log if a["event"] == "end"} else None


def test_alert_history_without_redis_is_this_workers(tmp_path: Path) -> None:
    async def main() -> None:
        monitor = await start_monitor(evidence_config(None, tmp_path / "evidence"))
        try:
            async with aiohttp.ClientSession() as s:
                api = Api(s, monitor.api_port or 0, TOKEN)
                assert (await api.call("POST", "/streams", json={"id": "cam2", "url": SYNTH}))[0] == 201

                async def history() -> list[dict[str, Any]]:
                    status, body = await api.call("GET", "/alerts?stream=cam2")
                    assert status == 200 and body["source"] == "local", body
                    return body["alerts"]  # type: ignore[no-any-return]

                alerts = await wait_for(history, 60, "an alert in the local history")
                kept = list(monitor.recent.payloads)
                assert all(a in kept and a["stream_id"] == "cam2" for a in alerts)
                assert [kept.index(a) for a in alerts] == sorted((kept.index(a) for a in alerts), reverse=True)
                assert (await api.call("GET", "/alerts?stream=other"))[1]["alerts"] == []
                start = next(a for a in kept if a["event"] == "start")
                assert decode(await served(s, api.base + start["evidence"]["faces"])).shape[0] == STRIP_HEIGHT
        finally:
            await monitor.stop()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------- browser


HISTORY_DOM = """(() => {
  const items = [...document.querySelectorAll('#timeline li.alert')];
  return items.map((li) => {
    const thumb = li.querySelector('img.thumb');
    return {id: li.dataset.alertId, stream: li.dataset.stream, event: li.dataset.event,
            thumb: thumb ? {src: thumb.getAttribute('src') || '', width: thumb.naturalWidth,
                            height: thumb.naturalHeight, complete: thumb.complete} : null};
  });
})()"""


def test_page_without_token_shows_video_and_history_after_reload(tmp_path: Path) -> None:
    needs_browser()

    async def main() -> dict[str, Any]:
        redis = RedisServer(tmp_path)  # inside the namespace, like everything here
        redis.start()
        monitor = await start_monitor(evidence_config(redis.url, tmp_path / "evidence", token=None))
        try:
            async with aiohttp.ClientSession() as s:
                async with s.post(base_url(monitor) + "/streams", json={"id": "cam1", "url": SYNTH}) as r:
                    assert r.status == 201, await r.text()
            async with Chromium(tmp_path) as browser:
                page = await browser.page()
                await page.navigate(base_url(monitor) + "/#stream=cam1")
                await page.wait_for("document.getElementById('connection').textContent === 'live'", 15, "the live feed")
                assert await page.evaluate("document.getElementById('token-form').hidden")  # no token asked for
                await page.wait_for("document.querySelector('#streams tr.stream.selected[data-id=\"cam1\"]')", 30,
                                    "cam1 chosen from the URL")
                await page.wait_for(f"{VIDEO_STD} > 10", 30, "the video to show a picture")
                src = await page.evaluate("document.getElementById('video').getAttribute('src')")
                assert src.startswith("/streams/cam1/live.mjpeg?t=") and "access_token" not in src, src
                viewer = await page.evaluate("(() => { const r = document.getElementById('viewer')"
                                             ".getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, "
                                             "height: r.height}; })()")
                shot = await page.screenshot(ARTIFACTS / "no-token-video.png")
                video = check_screenshot(shot, viewer)
                await page.wait_for("document.querySelector('#timeline li.alert')", 30, "a live alert")
                await page.wait_for("document.getElementById('track-chart').hidden === false", 15,
                                    "the chosen track's score chart")
                # The stream goes (its incidents end): the reloaded page has only GET /alerts to go on.
                async with aiohttp.ClientSession() as s:
                    async with s.delete(base_url(monitor) + "/streams/cam1") as r:
                        assert r.status == 204, await r.text()
                await page.evaluate("location.reload(), true")
                await page.wait_for("(document.getElementById('history-status') || {}).textContent === 'history: Redis'", 15,
                                    "the history loaded")
                await page.wait_for("[...document.querySelectorAll('#timeline li.alert img.thumb')]"
                                    ".some((i) => i.complete && i.naturalWidth > 0)", 20, "a loaded evidence thumbnail")
                dom = await page.evaluate(HISTORY_DOM)
                await page.screenshot(ARTIFACTS / "alert-history.png")
                assert page.exceptions == [] and unexpected_errors(page) == [], (page.exceptions, page.log)
                return {"video": video, "dom": dom, "log": await alert_log(redis.url)}
        finally:
            await monitor.stop()
            redis.stop()

    result = run_in_private_netns(lambda: asyncio.run(main()))
    video = result["video"]
    assert video.mean() > 10 and video.std() > 15, (video.mean(), video.std())  # not black
    shown = [item for item in result["dom"] if item["thumb"] and item["thumb"]["width"] > 0]
    assert shown, result["dom"]
    assert all(item["thumb"]["src"].startswith("blob:") for item in shown)
    assert (shown[0]["thumb"]["width"], shown[0]["thumb"]["height"]) == (320, 240)
    logged = {a["alert_id"] for a in result["log"]}
    assert {item["id"] for item in result["dom"]} <= logged and shown[0]["stream"] == "cam1"
