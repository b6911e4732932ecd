"""Shutdown in budgets (issue 14): stopping while a detector is stuck inside a forward.

Real Redis, real RTSP (gst-rtsp-server), real HTTP, the real CLI in a subprocess. The stuck
detector is CADDM's real small model behind :class:`tests.support.slow_detector.SlowForward`:
its first batches score (incidents start), the next one blocks in the forward until released,
as a full-size window on a CPU does for tens of seconds. Bounds on stop times are the
contract (``grace`` plus 5 s), not speed measurements.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import redis
import yaml

from stream_monitor.service import Service
from stream_monitor.config import load_config
from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
from stream_monitor.pipeline import StreamPipeline
from stream_monitor.types import Frame
from tests.support.polling import sample, until
from tests.support.rtsp import RtspServer
from tests.support.schema import check_schema
from tests.support.servers import RedisServer, wait_until
from tests.support.slow_detector import SlowForward
from tests.support.small import SMALL_DETECTORS, small_config

ROOT = Path(__file__).resolve().parents[2]
MARGIN_S = 5.0  # the contract: a stop returns (the process exits) within grace + 5 s
CADDM: dict[str, Any] = {"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 1, "window_stride": 1}}
ALERTS: dict[str, Any] = {"threshold": 0.0, "start_after": 1, "stdout": False}  # every scored track opens an incident


def _alerts(url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange("deepfake:alerts")  # type: ignore[assignment]
        return [json.loads(fields[b"alert"]) for _, fields in entries]
    finally:
        client.close()


def _check_every_start_ended(alerts: list[dict[str, Any]], reason: str, fenced: bool = False) -> None:
    """Every incident has its ``end``; those still open at the stop (at least one) say ``reason``,
    the others ended as tracks do (the RTSP file mount restarts: its tracks end). ``fenced``:
    the stream held a fleet lease (its events carry ``lease_epoch``)."""
    starts = {a["alert_id"] for a in alerts if a["event"] == "start"}
    ends = {a["alert_id"]: a for a in alerts if a["event"] == "end"}
    assert starts, "the test needs incidents that started"
    assert starts <= set(ends), f"incidents never ended: {sorted(starts - set(ends))}"
    reasons = [ends[i]["reason"] for i in starts]
    assert reason in reasons and set(reasons) <= {reason, "track_ended", "below_threshold"}, reasons
    for a in alerts:
        check_schema(a, fenced=fenced)


def test_stop_while_a_forward_is_stuck_ends_every_incident_within_the_grace(
        rtsp_server: RtspServer, redis_server: RedisServer) -> None:
    grace = 3.0
    cfg = load_config(overrides=small_config(detectors=CADDM, alerts=ALERTS, redis={"url": redis_server.url},
                                             faces={"min_size": 20}), environ={})

    async def main() -> None:
        with SlowForward(fast=3) as slow:
            monitor = Service(cfg)
            stopped = False
            try:
                await monitor.start()
                await monitor.add_stream("cam", rtsp_server.url("/face"), trusted=True)
                await until(lambda: slow.blocked.is_set() and monitor.policy is not None
                            and monitor.policy.active_incidents() > 0, 60, "an incident open and a stuck forward")
                t0 = time.monotonic()
                await monitor.stop(grace=grace)
                stopped = True
                assert time.monotonic() - t0 < grace + MARGIN_S
            finally:
                slow.release.set()
                if not stopped:
                    await monitor.stop(grace=1.0)
            assert sample(monitor.metrics, "stream_monitor_work_abandoned_total", kind="window") >= 1
            assert monitor.policy is not None and monitor.policy.active_incidents() == 0

    asyncio.run(main())
    _check_every_start_ended(_alerts(redis_server.url), "shutdown")


def test_fleet_delete_while_busy_releases_the_lease_and_the_id_can_be_added_again(
        tmp_path: Path, redis_server: RedisServer) -> None:
    source = "synthetic:astronaut?fps=10&size=320x240"
    cfg = load_config(overrides=small_config(
        worker_name="wa", detectors=CADDM, alerts=ALERTS, api={"port": 0}, redis={"url": redis_server.url},
        fleet={"enabled": True, "lease_ttl_s": 3.0, "tick_s": 0.25}), environ={})
    client = redis.Redis.from_url(redis_server.url)

    async def main() -> None:
        with SlowForward(fast=3) as slow:
            monitor = Service(cfg)
            try:
                await monitor.start()
                async with aiohttp.ClientSession(f"http://127.0.0.1:{monitor.api_port}") as http:
                    async with http.post("/streams", json={"id": "cam", "url": source}) as resp:
                        assert resp.status == 201, await resp.text()
                    await until(lambda: slow.blocked.is_set() and monitor.policy is not None
                                and monitor.policy.active_incidents() > 0, 60, "an incident open and a stuck forward")
                    # The lease holds "<epoch>:<worker>" (fleet.py: fenced leases).
                    assert client.get("deepfake:lease:cam") == b"1:wa"
                    async with http.delete("/streams/cam") as resp:
                        assert resp.status == 204, await resp.text()
                    assert client.get("deepfake:lease:cam") is None, "DELETE returned with the lease still held"
                    await asyncio.sleep(1.0)  # a few fleet ticks: nothing renews or re-creates it
                    assert client.get("deepfake:lease:cam") is None
                    async with http.post("/streams", json={"id": "cam", "url": source}) as resp:
                        assert resp.status == 201, await resp.text()
                    await until(lambda: client.get("deepfake:lease:cam") == b"2:wa", 30, "cam claimed again")
            finally:
                slow.release.set()
                await monitor.stop(grace=2.0)

    asyncio.run(main())
    alerts = _alerts(redis_server.url)
    first_run = [a for a in alerts if a["event"] == "start"][:1]
    ended = {a["alert_id"]: a["reason"] for a in alerts if a["event"] == "end"}
    assert first_run and ended.get(first_run[0]["alert_id"]) == "stream_removed", ended
    client.close()


def test_sigterm_under_load_exits_within_the_grace_and_releases_leases(
        tmp_path: Path, rtsp_server: RtspServer, redis_server: RedisServer) -> None:
    grace = 10.0  # the default shutdown_grace_s
    cfg: dict[str, Any] = {
        "detectors": {"device": "cpu", "random_weights": True, **SMALL_DETECTORS, "enabled": ["caddm"],
                      "caddm": {**SMALL_DETECTORS["caddm"], **CADDM["caddm"]}},
        "faces": {"min_size": 20}, "alerts": ALERTS, "redis": {"url": redis_server.url},
        "fleet": {"enabled": True, "lease_ttl_s": 30.0, "tick_s": 0.5}, "worker_name": "wproc",
        "api": {"source_hosts": ["127.0.0.1"]}}  # fleet streams go through the source policy
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    marker = tmp_path / "blocked"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "stderr.log"  # a file, not a pipe: nobody reads a pipe while the worker runs
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.slow_detector", "3", str(marker), "--", "run",
                                 rtsp_server.url("/face"), "--config", str(path)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    client = redis.Redis.from_url(redis_server.url)
    try:
        def busy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the worker exited early: {log.read_text()[-3000:]}")
            return marker.exists() and any(a["event"] == "start" for a in _alerts(redis_server.url))

        wait_until(busy, 120, "an incident started and a stuck forward")
        leases = [k for k in client.scan_iter("deepfake:lease:*")]
        assert leases and all(client.get(k).split(b":", 1)[-1] == b"wproc" for k in leases)  # "<epoch>:<worker>"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace + MARGIN_S + 20)  # past the bound: still report how far
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit after SIGTERM: {log.read_text()[-3000:]}") from None
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert elapsed < grace + MARGIN_S, f"exited {elapsed:.1f}s after SIGTERM"
    assert list(client.scan_iter("deepfake:lease:*")) == [], "a lease outlived the worker"
    assert client.zcard("deepfake:workers") == 0
    _check_every_start_ended(_alerts(redis_server.url), "shutdown", fenced=True)
    client.close()


def test_per_track_state_is_bounded_after_many_tracks(redis_server: RedisServer) -> None:
    """Tracks that come and go (here: a connection restarting under each one) leave nothing
    behind in the pipeline: ended track ids, scores and pending windows are forgotten."""
    cfg = load_config(overrides=small_config(detectors=CADDM, alerts={**ALERTS, "cooldown_s": 0.0},
                                             redis={"url": redis_server.url}, faces={"min_size": 20}), environ={})
    spec = SyntheticSpec(fps=10, width=320, height=240, faces=1, seconds=1)
    image = next(iter(synthetic_frames(spec)))
    tracks = 20

    async def main() -> StreamPipeline:
        monitor = Service(cfg)
        try:
            await monitor.start()
            assert monitor.policy is not None
            pipeline = StreamPipeline("cam", monitor.engine, monitor.policy, monitor.sink, monitor.metrics,
                                      end_wait_s=1.0)
            await pipeline.open()
            for session in range(1, tracks + 1):
                pipeline.on_session(session)  # a new connection ends every track of the last
                frame = Frame("cam", session, 0.0, time.time(), np.ascontiguousarray(image))
                await pipeline.on_frame(frame)
                await until(lambda: not pipeline._inflight and not pipeline._unscored, 30, "the frame scored")
            pipeline.on_session(tracks + 1)
            await until(lambda: not pipeline._tasks, 30, "the last track ended")
            await asyncio.sleep(0.1)
            assert pipeline.stats.frames_analysed == tracks
            assert len(pipeline._ended) == 0, f"{len(pipeline._ended)} ended track ids kept"
            assert pipeline._scores == {} and pipeline._pending_scores == {}
            assert pipeline._seen_tracks == set() and pipeline.stats.tracks_seen == tracks
            assert len(pipeline._last_window) == 0
            assert monitor.policy.active_incidents() == 0
            await pipeline.close()
            return pipeline
        finally:
            await monitor.stop(grace=2.0)

    asyncio.run(main())
    alerts = _alerts(redis_server.url)
    assert sum(a["event"] == "start" for a in alerts) == tracks  # one incident per track: they came and went
    _check_every_start_ended(alerts, "track_ended")
