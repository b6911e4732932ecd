"""Our side of the bench: N streams through the real :class:`~stream_monitor.app.Monitor`.

The monitor runs exactly as ``stream-monitor run`` does (same config tree, engine, lanes,
batching, alert policy), with the streams paced in real time by their sources (or, with
``paced=False``, delivering as fast as the monitor takes them: ``ingest.realtime`` off,
backpressure instead of drops — the monitor's capacity on this machine). After a
warm-up (model warm-up, the first windows filling) the service's own Prometheus
counters are read at ``t0`` and again ``duration_s`` later at ``t1``; every rate below is
a difference of the two over ``t1 - t0`` wall seconds, so start-up and shutdown (final
windows of ended tracks) are outside the measurement.

Per stream: frames decoded (``frames_received_total``) and analysed (face detection,
``frames_analysed_total``) per second, drops by stage (``frames_dropped_total``). Face
detection runs only on the frames the detectors sample (``faces.detect_fps``), so the
rate it should reach, ``detect_fps``, is found by running the engine's own
:class:`~stream_monitor.windows.DetectionGate` over a minute of timestamps at the target
rate (the source's, or ``ingest.max_fps`` where the config decimates below it). A stream
is **sustained in real time** when its analysed rate is at least 0.9 × ``detect_fps``
and nothing of it was dropped at ingest or face detection.

Per detector: windows scored per second (``windows_scored_total``), windows dropped
(stage ``window_<detector>``), per-frame passes actually computed (the runner's
``frames_computed``: cache misses), busy seconds and batches of its lane
(``inference_seconds``, ``inference_batch_size``), and **throughput in track-seconds per
second**: each scored window adds ``stride`` new sampled frames of one face track, i.e.
``stride / rate`` seconds of that track's video, so throughput = windows/s × stride / rate
(``rate`` = the detector's sampling rate, capped at the source's frame rate). Paced
streams offer only so much, so throughput can only reach what they offer
(``windows_offered_per_s``: faces × sampling rate / stride × the stream seconds analysed per
wall second, per stream); ``saturated`` says the monitor had no capacity left for that
detector (unpaced sources, windows shed, fewer than 90 % of the offered windows scored, a
stream not sustained, or the thread running the lane busy ≥ 90 % of the time) — otherwise
the number, and a ratio made from it, is a lower bound: add streams or run unpaced.
``faces.modes_per_s``: frames searched in full, by tracked regions, or by a region miss that
fell back to the full frame (``face_detections_total``, :mod:`stream_monitor.faces.roi`).
Busy seconds count finished batches only: a long batch still running at ``t1`` (full-size
clip models on a CPU) is missing from them, so measure for several batches.

Alert latency (last frame of the window received → alert published, the definition of
``alert_latency_seconds``) comes from every event published in ``[t0, t1]``, recorded
by a sink beside the monitor's own, so p50/p99 are exact rather than histogram buckets.
The bench sets the threshold to 0 and ``start_after`` to 1 so that every window after the
first of a track publishes an event.

Busy fraction: Σ lane busy seconds (face detection and every detector) / wall. On CUDA
all lanes share one worker thread, so it is the fraction of time that thread had the GPU
working (≤ 1); on a CPU each lane has its own thread and it may exceed 1 (threads busy at
once). On CUDA, ``gpu_utilization`` is also sampled from NVML every 0.5 s when available.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from ..alerts.policy import AlertEvent
from ..alerts.publisher import FanOut
from ..app import Monitor
from ..config import Config
from ..metrics import Metrics
from ..windows import DetectionGate

log = logging.getLogger(__name__)

_P = "stream_monitor_"
SUSTAINED_FRACTION = 0.9  # analysed fps >= this x source fps (and no ingest/face drops)
SATURATED_BUSY = 0.9  # a worker thread busy this fraction of the time has no capacity left
SATURATED_SCORED = 0.9  # fewer windows scored than this fraction of those offered: a backlog


class LatencyRecorder:
    """An alert sink that keeps ``(monotonic time, latency s)`` of every event it sees."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []

    async def start(self) -> None:
        pass

    def publish(self, event: AlertEvent) -> None:
        self.samples.append((time.monotonic(), max(0.0, time.time() - event.last_arrival)))

    async def close(self, timeout: float = 5.0) -> None:
        pass

    def problems(self) -> list[str]:
        return []


def _samples(registry: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, float(s.value)) for family in registry.collect() for s in family.samples if s.name == name]


@dataclass
class Counters:
    """The service's counters at one instant (``t``: ``time.monotonic()``)."""

    t: float
    received: dict[str, float]
    analysed: dict[str, float]
    dropped: dict[tuple[str, str], float]
    windows: dict[str, float]
    discarded: dict[str, float]  # windows_discarded_total by detector (all reasons)
    busy_s: dict[str, float]
    batches: dict[str, float]
    batch_items: dict[str, float]
    computed: dict[str, float | None]
    detect_modes: dict[str, float]  # face_detections_total by mode: full, region, fallback


def read_counters(monitor: Monitor) -> Counters:
    reg = monitor.metrics.registry

    def by(name: str, label: str) -> dict[str, float]:
        return {labels[label]: v for labels, v in _samples(reg, _P + name)}

    return Counters(
        t=time.monotonic(),
        received=by("frames_received_total", "stream"),
        analysed=by("frames_analysed_total", "stream"),
        dropped={(lb["stream"], lb["stage"]): v for lb, v in _samples(reg, _P + "frames_dropped_total")},
        windows=by("windows_scored_total", "detector"),
        discarded=_sum_by(_samples(reg, _P + "windows_discarded_total"), "detector"),
        busy_s=by("inference_seconds_sum", "detector"),
        batches=by("inference_seconds_count", "detector"),
        batch_items=by("inference_batch_size_sum", "detector"),
        # Cache misses of per-frame work (CADDM frames, StyleFlow pSp frames); None if a runner lacks it.
        computed={d: float(n) if isinstance(n := getattr(r, "frames_computed", None), (int, float)) else None
                  for d, r in monitor.engine.runners.items()},
        detect_modes=by("face_detections_total", "mode"),
    )


def _sum_by(samples: list[tuple[dict[str, str], float]], label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in samples:
        out[labels[label]] = out.get(labels[label], 0.0) + value
    return out


def _delta(a: dict[Any, float], b: dict[Any, float], key: Any) -> float:
    return b.get(key, 0.0) - a.get(key, 0.0)


def _computed(c0: Counters, c1: Counters, detector: str) -> float | None:
    a, b = c0.computed.get(detector), c1.computed.get(detector)
    return None if a is None or b is None else b - a


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation), or None without values."""
    return float(np.percentile(np.asarray(values), q)) if values else None


@dataclass
class DetectorLane:
    """How the engine windows one detector (from its runner): rates in frames per second."""

    model_id: str
    sample_fps: float | None
    window_len: int
    stride: int


@dataclass
class PipelineMeasurement:
    """Counters at ``t0``/``t1`` and what the engine was running."""

    c0: Counters
    c1: Counters
    streams: list[str]
    source_fps: float
    target_fps: float  # frames per second delivered: the source's, or ingest.max_fps below it
    lanes: dict[str, DetectorLane]
    latencies: list[float]
    device: str
    shared_worker: bool
    faces: int
    gpu_utilization: list[float] = field(default_factory=list)
    detect_fps: float | None = None  # frames per second meant to be face-detected (None: target_fps)
    paced: bool = True  # False: unpaced sources (backpressure), every lane counts as saturated

    @property
    def wall_s(self) -> float:
        return self.c1.t - self.c0.t

    @property
    def detect_rate(self) -> float:
        return self.target_fps if self.detect_fps is None else self.detect_fps

    def rate_of(self, detector: str) -> float:
        """Frames per second a track is sampled at for ``detector`` (capped at the analysed rate)."""
        fps = self.lanes[detector].sample_fps
        return self.target_fps if fps is None else min(fps, self.target_fps)

    def summary(self) -> dict[str, Any]:
        """The ``pipeline`` section of the report (without FLOPs; see the module docstring)."""
        c0, c1, wall = self.c0, self.c1, self.wall_s
        streams: list[dict[str, Any]] = []
        for sid in self.streams:
            stages = sorted({stage for (s, stage) in c1.dropped if s == sid})
            dropped = {stage: _delta(c0.dropped, c1.dropped, (sid, stage)) for stage in stages}
            decoded = _delta(c0.received, c1.received, sid) / wall
            analysed = _delta(c0.analysed, c1.analysed, sid) / wall
            sustained = (analysed >= SUSTAINED_FRACTION * self.detect_rate
                         and dropped.get("ingest", 0.0) == 0 and dropped.get("faces", 0.0) == 0)
            streams.append({"id": sid, "source_fps": self.source_fps, "target_fps": self.target_fps,
                            "detect_fps": self.detect_rate, "decoded_fps": decoded, "analysed_fps": analysed, "dropped": dropped,
                            "sustained": sustained})
        busy = sum(_delta(c0.busy_s, c1.busy_s, lane) for lane in c1.busy_s)
        all_sustained = all(s["sustained"] for s in streams)
        detectors: dict[str, Any] = {}
        for d, lane in self.lanes.items():
            windows = _delta(c0.windows, c1.windows, d)
            batches = _delta(c0.batches, c1.batches, d)
            shed = sum(_delta(c0.dropped, c1.dropped, k) for k in c1.dropped if k[1] == f"window_{d}")
            lane_busy = _delta(c0.busy_s, c1.busy_s, d) / wall
            # Windows the streams offered: each face track sampled at the detector's rate, over the
            # stream time the analysed frames covered (about 1 s per wall second when paced, more
            # when unpaced), a window every `stride` samples.
            offered = sum(self.faces * self.rate_of(d) * s["analysed_fps"] / self.detect_rate
                          for s in streams) / lane.stride
            # Compute-bound (the throughput is what the monitor can do here) when the sources are
            # unpaced (they offer whatever the monitor takes), work was shed or is still queued
            # (fewer windows scored than offered: a batch can outlast the measurement), the front
            # end fell behind, or the lane's thread was nearly always busy.
            saturated = (not self.paced or shed > 0 or not all_sustained
                         or windows / wall < SATURATED_SCORED * offered or lane_busy >= SATURATED_BUSY
                         or (self.shared_worker and busy / wall >= SATURATED_BUSY))
            detectors[d] = {
                "model": lane.model_id, "sample_fps": self.rate_of(d), "window_len": lane.window_len,
                "window_stride": lane.stride, "windows_scored": windows, "windows_per_s": windows / wall,
                "windows_offered_per_s": offered, "windows_dropped": shed,
                "windows_discarded": _delta(c0.discarded, c1.discarded, d),
                "frames_computed": _computed(c0, c1, d),
                "busy_s": _delta(c0.busy_s, c1.busy_s, d), "batches": batches,
                "mean_batch": _delta(c0.batch_items, c1.batch_items, d) / batches if batches else None,
                "throughput": windows * lane.stride / self.rate_of(d) / wall, "saturated": saturated,
            }
        face_batches = _delta(c0.batches, c1.batches, "faces")
        totals = {
            "decoded_per_s": sum(s["decoded_fps"] for s in streams),
            "analysed_per_s": sum(s["analysed_fps"] for s in streams),
            "dropped": {stage: sum(s["dropped"].get(stage, 0.0) for s in streams)
                        for stage in sorted({k for s in streams for k in s["dropped"]})},
        }
        return {
            "wall_s": wall,
            "device": self.device,
            "streams_sustained": sum(1 for s in streams if s["sustained"]),
            "streams": streams,
            "frames": totals,
            "faces": {"busy_s": _delta(c0.busy_s, c1.busy_s, "faces"), "batches": face_batches,
                      "modes_per_s": {mode: _delta(c0.detect_modes, c1.detect_modes, mode) / wall
                                      for mode in sorted(c1.detect_modes)},
                      "mean_batch": _delta(c0.batch_items, c1.batch_items, "faces") / face_batches
                      if face_batches else None},
            "detectors": detectors,
            "throughput_all": min((v["throughput"] for v in detectors.values()), default=0.0),
            "busy_fraction": busy / wall,
            "gpu_utilization": float(np.mean(self.gpu_utilization)) / 100.0 if self.gpu_utilization else None,
            "alert_latency_s": {"count": len(self.latencies), "p50": percentile(self.latencies, 50),
                                "p99": percentile(self.latencies, 99)},
        }


def gate_rate(gate: DetectionGate, fps: float, seconds: float = 60.0) -> float:
    """Frames per second ``gate`` admits of a steady ``fps`` source (simulated timestamps)."""
    n = int(round(seconds * fps))
    return sum(gate.admit(i / fps) is not None for i in range(n)) / seconds


async def _sample_gpu(device: torch.device, out: list[float], period_s: float = 0.5) -> None:
    """NVML utilisation (percent) every ``period_s`` until cancelled; stops quietly without NVML."""
    while True:
        try:
            out.append(float(torch.cuda.utilization(device)))
        except Exception as exc:  # pynvml missing or no permission: the report says null
            log.debug("no GPU utilisation samples: %s", exc)
            return
        await asyncio.sleep(period_s)


def _seconds_bar(total_s: float, enabled: bool) -> Any:
    """A tqdm bar of seconds on stderr; only on a terminal (a pipe would get carriage returns)."""
    import sys

    from tqdm import tqdm

    return tqdm(total=round(total_s, 1), unit="s", desc="bench", file=sys.stderr, leave=False,
                disable=not enabled or not sys.stderr.isatty(), bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s")


async def _sleep(seconds: float, bar: Any) -> None:
    """Sleep ``seconds``, advancing ``bar`` about once a second."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        step = min(1.0, left)
        await asyncio.sleep(step)
        bar.update(step)


async def run_pipeline(cfg: Config, urls: list[str], source_fps: float, faces: int, warmup_s: float,
                       duration_s: float, stop_grace_s: float = 2.0, paced: bool = True,
                       progress: bool = False) -> PipelineMeasurement:
    """Start a Monitor on ``cfg``, add one stream per URL, measure ``duration_s`` after
    ``warmup_s``, stop. ``paced``: whether ``cfg``'s sources are live (``ingest.realtime``).
    Raises what ``Monitor.start`` raises (e.g. ``WeightsError``)."""
    monitor = Monitor(cfg, Metrics())
    recorder = LatencyRecorder()
    monitor.sink = FanOut([monitor.sink, recorder])
    gpu: list[float] = []
    try:
        await monitor.start()
        ids = [f"bench-{i}" for i in range(len(urls))]
        for sid, url in zip(ids, urls):
            await monitor.add_stream(sid, url, trusted=True)  # the operator's own media
        bar = _seconds_bar(warmup_s + duration_s, progress)
        await _sleep(warmup_s, bar)
        c0 = read_counters(monitor)
        device = monitor.engine.device
        sampler = asyncio.create_task(_sample_gpu(device, gpu)) if device.type == "cuda" else None
        await _sleep(duration_s, bar)
        bar.close()
        c1 = read_counters(monitor)
        if sampler is not None:
            sampler.cancel()
        ended = [sid for sid in ids if sid not in monitor.streams or monitor.streams[sid].task.done()]
        if ended:
            log.warning("streams ended before the measurement did: %s", ", ".join(ended))
        lanes = {d: DetectorLane(r.model_id, r.spec.sample_fps, r.spec.window_len, r.spec.stride)
                 for d, r in monitor.engine.runners.items()}
        latencies = [lat for t, lat in recorder.samples if c0.t <= t <= c1.t]
        target = min(source_fps, cfg.ingest.max_fps or source_fps)
        detect = gate_rate(monitor.engine.detection_gate(), target)
        label = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    finally:
        await monitor.stop(grace=stop_grace_s)
    return PipelineMeasurement(c0, c1, ids, source_fps, target, lanes, latencies, label,
                               bool(getattr(monitor.engine, "shared_worker", device.type == "cuda")), faces, gpu,
                               detect, paced)
