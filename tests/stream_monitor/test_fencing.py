"""Fenced leases on a real Redis: epochs, refused stale owners, orphaned incidents, consumers.

Every claim of a stream takes a new epoch (``INCR {prefix}:epoch:{id}``); alerts carry it as
``lease_epoch``; the emit script refuses an event once a later owner has claimed its stream;
a new owner ends the incidents the previous one left open (``reason`` ``owner_lost``); and
``alerts tail`` skips events of stale owners. The process test pauses a worker past its lease
(SIGSTOP) and kills another (SIGKILL), the two failures issue 14 reproduced.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from stream_monitor.alerts.policy import AlertEvent
from stream_monitor.alerts.publisher import RedisPublisher
from stream_monitor.alerts.tail import tail
from stream_monitor.metrics import Metrics
from tests.support.polling import sample
from tests.support.schema import check_schema, metric
from tests.support.fleet_worker import WorkerProcess
from tests.support.servers import RedisServer, stop_process, wait_until

TTL_S = 2.0
TICK_S = 0.25
SOURCE = "synthetic:astronaut?fps=5&size=240x180"


def _event(seq: int, epoch: int | None, worker: str, alert: str = "a1", kind: str = "") -> AlertEvent:
    kind = kind or ("update" if seq else "start")
    return AlertEvent({"alert_id": alert, "event": kind, "seq": seq, "stream_id": "cam", "worker": worker,
                       "lease_epoch": epoch}, 0.0)


async def _settle(pub: RedisPublisher) -> None:
    for _ in range(100):
        if pub.pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pub.pending} events still queued")


def test_redis_refuses_events_of_an_owner_older_than_the_lease(redis_server: RedisServer) -> None:
    async def main() -> None:
        client: Any = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        metrics = Metrics()
        assert sample(metrics, "stream_monitor_alerts_dropped_total", reason="stale_owner") == 0  # pre-created
        pub = RedisPublisher(redis_server.url, metrics=metrics)
        told: list[tuple[str, int]] = []
        pub.on_stale = lambda sid, epoch: told.append((sid, epoch))
        await pub.start()
        try:
            # w2 claimed the stream under epoch 2; w1 (epoch 1) was paused past its lease.
            await client.set("deepfake:epoch:cam", 2)
            await client.set("deepfake:lease:cam", "2:w2", px=60_000)
            pub.publish(_event(0, 1, "w1", alert="old"))                # refused: a later epoch exists
            pub.publish(_event(0, 2, "w2", alert="new"))                # the owner: written
            pub.publish(_event(1, 2, "w2", alert="new"))
            pub.publish(_event(0, None, "solo", alert="solo"))          # outside a fleet: never fenced
            await _settle(pub)
            log = [json.loads(f["alert"]) for _, f in await client.xrange("deepfake:alerts")]
            assert [(e["alert_id"], e["seq"]) for e in log] == [("new", 0), ("new", 1), ("solo", 0)]
            assert told == [("cam", 1)] and pub.stale == 1
            assert sample(metrics, "stream_monitor_alerts_dropped_total", reason="stale_owner") == 1
            # The open incidents of fenced streams, for the next owner to end.
            assert list(await client.hkeys("deepfake:open:cam")) == ["new"]
            assert json.loads(await client.hget("deepfake:open:cam", "new"))["seq"] == 1
            assert 0 < await client.ttl("deepfake:open:cam") <= pub.dedupe_ttl_s
            # Someone else's value in the lease (same epoch number, other worker): refused too.
            pub.publish(_event(2, 2, "w3", alert="new"))
            # The owner released the lease after queueing its end and nobody claimed since:
            # its end is still accepted (a graceful stop's last events, a replayed spool).
            await _settle(pub)
            await client.delete("deepfake:lease:cam")
            pub.publish(_event(2, 2, "w2", alert="new", kind="end"))
            await _settle(pub)
            log = [json.loads(f["alert"]) for _, f in await client.xrange("deepfake:alerts")]
            assert [(e["alert_id"], e["seq"], e["worker"]) for e in log][-1] == ("new", 2, "w2")
            assert len(log) == 4 and told == [("cam", 1), ("cam", 2)]
            assert not await client.exists("deepfake:open:cam")  # the end removed the incident
        finally:
            await pub.close()
            await client.aclose()

    asyncio.run(main())


def test_alerts_tail_rejects_events_of_stale_owners(redis_server: RedisServer) -> None:
    def line(alert: str, epoch: int | None, stream: str = "cam") -> str:
        return json.dumps({"alert_id": alert, "event": "start", "seq": 0, "stream_id": stream, "lease_epoch": epoch})

    async def run(reject: bool) -> tuple[list[str], list[str]]:
        client: Any = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        await client.delete("deepfake:alerts")
        # Written around the emit script (an older writer): epoch 3, then a stale 2.
        for text in (line("h3", 3), line("h2", 2), line("hsolo", None), line("other", 1, "cam2")):
            await client.xadd("deepfake:alerts", {"alert": text})
        printed: list[str] = []
        skipped: list[str] = []
        live = 1 if reject else 2  # rejected events do not count
        task = asyncio.create_task(tail(redis_server.url, "deepfake", None, 10, live, printed.append,
                                        reject_stale=reject, rejected=skipped.append))
        for _ in range(200):
            if (await client.execute_command("PUBSUB", "NUMPAT")) >= 1:
                break
            await asyncio.sleep(0.02)
        for text in (line("l1", 1), line("l4", 4)):
            await client.publish("deepfake:alerts:cam", text)
        await asyncio.wait_for(task, 10)
        await client.aclose()
        return [json.loads(x)["alert_id"] for x in printed], [json.loads(x)["alert_id"] for x in skipped]

    async def main() -> None:
        assert await run(True) == (["h3", "hsolo", "other", "l4"], ["h2", "l1"])
        assert await run(False) == (["h3", "h2", "hsolo", "other", "l1", "l4"], [])

    asyncio.run(main())


def test_paused_and_killed_owners_are_fenced_and_their_incidents_ended(tmp_path: Path,
                                                                        redis_server: RedisServer) -> None:
    client: Any = redis.Redis.from_url(redis_server.url, decode_responses=True)

    def log() -> list[dict[str, Any]]:
        return [json.loads(f["alert"]) for _, f in client.xrange("deepfake:alerts")]

    def lease() -> tuple[int, str] | None:
        """(epoch, owner) of cam's lease; epoch 0 for a value that names no epoch."""
        value = client.get("deepfake:lease:cam")
        if value is None:
            return None
        epoch, sep, owner = str(value).partition(":")
        return (int(epoch), owner) if sep and epoch.isdigit() else (0, str(value))

    def open_now(worker: str) -> bool:
        """The worker's latest event leaves an incident open (threshold 0: there nearly always is one)."""
        mine = [e for e in log() if e["worker"] == worker]
        return bool(mine) and mine[-1]["event"] != "end"

    def orphans_ended(owner: str, epoch: int, opened: dict[str, str]) -> bool:
        ends = {e["alert_id"]: e for e in log() if e.get("reason") == "owner_lost"}
        return all(a in ends and ends[a]["worker"] == owner and ends[a]["lease_epoch"] == epoch
                   and ends[a]["seq"] == json.loads(last)["seq"] + 1 for a, last in opened.items())

    workers = [WorkerProcess(n, tmp_path, redis_server.url, capacity=1, ttl_s=TTL_S, tick_s=TICK_S).start()
               for n in ("w1", "w2")]
    try:
        for w in workers:
            wait_until(w.ready, 120, f"worker {w.name}")
        client.hset("deepfake:streams", "cam", json.dumps({"url": SOURCE, "added_at": time.time(),
                                                            "added_by": "test"}))
        wait_until(lambda: lease() is not None, 10, "a worker to claim cam")
        e1, name1 = lease()  # type: ignore[misc]
        first = next(w for w in workers if w.name == name1)
        second = next(w for w in workers if w is not first)
        wait_until(lambda: open_now(first.name), 60, f"{first.name} to open an incident")

        # (a) The first owner is paused past its lease and the second takes the stream.
        first.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)  # a batch already sent to Redis lands
        opened = client.hgetall("deepfake:open:cam")
        wait_until(lambda: (lease() or (0, ""))[1] == second.name, TTL_S + 10, f"{second.name} to claim cam")
        claimed_at = len(log())  # the first cannot have written anything since it was paused
        e2 = lease()[0]  # type: ignore[index]
        # Resumed, the first is a stale owner: it stops the stream, and Redis refuses every
        # event it still emits (its ends of the incidents it had open, anything its pipeline
        # still had); it counts them.
        first.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: "lost" in [r["event"] for r in first.records()], 10, f"{first.name} to give the stream up")
        time.sleep(1.0)  # what it still had queued has been sent
        stale = [(e["event"], e.get("lease_epoch")) for e in log()[claimed_at:] if e["worker"] == first.name]
        assert stale == [], f"{first.name} published after {second.name} claimed the stream: {stale}"
        assert metric(first.get("/metrics")[1], "stream_monitor_alerts_dropped_total", reason="stale_owner") >= 1

        # The second claimed under a later epoch and ended the incidents the first left open.
        assert e2 > e1 and opened and all(json.loads(v)["lease_epoch"] == e1 for v in opened.values())
        wait_until(lambda: orphans_ended(second.name, e2, opened), 10, f"{second.name} to end {sorted(opened)}")
        assert all(e["lease_epoch"] >= e2 for e in log()[claimed_at:])
        wait_until(lambda: any(e["worker"] == second.name and e["event"] == "start" for e in log()), 60,
                   f"{second.name} to open its own incident")

        # (b) The second owner is killed with incidents open: once its lease expires the first
        # claims the stream again (epoch 3) and ends them.
        wait_until(lambda: open_now(second.name), 30, f"{second.name} to have an incident open")
        second.proc.send_signal(signal.SIGKILL)
        second.proc.wait(10)
        opened2 = client.hgetall("deepfake:open:cam")
        assert opened2 and all(json.loads(v)["worker"] == second.name for v in opened2.values())
        wait_until(lambda: (lease() or (0, ""))[1] == first.name, TTL_S + 10, f"{first.name} to reclaim cam")
        e3 = lease()[0]  # type: ignore[index]
        assert e3 > e2
        wait_until(lambda: orphans_ended(first.name, e3, opened2), 10, f"{first.name} to end {sorted(opened2)}")
        wait_until(lambda: any(e["lease_epoch"] == e3 and e["event"] == "start" for e in log()), 60,
                   f"{first.name} to open an incident under epoch {e3}")

        # A graceful stop still delivers its ends (the lease goes after them, and an absent
        # lease with no later claim does not fence its owner's last events).
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(60) == 0, first.log.read_text()[-3000:]
        assert client.hlen("deepfake:open:cam") == 0

        # (c) Every alert carries its owner's epoch; epochs only grow along the log; every
        # incident is ended exactly once and its seq numbers are contiguous.
        events = log()
        for ev in events:
            check_schema(ev, fenced=True)
        assert {(e["worker"], e["lease_epoch"]) for e in events if e.get("reason") != "owner_lost"} == \
            {(first.name, e1), (second.name, e2), (first.name, e3)}
        epochs = [e["lease_epoch"] for e in events]
        assert epochs == sorted(epochs)
        incidents: dict[str, list[dict[str, Any]]] = {}
        for ev in events:
            incidents.setdefault(ev["alert_id"], []).append(ev)
        for evs in incidents.values():
            assert [e["seq"] for e in evs] == list(range(len(evs))) and [e["event"] for e in evs][-1] == "end", evs
            assert sum(e["event"] == "end" for e in evs) == 1
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGCONT)
                stop_process(w.proc)
        client.close()


def test_the_operator_pages_redis_feed_drops_stale_owners(redis_server: RedisServer) -> None:
    from stream_monitor.api.events import RedisAlertFeed

    async def main() -> None:
        client: Any = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        got: list[tuple[str, Any]] = []
        feed = RedisAlertFeed(redis_server.url, "deepfake")
        task = asyncio.create_task(feed.run(lambda name, data: got.append((name, data))))
        try:
            for _ in range(200):
                if (await client.execute_command("PUBSUB", "NUMPAT")) >= 1:
                    break
                await asyncio.sleep(0.02)
            for alert, epoch in (("a3", 3), ("a2", 2), ("a4", 4), ("solo", None)):
                await client.publish("deepfake:alerts:cam", json.dumps({"alert_id": alert, "stream_id": "cam",
                                                                        "lease_epoch": epoch}))
            for _ in range(200):
                if any(d.get("alert_id") == "solo" for n, d in got if n == "alert"):
                    break
                await asyncio.sleep(0.02)
            assert [d["alert_id"] for n, d in got if n == "alert"] == ["a3", "a4", "solo"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.aclose()

    asyncio.run(main())
