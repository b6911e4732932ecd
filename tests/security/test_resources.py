"""Bounded resources: what one client or one source can make a worker hold.

Every test runs the real service on loopback (a :class:`Monitor` with small random-weight
detectors, real aiohttp listeners, a real ``redis-server`` where Redis matters) and talks to it
over HTTP or raw TCP sockets:

- picture size: a source whose pictures exceed ``ingest.max_pixels`` fails with a clear
  ``SourceError`` before such a picture is decoded: stated sizes at open, a size change in
  the middle of a stream at the first larger picture, and an 8192² PNG (whose size only
  decoding reveals) without the process's peak memory growing by the 192 MiB it decodes to;
- ``api.max_streams`` caps every stream of a worker (API and WHIP alike, concurrent requests
  included) and, in a fleet, the desired set; beyond: 503 with ``Retry-After``;
- ``api.max_sse_clients`` / ``api.max_mjpeg_clients`` cap the live feeds (503, ``Retry-After``);
- every ``/events`` client of a worker shares one Redis Pub/Sub connection;
- a slow header sender, a connection that never sends, an idle kept-alive connection and a
  flood of connections are closed by the listener (``api.header_timeout_s``,
  ``api.keepalive_timeout_s``, ``api.max_connections``), while long feeds go on;
- a deleted stream leaves no series in ``/metrics``, whatever their other labels.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from stream_monitor.service import Service
from stream_monitor.config import IngestConfig, load_config
from stream_monitor.errors import SourceError
from stream_monitor.ingest.av_reader import check_frame_size
from stream_monitor.ingest.base import open_source
from tests.support.large_media import write_large_png, write_size_change
from tests.support.media import write_video
from tests.support.polling import until, until_async
from tests.support.servers import RedisServer
from tests.support.small import small_config
from tests.support.whip_client import Publisher, loopback_only

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "resources-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SYNTH = "synthetic:?fps=10&size=320x240"
RETRY_AFTER = 7  # not the default, so a 503 carrying it is ours


@pytest.fixture(autouse=True)
def _loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    loopback_only(monkeypatch)  # the WHIP publisher offers 127.0.0.1 only


def config(**sections: Any) -> dict[str, Any]:
    """One small detector, threshold 0 and start_after 1 (every scored face alerts), API on a free port."""
    api = {"port": 0, "token": TOKEN, "retry_after_s": RETRY_AFTER, **sections.pop("api", {})}
    alerts = {"threshold": 0.0, "start_after": 1, "end_after": 1, "stdout": False, **sections.pop("alerts", {})}
    return small_config(
        detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2, "window_stride": 2}},
        faces={"min_size": 20}, alerts=alerts, api=api, **sections)


async def start(overrides: dict[str, Any]) -> Service:
    monitor = Service(load_config(overrides=overrides, environ={}))
    await monitor.start()
    return monitor


def base(monitor: Service) -> str:
    return f"http://127.0.0.1:{monitor.api_port}"


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    """(status, headers, JSON or text body) of one request with the token."""
    async with http.request(method, url, headers=AUTH, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, resp.headers.copy(), body


def assert_refused(status: int, headers: Any, body: Any, setting: str) -> None:
    """A limit's 503: Retry-After as configured, an error naming the setting."""
    assert status == 503, (status, body)
    assert headers.get("Retry-After") == str(RETRY_AFTER), headers
    assert setting in body["error"], body


# ---------------------------------------------------------------------------------------------- picture size


def peak_growth(path: Path, max_pixels: int) -> dict[str, Any]:
    """Read ``path`` in a fresh interpreter; its frames, error and peak-RSS growth (tests/security/peak_rss.py)."""
    out = subprocess.run([sys.executable, "-m", "tests.security.peak_rss", str(path), str(max_pixels)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_picture_over_max_pixels_is_never_decoded(tmp_path: Path) -> None:
    png = write_large_png(tmp_path / "huge.png", 8192, 8192)  # 192 MiB as RGB
    decoded_kib = 8192 * 8192 * 3 // 1024
    refused = peak_growth(png, IngestConfig().max_pixels)
    assert refused["frames"] == 0
    assert "ingest.max_pixels=8847360" in refused["error"], refused
    assert refused["grew_kib"] < decoded_kib // 8, refused
    # The same read allowed to decode it: the measurement does see the picture.
    allowed = peak_growth(png, 8192 * 8192)
    assert allowed["frames"] == 1 and allowed["error"] is None, allowed
    assert allowed["grew_kib"] > decoded_kib * 3 // 4, allowed


def test_a_stated_size_over_max_pixels_fails_at_open(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "vga.mp4", [np.full((480, 640, 3), 60 * i, np.uint8) for i in range(3)], fps=5)
    source = open_source("cam", str(clip), IngestConfig(max_pixels=640 * 480 - 1, realtime=False))
    with pytest.raises(SourceError, match=r"frame size 640x480 exceeds ingest\.max_pixels=307199$"):
        next(iter(source.frames()))
    # At the limit it plays.
    source = open_source("cam", str(clip), IngestConfig(max_pixels=640 * 480, realtime=False))
    assert [f.image.shape for f in source.frames()] == [(480, 640, 3)] * 3


def test_a_mid_stream_size_change_fails_at_the_larger_picture(tmp_path: Path) -> None:
    clip = write_size_change(tmp_path / "grows.h264", (320, 240), (640, 480))
    source = open_source("cam", str(clip), IngestConfig(max_pixels=100_000, realtime=False))
    shapes = []
    with pytest.raises(SourceError, match=r"frame size 640x480 exceeds ingest\.max_pixels=100000$"):
        for frame in source.frames():
            shapes.append(frame.image.shape)
    assert shapes and set(shapes) == {(240, 320, 3)}, shapes[-3:]  # the smaller ones all went through


def test_the_per_frame_check_names_size_and_limit() -> None:
    check_frame_size(4096, 2160, 4096 * 2160, "cam")  # at the limit: fine
    with pytest.raises(SourceError, match=r"^cam: frame size 4097x2160 exceeds ingest\.max_pixels=8847360$"):
        check_frame_size(4097, 2160, 4096 * 2160, "cam")


# ---------------------------------------------------------------------------------------------- stream cap


def test_max_streams_caps_api_and_whip_streams_together(tmp_path: Path) -> None:
    async def main() -> None:
        monitor = await start(config(api={"max_streams": 2}))
        url = base(monitor)
        try:
            async with aiohttp.ClientSession() as http:
                for sid in ("a", "b"):
                    status, _, body = await call(http, "POST", url + "/streams", json={"id": sid, "url": SYNTH})
                    assert status == 201, body
                assert_refused(*await call(http, "POST", url + "/streams", json={"id": "c", "url": SYNTH}),
                               "api.max_streams=2")
                assert "c" not in monitor.streams
                # A WHIP publisher is a stream too: refused before any negotiation.
                pub = Publisher(http, url, "cam", TOKEN)
                assert await pub.post() == 503 and "api.max_streams=2" in pub.body["error"], pub.body
                assert pub.headers["Retry-After"] == str(RETRY_AFTER)
                await pub.close()

                status, _, _ = await call(http, "DELETE", url + "/streams/b")
                assert status == 204
                await until(lambda: monitor.stream_count() == 1, 10, "the deleted stream to finish")
                pub = Publisher(http, url, "cam", TOKEN)
                assert await pub.post() == 201, pub.body
                # ... and it counts against POST /streams.
                assert_refused(*await call(http, "POST", url + "/streams", json={"id": "c", "url": SYNTH}),
                               "api.max_streams=2")
                assert await pub.delete() == 200
                await pub.close()
                status, _, _ = await call(http, "DELETE", url + "/streams/a")
                assert status == 204
                await until(lambda: monitor.stream_count() == 0, 10, "every stream to finish")

                # Concurrent requests cannot overshoot: streams still starting count.
                results = await asyncio.gather(*(call(http, "POST", url + "/streams", json={"id": f"r{i}", "url": SYNTH})
                                                 for i in range(6)))
                statuses = sorted(status for status, _, _ in results)
                assert statuses == [201, 201, 503, 503, 503, 503], statuses
                assert monitor.stream_count() == 2
        finally:
            await monitor.stop()

    asyncio.run(main())


def test_max_streams_caps_the_fleet_desired_set(tmp_path: Path, redis_server: RedisServer) -> None:
    async def main() -> None:
        monitor = await start(config(
            worker_name="w1", api={"max_streams": 2}, redis={"url": redis_server.url},
            fleet={"enabled": True, "capacity": 1, "lease_ttl_s": 3.0, "tick_s": 0.5}))
        url = base(monitor)
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            async with aiohttp.ClientSession() as http:
                for sid in ("a", "b"):
                    status, _, body = await call(http, "POST", url + "/streams", json={"id": sid, "url": SYNTH})
                    assert status == 201, body
                # Capacity 1: one of them waits unassigned, but both are desired streams.
                assert_refused(*await call(http, "POST", url + "/streams", json={"id": "c", "url": SYNTH}),
                               "api.max_streams")
                assert sorted(await client.hkeys("deepfake:streams")) == [b"a", b"b"]
                status, _, body = await call(http, "POST", url + "/streams", json={"id": "a", "url": SYNTH})
                assert status == 409, body  # an existing id is still a conflict, not a capacity problem
                status, _, _ = await call(http, "DELETE", url + "/streams/b")
                assert status in (202, 204)
                status, _, body = await call(http, "POST", url + "/streams", json={"id": "c", "url": SYNTH})
                assert status == 201, body
        finally:
            await client.aclose()
            await monitor.stop()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------- feed caps


async def first_event(resp: aiohttp.ClientResponse, name: str, timeout: float = 30) -> dict[str, Any]:
    """The data of the next ``name`` event of a Server-Sent Events response."""
    async def read() -> dict[str, Any]:
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[len("event:"):].strip()
            elif line.startswith("data:") and event == name:
                data: dict[str, Any] = json.loads(line[len("data:"):])
                return data
        raise AssertionError(f"the feed ended before a {name!r} event")

    return await asyncio.wait_for(read(), timeout)


def test_sse_and_mjpeg_clients_are_capped(tmp_path: Path) -> None:
    async def main() -> None:
        monitor = await start(config(api={"max_sse_clients": 2, "max_mjpeg_clients": 1}))
        url = base(monitor)
        try:
            async with aiohttp.ClientSession() as http:
                status, _, body = await call(http, "POST", url + "/streams", json={"id": "cam", "url": SYNTH})
                assert status == 201, body
                events = [await http.get(url + "/events", headers=AUTH) for _ in range(2)]
                assert [r.status for r in events] == [200, 200]
                assert_refused(*await call(http, "GET", url + "/events"), "api.max_sse_clients")
                mjpeg = await http.get(url + "/streams/cam/live.mjpeg", headers=AUTH)
                assert mjpeg.status == 200
                assert_refused(*await call(http, "GET", url + "/streams/cam/live.mjpeg"), "api.max_mjpeg_clients")
                # The feeds that were admitted work.
                assert (await first_event(events[1], "streams"))["streams"][0]["id"] == "cam"
                assert (await asyncio.wait_for(mjpeg.content.readline(), 30)) in (b"--frame\r\n", b"\r\n")

                # A client that leaves frees its slot.
                events[0].close()
                mjpeg.close()

                async def admitted(path: str) -> bool:
                    async with http.get(url + path, headers=AUTH) as resp:
                        return resp.status == 200

                await until_async(lambda: admitted("/events"), 10, "a freed /events slot")
                await until_async(lambda: admitted("/streams/cam/live.mjpeg"), 10, "a freed live.mjpeg slot")
                events[1].close()
        finally:
            await monitor.stop()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------- one Pub/Sub


def test_sse_clients_share_one_pubsub_subscription(tmp_path: Path, redis_server: RedisServer) -> None:
    alert = {"alert_id": "elsewhere-1", "event": "start", "seq": 0, "stream_id": "elsewhere"}

    async def pattern_subscribers(client: aioredis.Redis) -> int:
        """Connections on the Redis side with a pattern subscription (CLIENT LIST psub=N>0)."""
        listing = (await client.execute_command("CLIENT", "LIST")).decode()
        return sum(1 for line in listing.splitlines() if "psub=" in line and " psub=0" not in line)

    async def main() -> None:
        monitor = await start(config(redis={"url": redis_server.url, "retry": {"initial_s": 0.2, "max_s": 1.0}}))
        url = base(monitor)
        client = aioredis.Redis.from_url(redis_server.url)
        feeds: list[aiohttp.ClientResponse] = []
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(4):
                    feeds.append(await http.get(url + "/events", headers=AUTH))
                    assert feeds[-1].status == 200
                for resp in feeds:  # each learns the feed is up, the later ones from the hub's state
                    assert await first_event(resp, "feed") == {"source": "redis", "ok": True, "error": None}
                assert await pattern_subscribers(client) == 1
                assert int(await client.execute_command("PUBSUB", "NUMPAT")) == 1

                assert await client.publish("deepfake:alerts:elsewhere", json.dumps(alert)) == 1  # one receiver
                for resp in feeds:
                    assert await first_event(resp, "alert") == alert

                for resp in feeds:
                    resp.close()

                async def released() -> bool:
                    return await pattern_subscribers(client) == 0

                await until_async(released, 10, "the shared subscription to go with the last client")
        finally:
            for resp in feeds:
                resp.close()
            await client.aclose()
            await monitor.stop()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------- slow clients


async def closed_after(reader: asyncio.StreamReader, trickle: asyncio.StreamWriter | None = None,
                       limit: float = 15.0) -> tuple[float, bytes]:
    """Seconds until the server closes the connection, and what it sent meanwhile; with
    ``trickle``, one header byte is sent every 0.2 s until then (a slow-loris client)."""
    started = time.monotonic()
    received = b""

    async def drip() -> None:
        assert trickle is not None
        while True:
            trickle.write(b"X")
            await trickle.drain()
            await asyncio.sleep(0.2)

    dripping = asyncio.create_task(drip()) if trickle is not None else None
    try:
        while time.monotonic() - started < limit:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), limit)
            except ConnectionError:
                break
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError(f"the server kept the connection open for {limit:.0f}s")
    finally:
        if dripping is not None:
            dripping.cancel()
            await asyncio.gather(dripping, return_exceptions=True)
    return time.monotonic() - started, received


def test_slow_and_idle_connections_are_closed_while_feeds_go_on(tmp_path: Path) -> None:
    header_s, keepalive_s = 1.0, 3.0

    async def main() -> None:
        monitor = await start(config(api={"header_timeout_s": header_s, "keepalive_timeout_s": keepalive_s}))
        port = monitor.api_port
        assert port is not None
        try:
            # Slow loris: a request line, then one header byte every 0.2 s.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            elapsed, sent = await closed_after(reader, trickle=writer)
            assert sent == b"" and header_s * 0.9 <= elapsed < keepalive_s, (elapsed, sent)
            writer.close()

            # A connection that never sends anything.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            elapsed, sent = await closed_after(reader)
            assert sent == b"" and header_s * 0.9 <= elapsed < keepalive_s, (elapsed, sent)
            writer.close()

            # Headers in pieces, complete within the limit: served.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for piece in (b"GET /healthcheck HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.2)
            status_line = await asyncio.wait_for(reader.readline(), 10)
            assert status_line.startswith(b"HTTP/1.1 200"), status_line
            # Now kept alive and idle: closed after the keep-alive timeout, not the header one
            # (and a next request trickling in does not extend it).
            writer.write(b"GET /healthcheck HTTP/1.1\r\nX-Slow: ")
            elapsed, _ = await closed_after(reader, trickle=writer)
            assert keepalive_s * 0.8 <= elapsed < keepalive_s + 5, elapsed
            writer.close()

            # A long feed outlives both timeouts.
            async with aiohttp.ClientSession() as http:
                async with http.get(base(monitor) + "/events", headers=AUTH) as resp:
                    assert resp.status == 200
                    started = time.monotonic()
                    while time.monotonic() - started < keepalive_s + 1:
                        await first_event(resp, "streams", timeout=5)
        finally:
            await monitor.stop()

    asyncio.run(main())


def test_a_connection_flood_is_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        monitor = await start(config(api={"max_connections": 4, "header_timeout_s": 2.0}))
        port = monitor.api_port
        assert port is not None
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(4):
                held.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0.3)  # let the server accept them
            # The fifth is closed at once (before the header timeout could apply), with nothing sent.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            elapsed, sent = await closed_after(reader, limit=1.5)
            assert sent == b"", sent
            writer.close()
            # The held ones go at the header timeout, and then the listener serves again.
            for reader, _ in held:
                _, sent = await closed_after(reader)
                assert sent == b""
            async with aiohttp.ClientSession() as http:
                status, _, body = await call(http, "GET", base(monitor) + "/healthcheck")
                assert status == 200, body
        finally:
            for _, writer in held:
                writer.close()
            await monitor.stop()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------- metrics


def series_of(text: str, stream_id: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """(sample name, labels) of every series in a /metrics text whose ``stream`` label is ``stream_id``."""
    return {(s.name, tuple(sorted(s.labels.items()))) for family in text_string_to_metric_families(text)
            for s in family.samples if s.labels.get("stream") == stream_id}




@pytest.mark.parametrize("sink", ["jsonl", "redis"])
def test_a_deleted_stream_leaves_no_series(tmp_path: Path, request: pytest.FixtureRequest, sink: str) -> None:
    redis_server: RedisServer | None = request.getfixturevalue("redis_server") if sink == "redis" else None

    async def main() -> None:
        alerts = {"jsonl": str(tmp_path / "alerts.jsonl")} if redis_server is None else {}
        monitor = await start(config(redis={"url": redis_server.url} if redis_server else {}, alerts=alerts))
        url = base(monitor)
        client = aioredis.Redis.from_url(redis_server.url) if redis_server else None
        try:
            async with aiohttp.ClientSession() as http:
                for sid in ("gone", "stays"):
                    status, _, body = await call(http, "POST", url + "/streams", json={"id": sid, "url": SYNTH})
                    assert status == 201, body

                async def metrics() -> str:
                    _, _, text = await call(http, "GET", url + "/metrics")
                    return str(text)

                async def produced() -> bool:
                    names = {name for name, _ in series_of(await metrics(), "gone")}
                    return {"stream_monitor_alerts_total", "stream_monitor_frames_dropped_total",
                            "stream_monitor_frames_analysed_total"} <= names

                await until_async(produced, 60, "series with more labels than the stream's (alerts, drops)")
                status, _, _ = await call(http, "DELETE", url + "/streams/gone")
                assert status == 204
                await until(lambda: monitor.stream_count() == 1, 10, "the deleted stream to finish")

                async def delivered() -> bool:  # its last alerts (incidents' ends) are in Redis
                    text = await metrics()
                    pending = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                               if s.name == "stream_monitor_alerts_pending"]
                    return pending == [0.0]

                await until_async(delivered, 10, "the alert outbox to drain")
                if client is not None:
                    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange("deepfake:alerts"))
                    emitted = [json.loads(fields[b"alert"]) for _, fields in entries]
                else:
                    emitted = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
                assert any(e["stream_id"] == "gone" and e["event"] == "end" for e in emitted)
                text = await metrics()
                assert series_of(text, "gone") == set(), sorted(series_of(text, "gone"))
                assert series_of(text, "stays"), "the other stream's series must stay"
        finally:
            if client is not None:
                await client.aclose()
            await monitor.stop()

    asyncio.run(main())
