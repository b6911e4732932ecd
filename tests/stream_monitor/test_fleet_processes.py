"""Three worker processes, one Redis, six streams: ownership, ``kill -9``, graceful hand-over.

Each worker is ``python -m stream_monitor serve`` with its own config, API port and ownership
journal (its own record of when it held each stream). Streams are added through different
workers' APIs. Then one worker is killed with SIGKILL and its streams must resume on the
others within the lease TTL plus 5 s; another is stopped with SIGTERM and hands its streams
over, with every alert incident it had opened ended. Finally the journals and the alert log
show that no stream was ever held by two workers at once.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from tests.support.fleet_worker import WorkerProcess
from tests.support.servers import RedisServer, stop_process, wait_until

TTL_S = 3.0
TICK_S = 0.5
SOURCE = "synthetic:astronaut?fps=5&size=240x180"
STREAMS = [f"cam{i}" for i in range(6)]


def _view(worker: WorkerProcess) -> dict[str, dict[str, Any]]:
    status, body = worker.call("GET", "/streams")
    assert status == 200, body
    return {s["id"]: s for s in body["streams"]}


def _all_running(worker: WorkerProcess, ids: list[str], exclude: set[str]) -> bool:
    """Every stream owned by a live worker (not in ``exclude``) that reports analysed frames."""
    view = _view(worker)
    return all(sid in view and view[sid]["owner"] not in (None, *exclude) and view[sid].get("state") == "up"
               and view[sid].get("frames_analysed", 0) > 0 for sid in ids)


def _intervals(workers: list[WorkerProcess], end: float) -> dict[str, list[tuple[float, float, str]]]:
    """Per stream, each worker's holding intervals from its own journal: from ``acquired`` to
    the next released/deleted/ended/lost; a killed worker's open intervals end at the kill."""
    out: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for w in workers:
        start: dict[str, float] = {}
        for rec in w.records():
            assert rec["worker"] == w.name
            if rec["event"] == "acquired":
                assert rec["stream"] not in start, f"{w.name} acquired {rec['stream']} twice"
                start[rec["stream"]] = rec["t"]
            else:
                out[rec["stream"]].append((start.pop(rec["stream"]), rec["t"], w.name))
        for sid, t0 in start.items():
            out[sid].append((t0, w.killed_at if w.killed_at is not None else end, w.name))
    return out


def test_three_workers_share_six_streams_survive_kill_and_hand_over(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    workers = [WorkerProcess(f"w{i}", tmp_path, server.url, capacity=6, ttl_s=TTL_S, tick_s=TICK_S, sample_fps="all")
               for i in range(1, 4)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            wait_until(w.ready, 120, f"worker {w.name}")
        for i, sid in enumerate(STREAMS):  # two streams through each worker's API
            status, body = workers[i % 3].call("POST", "/streams", {"id": sid, "url": SOURCE})
            assert status == 201, body
        wait_until(lambda: _all_running(workers[0], STREAMS, set()), 60, "all six streams running")

        # Each stream is owned by exactly one worker, and every worker's view agrees.
        views = [_view(w) for w in workers]
        owners = {sid: views[0][sid]["owner"] for sid in STREAMS}
        assert all({sid: v[sid]["owner"] for sid in STREAMS} == owners for v in views)
        held = {w.name: {r["stream"] for r in w.records() if r["event"] == "acquired"} for w in workers}
        assert {sid: [n for n, s in held.items() if sid in s] for sid in STREAMS} == {sid: [o] for sid, o in
                                                                                      owners.items()}
        assert all(held.values()), f"the least-loaded rule left a worker idle: {held}"

        # kill -9 the busiest worker: its leases expire and the others take its streams.
        victim = max(workers, key=lambda w: len(held[w.name]))
        moved = sorted(held[victim.name])
        others = [w for w in workers if w is not victim]
        assert victim.proc is not None
        victim.killed_at = time.time()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        wait_until(lambda: _all_running(others[0], STREAMS, {victim.name}), TTL_S + 5.0,
                   f"{victim.name}'s streams {moved} to resume elsewhere")
        resumed_s = time.time() - victim.killed_at
        assert resumed_s <= TTL_S + 5.0

        # SIGTERM another: it finishes its streams, ends its incidents, gives the leases back.
        leaving, staying = others
        leaving_streams = sorted(sid for sid, s in _view(staying).items() if s["owner"] == leaving.name)
        assert leaving.proc is not None
        leaving.proc.send_signal(signal.SIGTERM)
        assert leaving.proc.wait(60) == 0, leaving.log.read_text()[-3000:]
        wait_until(lambda: _all_running(staying, STREAMS, {victim.name, leaving.name}), 15,
                   f"{leaving.name}'s streams {leaving_streams} to move to {staying.name}")
        released = {r["stream"] for r in leaving.records() if r["event"] == "released"}
        assert set(leaving_streams) <= released
        assert staying.proc is not None
        staying.proc.send_signal(signal.SIGTERM)
        assert staying.proc.wait(60) == 0, staying.log.read_text()[-3000:]
        end = time.time()

        # Never two workers on one stream: the journals' intervals do not overlap, and every
        # alert event a worker published for a stream lies inside one of its intervals.
        intervals = _intervals(workers, end)
        for sid in STREAMS:
            spans = sorted(intervals[sid])
            if sid in moved or sid in leaving_streams:
                assert len({w for _, _, w in spans}) >= 2, f"{sid} should have changed hands: {spans}"
            for (s0, e0, w0), (s1, _, w1) in zip(spans, spans[1:]):
                assert e0 <= s1, f"{sid}: {w0} held it until {e0} but {w1} took it at {s1}"
        client = redis.Redis.from_url(server.url)
        events = [json.loads(fields[b"alert"]) for _, fields in client.xrange("deepfake:alerts")]
        client.close()
        assert events, "threshold 0 must give alerts"
        for ev in events:
            t = dt.datetime.fromisoformat(ev["emitted_at"]).timestamp()
            assert any(w == ev["worker"] and s - 0.002 <= t <= e + 0.002 for s, e, w in intervals[ev["stream_id"]]), \
                f"{ev['worker']} emitted for {ev['stream_id']} at {t} outside its ownership"
        # Graceful stops lose nothing: every incident opened by a stopped worker has its end,
        # with contiguous seq numbers. (The killed worker's incidents cannot be ended by it.)
        by_incident: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for ev in events:
            by_incident[ev["alert_id"]].append(ev)
        graceful = [evs for evs in by_incident.values() if evs[0]["worker"] in (leaving.name, staying.name)]
        assert graceful
        for evs in graceful:
            assert [e["seq"] for e in evs] == list(range(len(evs))) and evs[-1]["event"] == "end", evs
    finally:
        for w in workers:
            if w.proc is not None:
                stop_process(w.proc)
        server.stop()
