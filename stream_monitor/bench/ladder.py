"""How many live streams one machine sustains in real time, and alert latency at 80 % and 2x of that.

One :class:`~stream_monitor.app.Monitor` (the bench's configuration: every window publishes an
event, random weights unless configured) runs for the whole ladder, so models load once;
only the number of streams changes between probes. Streams are the bench's synthetic 1080p
face streams (:mod:`.scenario`), paced in real time (live: under load the oldest frames are
dropped, and windows older than ``detectors.<d>.max_queue_s`` are shed).

A **probe** at ``n`` streams: add or remove streams to have ``n``, wait ``settle_s`` (new
tracks fill their first windows: StA's first needs 8 samples at 1.875 fps; the first probe
waits twice that, while the models' first batches run slow), then read the
service's counters over ``measure_s`` (:func:`~.pipeline_run.read_counters`, summarised by
:class:`~.pipeline_run.PipelineMeasurement`). The probe **keeps up** when every stream is
sustained (analysed at ≥ 90 % of the rate its detectors need, nothing dropped at ingest or
face detection) and, for every detector, no window of these streams was shed and at least
90 % of the windows they offered were scored (less one window per stream: windows are counted
whole, so an interval's edges can cut one off). After a probe that did not keep up, the
backlog left in the lanes is drained first (until the inference thread is busy < 90 % of a
second, at most ``drain_max_s``), so it does not count against the next, smaller probe.

The **ladder**: ``start``, doubled while probes keep up (up to ``max_streams``), then
bisection between the largest probe that kept up and the smallest that did not, until the
two are within 1/16 of the smaller (or 1 stream), or the time is out; the capacity is the
largest ``n`` that kept up. Then two longer probes measure alert latency (p50/p99 of every
event in the interval, last frame of the window received → alert published): at 80 % of
the capacity and at twice it (overload: latency is bounded by the lanes' age limit); when no
count kept up, at one stream and at two (``latency_base_streams`` says which).
``cpu_util`` per probe is this process's CPU time / wall / cores: near 1 means the host, not
the GPU, was the limit (rendering and converting frames happens here too).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..alerts.publisher import FanOut
from ..app import Monitor
from ..metrics import Metrics
from .gpu_plan import CheckSettings
from .pipeline_run import (SATURATED_SCORED, Counters, DetectorLane, LatencyRecorder, PipelineMeasurement, gate_rate,
                           percentile, read_counters)
from .run import BenchOptions, bench_config
from .scenario import Scenario, parse_resolution

log = logging.getLogger(__name__)

TARGET_STREAMS = 60  # the project's target: face streams per H100, all three detectors, real time
DRAIN_BUSY = 0.9  # the backlog is gone once the inference thread is idle 10 % of a second
_STOP_RESERVE_S = 10.0  # removing every stream and stopping the monitor


@dataclass(frozen=True)
class LadderPlan:
    """The ladder's knobs (stream counts; seconds)."""

    start: int
    max_streams: int
    settle_s: float
    measure_s: float
    latency_s: float
    drain_max_s: float

    def latency_reserve_s(self) -> float:
        return 2 * (self.settle_s + self.latency_s) + self.drain_max_s + _STOP_RESERVE_S


def next_count(lo: int, hi: int | None, current: int, max_streams: int) -> int | None:
    """The next stream count of the ladder, or None when it is settled.

    ``lo``: the largest count that kept up (0: none yet); ``hi``: the smallest that did not
    (None: none yet); ``current``: the count just probed.
    """
    if hi is None:
        nxt = min(current * 2, max_streams)
        return None if nxt <= lo else nxt
    if hi - lo <= max(1, lo // 16):
        return None
    return (lo + hi) // 2


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class _Ladder:
    """The running monitor and its streams."""

    def __init__(self, monitor: Monitor, recorder: LatencyRecorder, url: str, fps: float, faces: int) -> None:
        self.monitor = monitor
        self.recorder = recorder
        self.url = url
        self.fps = fps
        self.faces = faces
        self.active: list[str] = []
        self._next_id = 0
        engine = monitor.engine
        self.lanes = {d: DetectorLane(r.model_id, r.spec.sample_fps, r.spec.window_len, r.spec.stride)
                      for d, r in engine.runners.items()}
        self.detect_fps = gate_rate(engine.detection_gate(), fps)
        self.device = engine.device
        self.shared = bool(getattr(engine, "shared_worker", self.device.type == "cuda"))

    async def set_streams(self, n: int) -> None:
        if n > len(self.active):
            ids = [f"s{self._next_id + i}" for i in range(n - len(self.active))]
            self._next_id += len(ids)
            await asyncio.gather(*(self.monitor.add_stream(sid, self.url) for sid in ids))
            self.active += ids
        elif n < len(self.active):
            gone, self.active = self.active[n:], self.active[:n]
            await asyncio.gather(*(self.monitor.remove_stream(sid, wait_s=0.5) for sid in gone))

    def _busy(self, c0: Counters, c1: Counters) -> float:
        per_lane = [c1.busy_s.get(k, 0.0) - c0.busy_s.get(k, 0.0) for k in c1.busy_s]
        wall = max(c1.t - c0.t, 1e-9)
        return (sum(per_lane) if self.shared else max(per_lane, default=0.0)) / wall

    async def drain(self, limit_s: float) -> float:
        """Wait until the inference thread(s) have idle time again (the backlog is gone), at
        most ``limit_s``; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:
            c0 = read_counters(self.monitor)
            await asyncio.sleep(min(1.0, max(0.1, limit_s - (time.monotonic() - t0))))
            if self._busy(c0, read_counters(self.monitor)) < DRAIN_BUSY:
                break
        return time.monotonic() - t0

    async def probe(self, n: int, settle_s: float, measure_s: float) -> dict[str, Any]:
        """Run ``n`` streams: settle, measure, and judge (see the module docstring)."""
        await self.set_streams(n)
        await asyncio.sleep(settle_s)
        cpu0, c0 = _cpu_seconds(), read_counters(self.monitor)
        await asyncio.sleep(measure_s)
        c1, cpu1 = read_counters(self.monitor), _cpu_seconds()
        ids = list(self.active)
        latencies = [lat for t, lat in self.recorder.samples if c0.t <= t <= c1.t]
        m = PipelineMeasurement(c0, c1, ids, self.fps, self.fps, self.lanes, latencies, str(self.device),
                                self.shared, self.faces, [], self.detect_fps, True)
        summary = m.summary()
        wall = m.wall_s
        why: list[str] = []
        late = [s["id"] for s in summary["streams"] if not s["sustained"]]
        if late:
            why.append(f"{len(late)} stream(s) not sustained")
        detectors: dict[str, Any] = {}
        for d, lane in summary["detectors"].items():
            # Sheds of these streams only: a removed stream's stale windows say nothing of this load.
            shed = sum(c1.dropped.get((sid, f"window_{d}"), 0.0) - c0.dropped.get((sid, f"window_{d}"), 0.0)
                       for sid in ids)
            scored, offered = lane["windows_per_s"], lane["windows_offered_per_s"]
            detectors[d] = {"windows_per_s": scored, "offered_per_s": offered, "shed": shed,
                            "mean_batch": lane["mean_batch"], "busy_s": lane["busy_s"]}
            if shed > 0:
                why.append(f"{d}: {shed:g} windows shed")
            # One window per stream of slack: windows are counted whole at the interval's edges.
            if scored * wall < SATURATED_SCORED * offered * wall - len(ids):
                why.append(f"{d}: {scored:.2f} of {offered:.2f} windows/s scored")
        dropped: dict[str, float] = {}
        for (sid, stage), value in c1.dropped.items():
            if sid in ids:
                dropped[stage] = dropped.get(stage, 0.0) + value - c0.dropped.get((sid, stage), 0.0)
        row: dict[str, Any] = {
            "streams": n, "wall_s": wall, "keeps_up": not why, "why": why,
            "sustained": summary["streams_sustained"], "analysed_per_s": summary["frames"]["analysed_per_s"],
            "decoded_per_s": summary["frames"]["decoded_per_s"], "detect_fps": self.detect_fps,
            "dropped": {k: v for k, v in sorted(dropped.items()) if v}, "detectors": detectors,
            "busy_fraction": summary["busy_fraction"], "cpu_util": (cpu1 - cpu0) / wall / (os.cpu_count() or 1),
            "alert_latency_s": {"count": len(latencies), "p50": percentile(latencies, 50),
                                "p99": percentile(latencies, 99)},
        }
        if self.device.type == "cuda":
            row["gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        log.info("ladder: %d streams: %s", n, "keeps up" if not why else "; ".join(why))
        return row


async def run_ladder(s: CheckSettings, plan: LadderPlan, workdir: Path, deadline: float,
                     progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The ladder and the latency probes (see the module docstring) until ``deadline``
    (``time.monotonic``), reporting each finished probe through ``progress``."""
    workdir.mkdir(parents=True, exist_ok=True)
    opts = BenchOptions(resolution=s.resolution, fps=s.fps, faces=s.faces, pace="realtime", preset=s.preset,
                        detectors=s.bench_detectors, device=s.device, precision=s.precision, baseline=False,
                        workdir=workdir)
    cfg = bench_config(opts, workdir)
    width, height = parse_resolution(s.resolution)
    scenario = Scenario(1, "synthetic", width, height, s.fps, s.faces, 1.0)
    monitor = Monitor(cfg, Metrics())
    recorder = LatencyRecorder()
    monitor.sink = FanOut([monitor.sink, recorder])
    result: dict[str, Any] = {
        "scenario": f"{scenario.synthetic_url()} (real time), precision {s.precision}, preset {s.preset}",
        "target_streams": TARGET_STREAMS, "probes": [], "capacity_streams": None, "bracket": None,
        "stopped": None, "latency": {},
    }
    t0 = time.monotonic()
    try:
        await monitor.start()
        result["start_s"] = time.monotonic() - t0
        ladder = _Ladder(monitor, recorder, scenario.synthetic_url(), s.fps, s.faces)
        lo, hi, n = 0, None, max(1, min(plan.start, plan.max_streams))
        failed_last = False
        while True:
            # The first probe settles twice as long: the models' first batches of each shape
            # (cuDNN autotuning, allocator growth) are slower than the steady state.
            settle = plan.settle_s * (1 if result["probes"] else 2)
            cost = settle + plan.measure_s + (plan.drain_max_s if failed_last else 0.0)
            if deadline - time.monotonic() < cost + plan.latency_reserve_s():
                result["stopped"] = "time"
                break
            if failed_last:
                await ladder.set_streams(min(n, len(ladder.active)))
                await ladder.drain(plan.drain_max_s)
            row = await ladder.probe(n, settle, plan.measure_s)
            result["probes"].append(row)
            failed_last = not row["keeps_up"]
            if row["keeps_up"]:
                lo = max(lo, n)
            else:
                hi = n if hi is None else min(hi, n)
            result.update(capacity_streams=lo, bracket=[lo, hi])
            progress(result)
            nxt = next_count(lo, hi, n, plan.max_streams)
            if nxt is None:
                result["stopped"] = "max_streams" if hi is None else "converged"
                break
            n = nxt
        base = max(lo, 1)  # no count kept up: latency of one stream and of two, still worth knowing
        result["latency_base_streams"] = base
        for label, load in (("80%", 0.8), ("200%", 2.0)):
            count = max(1, int(load * base))  # at most 80 % (rounded down), exactly 2x
            if deadline - time.monotonic() < plan.settle_s + plan.latency_s + _STOP_RESERVE_S:
                result["latency"][label] = {"skipped": "no time left", "streams": count}
                continue
            if failed_last and count < len(ladder.active):
                await ladder.set_streams(count)
                await ladder.drain(plan.drain_max_s)
            row = await ladder.probe(count, plan.settle_s, plan.latency_s)
            failed_last = not row["keeps_up"]
            result["latency"][label] = {"load": load, **row}
            progress(result)
    finally:
        # Every stream at once: Monitor.stop would stop them one by one, each waiting for a busy worker.
        await asyncio.gather(*(monitor.remove_stream(sid, wait_s=0.5) for sid in list(monitor.streams)),
                             return_exceptions=True)
        await monitor.stop(grace=2.0)
    return result
