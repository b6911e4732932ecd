"""Scale-out in one process: two real monitors (workers) and a real Redis on loopback.

Claims, the fleet-wide API, deletion through another worker, a lease taken away, Redis
going away (leases lapse, streams stop, then come back), ids of local-only streams. The
three-process test with ``kill -9`` is in ``test_fleet_processes.py``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from stream_monitor.errors import StreamExists
from stream_monitor.service import Service
from stream_monitor.config import ConfigError, load_config
from tests.support.polling import sample, until, until_async
from tests.support.servers import RedisServer
from tests.support.small import small_config

SOURCE = "synthetic:astronaut?fps=5&size=240x180"
TTL_S = 1.5
TICK_S = 0.25


def _config(redis_url: str, name: str, tmp: Path, capacity: int = 4) -> Any:
    overrides = small_config(
        worker_name=name,
        detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 2, "window_stride": 2}},
        api={"port": 0}, alerts={"stdout": False}, redis={"url": redis_url},
        fleet={"enabled": True, "capacity": capacity, "lease_ttl_s": TTL_S, "tick_s": TICK_S,
               "journal": str(tmp / f"{name}.jsonl")})
    return load_config(overrides=overrides, environ={})


def journal(tmp: Path, name: str) -> list[dict[str, Any]]:
    path = tmp / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Worker:
    def __init__(self, monitor: Service, session: aiohttp.ClientSession) -> None:
        self.monitor, self.session = monitor, session
        self.name = monitor.cfg.worker_name
        self.base = f"http://127.0.0.1:{monitor.api_port}"

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, **kw) as resp:
            body: Any = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body

    def running(self) -> set[str]:
        return {sid for sid, h in self.monitor.streams.items() if not h.task.done()}


async def _workers(redis_url: str, tmp: Path, names: list[str], capacity: int = 4) -> AsyncIterator[list[Worker]]:
    session = aiohttp.ClientSession()
    monitors: list[Service] = []
    try:
        for name in names:
            monitor = Service(_config(redis_url, name, tmp, capacity))
            monitors.append(monitor)
            await monitor.start()
        yield [Worker(m, session) for m in monitors]
    finally:
        for monitor in monitors:
            await monitor.stop(grace=5.0)
        await session.close()


def test_fleet_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="fleet.enabled needs redis.url"):
        load_config(overrides={"fleet": {"enabled": True}}, environ={})
    with pytest.raises(ConfigError, match="tick_s must be at most a third"):
        load_config(overrides={"redis": {"url": "redis://127.0.0.1:1/0"},
                               "fleet": {"enabled": True, "lease_ttl_s": 3, "tick_s": 2}}, environ={})


def test_streams_spread_once_and_every_worker_sees_the_fleet(tmp_path: Path, redis_server: RedisServer) -> None:
    async def main() -> None:
        gen = _workers(redis_server.url, tmp_path, ["wa", "wb"])
        a, b = await gen.__anext__()
        try:
            for i in range(4):  # all through worker A's API
                status, body = await a.call("POST", "/streams", json={"id": f"cam{i}", "url": SOURCE})
                assert status == 201 and body["owner"] is None and body["state"] == "unassigned", body
            status, body = await b.call("POST", "/streams", json={"id": "cam0", "url": SOURCE})
            assert status == 409, body
            status, body = await b.call("POST", "/streams", json={"id": "bad id", "url": SOURCE})
            assert status == 400, body

            async def analysed_everywhere() -> bool:
                _, view = await b.call("GET", "/streams")
                streams = {s["id"]: s for s in view["streams"]}
                return len(streams) == 4 and all(s["owner"] and s.get("frames_analysed", 0) > 0
                                                 for s in streams.values())

            await until_async(analysed_everywhere, 30, "every stream claimed and analysed")
            # Exactly one worker runs each stream, and it is the owner every view reports.
            assert not a.running() & b.running() and a.running() | b.running() == {f"cam{i}" for i in range(4)}
            assert a.running() and b.running(), "the least-loaded rule spreads streams over both workers"
            for w in (a, b):
                _, view = await w.call("GET", "/streams")
                owners = {s["id"]: s["owner"] for s in view["streams"]}
                assert owners == {sid: ("wa" if sid in a.running() else "wb") for sid in owners}
                assert {x["name"] for x in view["workers"]} == {"wa", "wb"} and view["worker"] == w.name
            remote = sorted(a.running())[0]  # a stream of A, inspected through B
            status, one = await b.call("GET", f"/streams/{remote}")
            assert status == 200 and one["owner"] == "wa" and one["state"] == "up" and one["desired"] is True
            assert (await b.call("GET", "/streams/nope"))[0] == 404
            assert sample(a.monitor.metrics, "stream_monitor_streams_unassigned") == 0
            assert (sample(a.monitor.metrics, "stream_monitor_streams_owned")
                    + sample(b.monitor.metrics, "stream_monitor_streams_owned")) == 4
            assert sample(a.monitor.metrics, "stream_monitor_fleet_workers") == 2

            # Deleted through B while A runs it: A stops it within a tick and gives the lease back.
            status, _ = await b.call("DELETE", f"/streams/{remote}")
            assert status == 202
            await until(lambda: remote not in a.running(), 10, "the owner to stop the deleted stream")
            await until(lambda: any(e["event"] == "deleted" and e["stream"] == remote
                                    for e in journal(tmp_path, "wa")), 10, "the deletion in A's journal")
            client = aioredis.Redis.from_url(redis_server.url)
            try:
                await until_redis(lambda: client.exists(f"deepfake:lease:{remote}"), 0, 5, "the lease released")
                assert not await client.hexists("deepfake:streams", remote)
            finally:
                await client.aclose()
            assert (await b.call("DELETE", f"/streams/{remote}"))[0] == 404
            _, view = await a.call("GET", "/streams")
            assert remote not in {s["id"] for s in view["streams"]}
        finally:
            await gen.aclose()

    asyncio.run(main())


def test_a_lost_lease_stops_the_stream_at_once_and_it_is_reclaimed_when_free(tmp_path: Path,
                                                                              redis_server: RedisServer) -> None:
    async def main() -> None:
        gen = _workers(redis_server.url, tmp_path, ["wa"])
        (a,) = await gen.__anext__()
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            assert (await a.call("POST", "/streams", json={"id": "cam", "url": SOURCE}))[0] == 201
            await until(lambda: "cam" in a.running() and a.monitor.streams["cam"].pipeline.stats.frames_analysed > 2,
                        30, "cam analysed on A")
            pipeline = a.monitor.streams["cam"].pipeline
            # Someone else holds the lease now (as after a partition): A must stop at once.
            await client.set("deepfake:lease:cam", "intruder", px=60_000)
            await until(lambda: "cam" not in a.running(), TICK_S * 4 + 1, "A to abort the stream")
            frozen = pipeline.stats.frames_analysed
            await asyncio.sleep(1.0)
            assert pipeline.stats.frames_analysed == frozen, "an aborted stream analysed more frames"
            assert sample(a.monitor.metrics, "stream_monitor_leases_lost_total") == 1
            assert [e["event"] for e in journal(tmp_path, "wa")] == ["acquired", "lost"]
            await asyncio.sleep(TICK_S * 4)
            assert "cam" not in a.running() and await client.get("deepfake:lease:cam") == "intruder"
            await client.delete("deepfake:lease:cam")  # the intruder is gone: A takes it back
            await until(lambda: "cam" in a.running(), 10, "A to reclaim the stream")
            assert [e["event"] for e in journal(tmp_path, "wa")] == ["acquired", "lost", "acquired"]
        finally:
            await client.aclose()
            await gen.aclose()

    asyncio.run(main())


def test_without_redis_leases_lapse_and_streams_stop_then_resume(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis", persistent=True)
    redis.start()

    async def main() -> None:
        gen = _workers(redis.url, tmp_path, ["wa"])
        (a,) = await gen.__anext__()
        try:
            assert (await a.call("POST", "/streams", json={"id": "cam", "url": SOURCE}))[0] == 201
            await until(lambda: "cam" in a.running(), 30, "cam claimed")
            await asyncio.to_thread(redis.stop)
            stopped_at = asyncio.get_running_loop().time()
            # No renewal can be proven: the stream stops before the key could expire in Redis.
            await until(lambda: "cam" not in a.running(), TTL_S + 2, "the stream to stop without Redis")
            assert asyncio.get_running_loop().time() - stopped_at <= TTL_S + 0.5
            lost = [e for e in journal(tmp_path, "wa") if e["event"] == "lost"]
            assert len(lost) == 1 and "not renewed" in lost[0]["reason"]
            status, ready = await a.call("GET", "/readyz")
            assert status == 503 and any("fleet" in r for r in ready["reasons"]), ready
            assert (await a.call("GET", "/streams"))[0] == 503
            await asyncio.to_thread(redis.start)
            await until(lambda: "cam" in a.running(), 15, "the stream to be reclaimed once Redis is back")
            await until(lambda: a.monitor.problems() == [], 10, "ready again")
        finally:
            await gen.aclose()

    try:
        asyncio.run(main())
    finally:
        redis.stop()


def test_local_streams_hold_their_id_fleet_wide(tmp_path: Path, redis_server: RedisServer) -> None:
    """Streams outside the desired set (WHIP publishers) lease their id like desired ones."""
    async def main() -> None:
        gen = _workers(redis_server.url, tmp_path, ["wa", "wb"])
        a, b = await gen.__anext__()
        try:
            await a.monitor.add_stream("phone", SOURCE)  # as a WHIP session does
            with pytest.raises(StreamExists, match="another worker"):
                await b.monitor.add_stream("phone", SOURCE)
            status, body = await b.call("POST", "/streams", json={"id": "phone", "url": SOURCE})
            assert status == 409 and "WHIP" in body["error"]
            assert (await a.call("POST", "/streams", json={"id": "desk", "url": SOURCE}))[0] == 201
            with pytest.raises(StreamExists, match="desired"):
                await b.monitor.add_stream("desk", SOURCE)
            await until(lambda: "desk" in a.running() | b.running(), 30, "desk claimed")
            _, view = await b.call("GET", "/streams")
            phone = [s for s in view["streams"] if s["id"] == "phone"]
            assert phone and phone[0]["owner"] == "wa" and phone[0]["desired"] is False
            assert (await b.call("DELETE", "/streams/phone"))[0] == 404  # only its worker can end it
            await a.monitor.remove_stream("phone")
            client = aioredis.Redis.from_url(redis_server.url)
            try:
                await until_redis(lambda: client.exists("deepfake:lease:phone"), 0, 5, "phone's lease released")
            finally:
                await client.aclose()
            await b.monitor.add_stream("phone", SOURCE)  # free again
            assert "phone" in b.running()
        finally:
            await gen.aclose()

    asyncio.run(main())


async def until_redis(read: Any, want: Any, timeout: float, what: str) -> None:
    async def check() -> bool:
        return bool(await read() == want)

    await until_async(check, timeout, what)


def test_a_finished_file_leaves_the_fleet_instead_of_being_replayed(tmp_path: Path,
                                                                     redis_server: RedisServer) -> None:
    async def main() -> None:
        gen = _workers(redis_server.url, tmp_path, ["wa", "wb"])
        a, b = await gen.__anext__()
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            finite = "synthetic:astronaut?fps=5&size=240x180&seconds=2"
            assert (await b.call("POST", "/streams", json={"id": "clip", "url": finite}))[0] == 201
            await until(lambda: any(e["event"] == "ended" for w in ("wa", "wb") for e in journal(tmp_path, w)),
                        30, "the finite stream to end")
            assert not await client.hexists("deepfake:streams", "clip")
            assert not await client.exists("deepfake:lease:clip")
            await asyncio.sleep(TICK_S * 4)  # nobody claims it again
            events = [e["event"] for w in ("wa", "wb") for e in journal(tmp_path, w)]
            assert events.count("acquired") == 1 and events.count("ended") == 1, events
            _, view = await a.call("GET", "/streams")
            assert view["streams"] == []
        finally:
            await client.aclose()
            await gen.aclose()

    asyncio.run(main())
