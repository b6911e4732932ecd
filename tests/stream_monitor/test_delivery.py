"""Alert delivery under Redis faults, on a real Redis: exactly once, errors told apart, a durable
outbox (issue 14, parts 2 and 3)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from stream_monitor.alerts.outbox import Outbox
from stream_monitor.alerts.policy import AlertEvent
from stream_monitor.alerts.publisher import RedisPublisher
from stream_monitor.metrics import Metrics
from stream_monitor.retry import Backoff
from tests.support.api import alert_log
from tests.support.polling import sample, until
from tests.support.servers import RedisServer, free_port
from tests.support.tcp_proxy import DelayingProxy


def _event(seq: int, kind: str = "update", alert: str = "a1", stream: str = "cam1") -> AlertEvent:
    return AlertEvent({"alert_id": alert, "event": kind, "seq": seq, "stream_id": stream}, 0.0)


def _incident(alert: str, updates: int) -> list[AlertEvent]:
    return [_event(0, "start", alert)] + [_event(i, "update", alert) for i in range(1, updates + 1)] + \
        [_event(updates + 1, "end", alert)]


async def _entries(url: str) -> list[tuple[str, int]]:
    return [(p["alert_id"], p["seq"]) for p in await alert_log(url)]


def test_a_reply_after_the_timeout_does_not_duplicate(redis_server: RedisServer) -> None:
    """Redis applies the batch, the reply comes after the socket timeout, the batch is resent:
    each event is in the stream and on Pub/Sub exactly once."""
    proxy = DelayingProxy(redis_server.port)

    async def main() -> None:
        sub = aioredis.Redis.from_url(redis_server.url)
        pubsub = sub.pubsub()
        await pubsub.psubscribe("deepfake:alerts:*")
        pub = RedisPublisher(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=0.5,
                             backoff=Backoff(initial=0.1, maximum=0.2, jitter=0.0), metrics=Metrics())
        await pub.start()
        events = _incident("a1", 3)
        pub.publish(events[0])
        await until(lambda: pub.pending == 0, 10, "the first event delivered")
        proxy.hold_next(1, 1.5)  # the next reply (the batch's) comes 3 timeouts late
        for event in events[1:]:
            pub.publish(event)
        await until(lambda: pub.pending == 0, 15, "the batch delivered")
        assert pub.duplicates >= 1  # the resend was recognised, not written again
        published: list[Any] = []
        for _ in range(20):  # until quiet: a duplicate would arrive with the others
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is not None:
                published.append(json.loads(msg["data"])["seq"])
        await pub.close(timeout=1)
        await pubsub.aclose()
        await sub.aclose()
        assert await _entries(redis_server.url) == [("a1", s) for s in range(5)]
        assert published == list(range(5))

    try:
        asyncio.run(main())
    finally:
        proxy.close()


def test_command_errors_are_not_retried_as_outages(redis_server: RedisServer) -> None:
    """WRONGTYPE and OOM are Redis refusing, not Redis away: /readyz says so, events are kept and
    delivered once the cause is gone."""
    async def main() -> None:
        admin = aioredis.Redis.from_url(redis_server.url)
        metrics = Metrics()
        pub = RedisPublisher(redis_server.url, socket_timeout=1.0, backoff=Backoff(initial=0.1, maximum=0.3),
                             metrics=metrics)
        await pub.start()
        await admin.set("deepfake:alerts", "not a stream")
        first = _incident("a1", 1)
        for event in first:
            pub.publish(event)
        await until(lambda: any("WRONGTYPE" in p for p in pub.problems()), 10, "the refusal on /readyz")
        assert "refuses alert writes" in pub.problems()[0] and pub.pending == 3
        await admin.delete("deepfake:alerts")
        await until(lambda: pub.pending == 0 and not pub.problems(), 10, "delivery after the key was fixed")

        await admin.config_set("maxmemory", "1")
        second = _incident("a2", 1)
        for event in second:
            pub.publish(event)
        await until(lambda: any("maxmemory" in p for p in pub.problems()), 10, "the OOM refusal")
        assert pub.pending == 3
        await admin.config_set("maxmemory", "0")
        await until(lambda: pub.pending == 0 and not pub.problems(), 10, "delivery after memory was freed")
        await pub.close(timeout=1)
        await admin.aclose()
        assert sample(metrics, "stream_monitor_alert_publish_failures_total") >= 2
        assert await _entries(redis_server.url) == [("a1", 0), ("a1", 1), ("a1", 2), ("a2", 0), ("a2", 1), ("a2", 2)]

    asyncio.run(main())


def test_read_only_redis_reconnects(tmp_path: Path, redis_server: RedisServer) -> None:
    """A replica answers READONLY: the publisher drops its connections, keeps the events and
    delivers them when the server is writable again."""
    primary = RedisServer(tmp_path / "primary")
    (tmp_path / "primary").mkdir()
    primary.start()

    async def main() -> None:
        admin = aioredis.Redis.from_url(redis_server.url)
        pub = RedisPublisher(redis_server.url, socket_timeout=1.0, backoff=Backoff(initial=0.1, maximum=0.3))
        await pub.start()
        await admin.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
        for event in _incident("a1", 1):
            pub.publish(event)
        await until(lambda: any("ReadOnly" in p for p in pub.problems()), 10, "writes refused by the replica")
        assert pub.pending == 3
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        await until(lambda: pub.pending == 0, 10, "delivery once writable")
        await pub.close(timeout=1)
        await admin.aclose()
        assert await _entries(redis_server.url) == [("a1", 0), ("a1", 1), ("a1", 2)]

    try:
        asyncio.run(main())
    finally:
        primary.stop()


def test_the_spool_keeps_order_and_survives_a_restart(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis away: events beyond memory spill to the spool, what is left at shutdown joins them, and
    the next start delivers everything in order, once; a torn line is skipped and counted."""
    spool = tmp_path / "spool" / "w1.alerts.jsonl"
    events = _incident("a1", 6) + _incident("a2", 2)

    async def offline() -> None:
        metrics = Metrics()
        pub = RedisPublisher(f"redis://127.0.0.1:{free_port()}/0", outbox_max=3, socket_timeout=0.2,
                             backoff=Backoff(initial=0.1, maximum=0.2), metrics=metrics, spool=spool)
        await pub.start()
        for event in events:
            pub.publish(event)
        assert pub.pending == len(events) and pub.dropped == 0
        await pub.close(timeout=0.3)
        assert sample(metrics, "stream_monitor_alerts_dropped_total", reason="shutdown") == 0

    asyncio.run(offline())
    lines = spool.read_bytes().splitlines()
    assert [json.loads(line)["payload"]["seq"] for line in lines] == [e.payload["seq"] for e in events]
    with open(spool, "ab") as f:
        f.write(b'{"payload": {"alert_id": "torn"')  # a crash in the middle of a write

    async def online() -> None:
        metrics = Metrics()
        pub = RedisPublisher(redis_server.url, outbox_max=3, metrics=metrics, spool=spool)
        await pub.start()
        pub.publish(_event(0, "start", "a3"))
        await until(lambda: pub.pending == 0, 10, "the spool delivered")
        await pub.close(timeout=1)
        assert sample(metrics, "stream_monitor_alerts_dropped_total", reason="corrupt_spool") == 1

    asyncio.run(online())
    want = [(e.payload["alert_id"], e.payload["seq"]) for e in events] + [("a3", 0)]
    assert asyncio.run(_entries(redis_server.url)) == want
    assert spool.read_bytes() == b""


def test_outbox_keeps_starts_and_ends_when_it_must_drop() -> None:
    dropped: list[tuple[Any, str]] = []
    box = Outbox(4, on_drop=lambda event, reason: dropped.append((event.payload["seq"] if event else None, reason)))
    for event in _incident("a1", 5):  # start, 5 updates, end
        box.append(event)
    assert [e.event for e in box.peek(10)] == ["start", "update", "update", "end"]
    assert dropped == [(1, "overflow"), (2, "overflow"), (3, "overflow")]
    box2 = Outbox(2, on_drop=lambda event, reason: dropped.append((event.event if event else None, reason)))
    for kind in ("start", "end", "start"):
        box2.append(_event(0, kind))
    assert [e.event for e in box2.peek(5)] == ["end", "start"]  # no update left: the oldest goes
