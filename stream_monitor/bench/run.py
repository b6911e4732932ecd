"""The bench's order as code: configure, prepare media, count FLOPs, baseline, pipeline, report.

The baseline runs *before* the pipeline: stopping the monitor may leave a worker thread
finishing a long batch (a full-size window on a CPU), which must not overlap the
baseline's timing. Models are loaded by each side on its own; loading is never timed.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import DETECTOR_NAMES, Config, load_config
from ..inference.engine import window_spec
from ..inference.worker import resolve_device
from .scenario import Pace
from ..weights import card_of, model_name
from .baseline import run_baselines
from .flops import DetectorFlops, detector_flops, face_detector_flops, matmul_peak
from .pipeline_run import run_pipeline
from .presets import preset_detectors
from .report import build_report
from .scenario import Scenario, SourceKind, media_frames, parse_resolution, prepare_sources

log = logging.getLogger(__name__)

_FILE_SLACK_S = 5.0  # file length beyond warm-up + duration: stream start-up, so no file ends early
_UNPACED_FILE_SPEED = 4.0  # unpaced files hold this many times warm-up + duration of video


@dataclass(frozen=True)
class BenchOptions:
    """What ``stream-monitor bench`` was asked for (times in seconds, rates in fps)."""

    streams: int = 1
    source: SourceKind = "synthetic"
    resolution: str = "720p"
    fps: float = 30.0
    faces: int = 1
    pace: Pace = "realtime"
    duration_s: float = 20.0
    warmup_s: float = 5.0
    detectors: tuple[str, ...] | None = None  # None: the config file's (default: all three)
    preset: str = "full"
    device: str | None = None  # None: the config file's (default: auto)
    precision: str | None = None  # None: the config file's (default: fp32)
    baseline: bool = True
    baseline_seconds: float | None = None
    weights_dir: Path | None = None
    config: Path | None = None
    workdir: Path | None = None
    progress: bool = False  # a bar over warm-up + measurement on stderr (a terminal only)


def bench_config(opts: BenchOptions, workdir: Path) -> Config:
    """The monitor's config: the file (if any), then the preset, then the bench's settings
    (detectors, device and precision only where given, else the file's).

    ``pace``: ``realtime`` sources are live (paced, oldest frames dropped under load);
    ``unpaced`` sources come as fast as the monitor takes them (``ingest.realtime`` off:
    backpressure, nothing dropped), which measures capacity.

    Alerts: threshold 0 and ``start_after`` 1, so every scored window publishes an event
    (the latency samples); they go to ``workdir/alerts.jsonl``, not stdout (the report's).
    Random weights unless ``weights_dir`` is given: the compute is the same.
    """
    detectors: dict[str, Any] = {"random_weights": opts.weights_dir is None,
                                 **preset_detectors(opts.preset, list(DETECTOR_NAMES))}
    for key, value in (("enabled", list(opts.detectors) if opts.detectors else None), ("device", opts.device),
                       ("precision", opts.precision),
                       ("weights_dir", str(opts.weights_dir) if opts.weights_dir else None)):
        if value is not None:
            detectors[key] = value
    overrides: dict[str, Any] = {
        "streams": [], "detectors": detectors, "ingest": {"realtime": opts.pace == "realtime"},
        "alerts": {"threshold": 0.0, "start_after": 1, "stdout": False, "jsonl": str(workdir / "alerts.jsonl")},
        "metrics": {"port": None}, "api": {"port": None}, "redis": {"url": None},
    }
    return load_config(opts.config, overrides, environ={})


def _min_media_s(cfg: Config, fps: float) -> float:
    """Seconds of video that give every enabled detector two windows (the baseline's minimum)."""
    need = 0.0
    fps = min(fps, cfg.ingest.max_fps or fps)
    for d in cfg.detectors.enabled:
        det = cfg.detectors.detector(d)
        spec = window_spec(d, card_of(model_name(d, cfg.detectors)), det.sample_fps, det.window_len,
                           det.window_stride)
        rate = fps if spec.sample_fps is None else min(spec.sample_fps, fps)
        need = max(need, (spec.window_len + spec.stride) / rate)
    return need + 1.0 / fps


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run the bench and return its report (see :mod:`stream_monitor.bench`)."""
    if opts.duration_s <= 0 or opts.warmup_s < 0:
        raise ValueError("duration must be > 0 and warm-up >= 0 seconds")
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="stream-monitor-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = bench_config(opts, workdir)
    width, height = parse_resolution(opts.resolution)
    baseline_s = opts.baseline_seconds or max(opts.duration_s, _min_media_s(cfg, opts.fps))
    # Unpaced files are read faster than real time: make them long enough for a few times that.
    speed = 1.0 if opts.pace == "realtime" else _UNPACED_FILE_SPEED
    scenario = Scenario(opts.streams, opts.source, width, height, opts.fps, opts.faces,
                        max((opts.warmup_s + opts.duration_s) * speed + _FILE_SLACK_S, baseline_s), opts.pace)
    started = time.time()
    log.info("bench: %s; preparing media in %s", scenario.label, workdir)
    urls = prepare_sources(scenario, workdir)

    device = resolve_device(cfg.detectors.device)
    peak = matmul_peak(device)
    log.info("bench: matmul peak %.3g FLOP/s (%s on %s)", peak.flops_per_s, peak.dtype, device)
    dcfg = cfg.detectors
    costs: dict[str, DetectorFlops] = {d: detector_flops(d, model_name(d, dcfg), dcfg.detector(d).overrides)
                                       for d in dcfg.enabled}
    first = next(media_frames(scenario, urls[0], 1.0 / opts.fps))[1]
    face_flops = face_detector_flops(cfg.faces, device, first)

    baseline = None
    if opts.baseline:
        log.info("bench: baseline (the authors' loops) over %.1f s of media", baseline_s)
        baseline = run_baselines(cfg, lambda: media_frames(scenario, urls[0], baseline_s), opts.fps, workdir)
        for d, r in baseline.items():
            log.info("bench: baseline %s: %.2f s wall, %d windows, %.3f track-s/s", d, r.wall_s, r.windows,
                     r.throughput)
    log.info("bench: pipeline, %d stream(s), %.0f s warm-up + %.0f s measured", opts.streams, opts.warmup_s,
             opts.duration_s)
    measurement = asyncio.run(run_pipeline(cfg, urls, opts.fps, opts.faces, opts.warmup_s, opts.duration_s,
                                           paced=opts.pace == "realtime", progress=opts.progress))

    meta = {
        "version": 1, "started_at": started, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "python": platform.python_version(),
        "precision": getattr(dcfg, "precision", "fp32"),
        "baseline_precision": "fp32", "preset": opts.preset, "detectors": list(dcfg.enabled),
        "models": {d: model_name(d, dcfg) for d in dcfg.enabled},
        "weights": "random" if dcfg.random_weights else str(dcfg.weights_dir),
        "weights_note": ("random weights (seeded, identical on both sides): the compute is the same as with "
                         "trained weights" if dcfg.random_weights else "checkpoints from the weights directory"),
        "workdir": str(workdir),
    }
    scenario_section = {
        "label": scenario.label, "streams": scenario.streams, "source": scenario.source, "width": width,
        "height": height, "fps": opts.fps, "faces": opts.faces, "duration_s": opts.duration_s,
        "warmup_s": opts.warmup_s, "pace": opts.pace, "realtime": opts.pace == "realtime",
    }
    return build_report(meta, scenario_section, peak, costs, face_flops, measurement, baseline,
                        baseline_s if baseline is not None else None)
