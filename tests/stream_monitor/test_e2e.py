"""End to end on loopback: a real RTSP server with a face video, a real Redis, the Monitor.

RTSP stream with faces → MTCNN → windows → small detectors (random weights, threshold 0
forces alerts) → Redis Stream and Pub/Sub; Redis stopped for 10 s while alerts flow and
nothing is lost; the RTSP server restarted mid-stream and the stream reconnects while a
second stream keeps running; metrics counted; every incident ends with an ``end`` event.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from stream_monitor.service import Service
from stream_monitor.config import load_config
from tests.support.polling import until, until_async
from tests.support.rtsp import RtspServer
from tests.support.api import alert_log
from tests.support.servers import RedisServer
from tests.support.schema import check_schema, metric
from tests.support.small import small_config

@pytest.fixture
def long_face_video(tmp_path: Path) -> Path:
    from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
    from tests.support.media import write_video

    spec = SyntheticSpec(fps=15, width=320, height=240, faces=1, seconds=60)
    return write_video(tmp_path / "face60.mp4", synthetic_frames(spec), fps=spec.fps)


def test_rtsp_to_redis_with_outage_and_reconnect(tmp_path: Path, long_face_video: Path) -> None:
    redis = RedisServer(tmp_path / "redis", persistent=True)
    (tmp_path / "redis").mkdir()
    redis.start()
    rtsp = RtspServer(tmp_path, files={"/face": long_face_video})
    rtsp.start()
    overrides = small_config(
        detectors={"enabled": ["caddm", "sta"], "sta": {"sample_fps": 4.0, "window_stride": 2,
                                                        "overrides": {"width": 32, "layers": 1, "heads": 2,
                                                                      "adapter_width": 16}}},
        faces={"min_size": 20},
        alerts={"threshold": 0.0, "start_after": 1, "end_after": 1},
        redis={"url": redis.url, "retry": {"initial_s": 0.2, "max_s": 1.0}},
        api={"port": 0},
        ingest={"stall_timeout_s": 4.0, "open_timeout_s": 5.0, "read_timeout_s": 2.0,
                "reconnect": {"initial_s": 0.2, "max_s": 1.0}},
        streams=[{"id": "cam1", "url": rtsp.url("/face")}, {"id": "synth", "url": "synthetic:?fps=10&size=320x240"}],
    )
    cfg = load_config(overrides=overrides, environ={})

    async def main() -> dict[str, Any]:
        sub = aioredis.Redis.from_url(redis.url)
        pubsub = sub.pubsub()
        await pubsub.psubscribe("deepfake:alerts:*")
        live: list[dict[str, Any]] = []

        async def listen() -> None:
            async for msg in pubsub.listen():
                if msg["type"] == "pmessage":
                    live.append({"channel": msg["channel"].decode(), **json.loads(msg["data"])})

        listener = asyncio.create_task(listen())
        monitor = Service(cfg)
        await monitor.start()
        api = f"http://127.0.0.1:{monitor.api_port}"
        out: dict[str, Any] = {}
        try:
            async def enough_alerts() -> bool:
                return len([a for a in await alert_log(redis.url) if a["stream_id"] == "cam1"]) >= 3

            await until_async(enough_alerts, 60, "first alerts in the Redis Stream", interval=0.25)
            await until(lambda: len(live) >= 3, 10, "alerts on Pub/Sub", interval=0.25)

            # Redis down for 10 s while alerts keep coming.
            before = monitor.metrics.registry.get_sample_value("stream_monitor_alerts_total",
                                                               {"stream": "cam1", "event": "update"}) or 0
            redis.stop()
            await asyncio.sleep(10)
            out["pending_during_outage"] = monitor.metrics.registry.get_sample_value("stream_monitor_alerts_pending")
            redis.start()
            async def delivered() -> bool:
                now = monitor.metrics.registry.get_sample_value("stream_monitor_alerts_total",
                                                                {"stream": "cam1", "event": "update"}) or 0
                return now > before and (monitor.metrics.registry.get_sample_value(
                    "stream_monitor_alerts_pending") or 0) == 0

            await until_async(delivered, 30, "the outbox to drain after Redis returned", interval=0.25)

            # RTSP server restarted: cam1 reconnects; synth keeps running meanwhile.
            synth_before = monitor.streams["synth"].status()["frames"]
            cam_before = monitor.streams["cam1"].status()["frames"]
            await asyncio.to_thread(rtsp.restart, 1.0)

            async def reconnected() -> bool:
                st = monitor.streams["cam1"].status()
                return st["state"] == "up" and st["sessions"] >= 2 and st["frames"] > cam_before + 10

            await until_async(reconnected, 40, "cam1 to reconnect after the RTSP restart", interval=0.25)
            out["synth_frames_gained"] = monitor.streams["synth"].status()["frames"] - synth_before
            out["cam1_status"] = monitor.streams["cam1"].status()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{api}/metrics") as resp:
                    out["metrics"] = await resp.text()
                async with http.get(f"{api}/streams/cam1") as resp:
                    out["api_status"] = await resp.json()
                async with http.get(f"{api}/healthcheck") as resp:
                    out["health"] = await resp.json()
        finally:
            await monitor.stop()
            await asyncio.sleep(0.5)
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await pubsub.aclose()
            await sub.aclose()
        out["stream"] = await alert_log(redis.url)
        out["live"] = live
        return out

    try:
        result = asyncio.run(main())
    finally:
        rtsp.stop()
        redis.stop()

    alerts = result["stream"]
    for alert in alerts:
        check_schema(alert)
    cam = [a for a in alerts if a["stream_id"] == "cam1"]
    assert cam, "no alerts from the RTSP stream"
    # Nothing lost across the outage, in order per incident, and every incident ended.
    by_incident: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in alerts:
        by_incident[a["alert_id"]].append(a)
    for alert_id, events in by_incident.items():
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(len(seqs))), (alert_id, seqs)
        assert events[0]["event"] == "start" and events[-1]["event"] == "end", (alert_id, [e["event"] for e in events])
        assert len({(e["stream_id"], e["track_id"]) for e in events}) == 1
    assert result["pending_during_outage"] > 0
    # Pub/Sub: per-stream channels, the same payloads as the log.
    assert result["live"] and all(m["channel"] == f"deepfake:alerts:{m['stream_id']}" for m in result["live"])
    logged = {(a["alert_id"], a["seq"]) for a in alerts}
    assert all((m["alert_id"], m["seq"]) in logged for m in result["live"])
    # Reconnection, the other stream unaffected, and the API.
    assert result["synth_frames_gained"] > 10
    assert result["cam1_status"]["reconnects"] >= 1
    assert result["api_status"]["id"] == "cam1" and result["api_status"]["state"] == "up"
    assert result["health"] == {"healthy": True}
    text = result["metrics"]
    assert metric(text, "stream_monitor_frames_received_total", stream="cam1") > 50
    assert metric(text, "stream_monitor_faces_detected_total", stream="cam1") > 20
    assert metric(text, "stream_monitor_windows_scored_total", detector="caddm") > 3
    assert metric(text, "stream_monitor_windows_scored_total", detector="sta") >= 1
    assert metric(text, "stream_monitor_alerts_total", stream="cam1", event="start") >= 1
    assert metric(text, "stream_monitor_alert_publish_failures_total") >= 1
    assert metric(text, "stream_monitor_stream_reconnects_total", stream="cam1") >= 1
    assert metric(text, "stream_monitor_stream_up", stream="cam1") == 1
    assert metric(text, "stream_monitor_alert_latency_seconds_count") >= len(cam)
