"""The Redis publisher against a real redis-server: Stream, Pub/Sub, outage, outbox bound."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import redis.asyncio as aioredis

from stream_monitor.alerts.policy import AlertEvent
from stream_monitor.alerts.publisher import FanOut, JsonLinesSink, RedisPublisher
from stream_monitor.metrics import Metrics
from stream_monitor.retry import Backoff
from tests.support.api import alert_log
from tests.support.polling import sample
from tests.support.servers import RedisServer


def _event(i: int, stream: str = "cam1", alert: str = "a1") -> AlertEvent:
    return AlertEvent({"alert_id": alert, "event": "update" if i else "start", "seq": i, "stream_id": stream}, 0.0)


def test_stream_and_pubsub(redis_server: RedisServer) -> None:
    async def main() -> None:
        metrics = Metrics()
        sub = aioredis.Redis.from_url(redis_server.url)
        pubsub = sub.pubsub()
        await pubsub.psubscribe("deepfake:alerts:*")
        await pubsub.get_message(timeout=1.0)  # subscription confirmation
        pub = RedisPublisher(redis_server.url, metrics=metrics)
        await pub.start()
        assert pub.problems() == []
        for i in range(3):
            pub.publish(_event(i))
        got = []
        for _ in range(50):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg:
                got.append((msg["channel"], json.loads(msg["data"])))
            if len(got) == 3:
                break
        await pub.close()
        await pubsub.aclose()
        await sub.aclose()
        assert [c for c, _ in got] == [b"deepfake:alerts:cam1"] * 3
        assert [p["seq"] for _, p in got] == [0, 1, 2]
        assert [p["seq"] for p in await alert_log(redis_server.url)] == [0, 1, 2]
        assert sample(metrics, "stream_monitor_alerts_total", stream="cam1", event="update") == 2
        assert sample(metrics, "stream_monitor_alert_latency_seconds_count") == 3
        assert sample(metrics, "stream_monitor_alerts_pending") == 0

    asyncio.run(main())


def test_outage_delays_but_loses_nothing(redis_server: RedisServer) -> None:
    async def main() -> None:
        metrics = Metrics()
        pub = RedisPublisher(redis_server.url, metrics=metrics, backoff=Backoff(initial=0.1, maximum=0.5),
                             socket_timeout=0.5)
        await pub.start()
        pub.publish(_event(0))
        await asyncio.sleep(0.3)
        redis_server.stop()
        for i in range(1, 40):
            pub.publish(_event(i))
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        assert pub.pending > 0 and pub.problems()
        assert sample(metrics, "stream_monitor_alerts_pending") > 0
        assert sample(metrics, "stream_monitor_alert_publish_failures_total") >= 1
        redis_server.start()  # same port, empty database (no persistence)
        for _ in range(100):
            if pub.pending == 0:
                break
            await asyncio.sleep(0.1)
        await pub.close()
        seqs = [p["seq"] for p in await alert_log(redis_server.url)]
        # Event 0 went to the first server; every event from the outage arrives, in order.
        assert seqs[-39:] == list(range(1, 40)) and pub.dropped == 0

    asyncio.run(main())


def test_outbox_bound_drops_updates_before_start_and_end(tmp_path: Any) -> None:
    async def main() -> None:
        metrics = Metrics()
        pub = RedisPublisher("redis://127.0.0.1:9/0", outbox_max=5, metrics=metrics, socket_timeout=0.2,
                             backoff=Backoff(initial=0.1, maximum=0.2))
        await pub.start()
        for i in range(8):
            pub.publish(_event(i))
        assert pub.pending == 5 and pub.dropped == 3
        # The incident's start (seq 0) stays; the oldest updates made room.
        assert [e.payload["seq"] for e in pub.queued()] == [0, 4, 5, 6, 7]
        assert sample(metrics, "stream_monitor_alerts_dropped_total", reason="overflow") == 3
        await pub.close(timeout=0.3)
        # Without a spool, what is undelivered at exit is lost and counted as such.
        assert sample(metrics, "stream_monitor_alerts_dropped_total", reason="shutdown") == 5

    asyncio.run(main())


def test_jsonl_and_fanout() -> None:
    async def main() -> None:
        out = io.StringIO()
        metrics = Metrics()
        sink = FanOut([JsonLinesSink(out=out, metrics=metrics)])
        await sink.start()
        sink.publish(_event(0))
        sink.publish(_event(1, stream="cam2"))
        await sink.close()
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [(p["stream_id"], p["seq"]) for p in lines] == [("cam1", 0), ("cam2", 1)]
        assert sink.problems() == []
        assert sample(metrics, "stream_monitor_alerts_total", stream="cam2", event="update") == 1

    asyncio.run(main())
