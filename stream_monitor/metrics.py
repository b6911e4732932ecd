"""Every Prometheus metric of the service, declared once.

Names follow DESIGN.md (prefix ``stream_monitor_``, seconds, ``_total`` for counters) and
carry no per-track labels. Metrics live on an explicit ``CollectorRegistry`` owned by the
:class:`Metrics` object, so several monitors (tests, benchmarks) can coexist in one
process; ``render()`` gives the text exposition for ``GET /metrics``.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from functools import lru_cache
from pathlib import Path

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics,
                               generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)
_INFER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# Scores are probabilities in [0, 1]: finer near the usual thresholds (0.5) and the ends.
_SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

# Without this every counter and histogram child also exposes a ``*_created`` gauge (a
# timestamp nobody queries: 45 extra series on a small monitor). prometheus_client keeps the
# switch process-wide; this module owns the service's metrics, so it decides here.
disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_LATEST
ALERT_DROP_REASONS = ("overflow", "spool_error", "corrupt_spool", "shutdown", "stale_owner")
# inference_errors_total kinds: a batch out of device memory (retried smaller), a request that failed.
INFERENCE_ERROR_KINDS = ("oom", "error")
# The face lane's also: one stream's tracking/windowing of a frame raised.
FACE_ERROR_KINDS = (*INFERENCE_ERROR_KINDS, "tracking")
# What stream_monitor_work_abandoned_total counts (see its help).
WORK_KINDS = ("frame", "window", "close")


class Metrics:
    """The service's metrics on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = "stream_monitor_"
        self.frames_received = Counter(p + "frames_received_total", "Frames decoded from a stream.", ["stream"], registry=r)
        self.frames_analysed = Counter(p + "frames_analysed_total", "Frames that went through face detection.",
                                       ["stream"], registry=r)
        self.frames_dropped = Counter(p + "frames_dropped_total",
                                      "Frames or windows dropped under load, by pipeline stage.",
                                      ["stream", "stage"], registry=r)
        self.face_detections = Counter(p + "face_detections_total",
                                       "Frames through face detection, by how they were searched: full frame, "
                                       "tracked regions, or a region miss that fell back to the full frame.",
                                       ["mode"], registry=r)
        self.faces_detected = Counter(p + "faces_detected_total", "Faces detected.", ["stream"], registry=r)
        self.tracks_active = Gauge(p + "tracks_active", "Face tracks currently alive.", ["stream"], registry=r)
        self.windows_scored = Counter(p + "windows_scored_total", "Windows scored by a detector.", ["detector"],
                                      registry=r)
        self.windows_discarded = Counter(
            p + "windows_discarded_total",
            "Runs of consecutive frames (StyleFlow) closed by a gap before they filled a window, by the gap: "
            "missed_detection, frame_gap (a frame dropped or shed), pts_jump, rate_change.",
            ["detector", "reason"], registry=r)
        self.window_score = Histogram(p + "window_score",
                                      "Fake probability of each scored window, in [0, 1], by detector.",
                                      ["detector"], buckets=_SCORE_BUCKETS, registry=r)
        self.inference_batch_size = Histogram(p + "inference_batch_size", "Windows (or faces) per inference batch.",
                                              ["detector"], buckets=_BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram(p + "inference_seconds", "Wall time of one inference batch.",
                                           ["detector"], buckets=_INFER_BUCKETS, registry=r)
        self.inference_errors = Counter(
            p + "inference_errors_total",
            "Inference failures by lane (detector, or faces) and kind: oom (a batch ran out of device memory; "
            "it is rerun in smaller batches), error (a request failed: its frame or window got no result), "
            "tracking (faces: one stream's tracking/windowing of a frame raised).",
            ["detector", "kind"], registry=r)
        self.alert_latency = Histogram(p + "alert_latency_seconds",
                                       "Last frame of the window received -> alert published.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.alerts = Counter(p + "alerts_total", "Alert events emitted (handed to the alert sinks; "
                                "delivery failures and drops are counted apart).", ["stream", "event"], registry=r)
        self.stream_up = Gauge(p + "stream_up", "1 while the stream delivers frames, else 0.", ["stream"], registry=r)
        self.stream_reconnects = Counter(p + "stream_reconnects_total", "Reconnections of a stream.", ["stream"],
                                         registry=r)
        self.alerts_pending = Gauge(p + "alerts_pending", "Alert events in the outbox waiting for Redis.", registry=r)
        self.alert_publish_failures = Counter(p + "alert_publish_failures_total",
                                              "Failed attempts to write alerts to Redis.", registry=r)
        self.whip_sessions = Gauge(p + "whip_sessions", "WHIP sessions (WebRTC publishers) negotiating or connected.",
                                   registry=r)
        self.alerts_dropped = Counter(p + "alerts_dropped_total",
                                      "Alert events lost, by reason: overflow (outbox full, no spool), spool_error, "
                                      "corrupt_spool, shutdown (undelivered at exit, no spool), stale_owner (refused by "
                                      "Redis: a later fleet owner holds the stream).", ["reason"],
                                      registry=r)
        for reason in ALERT_DROP_REASONS:  # zero series: rate() and alerting rules see 0, not nothing
            self.alerts_dropped.labels(reason)
        # Scale-out (fleet.enabled): every worker reports the fleet-wide unassigned count.
        self.streams_unassigned = Gauge(p + "streams_unassigned",
                                        "Desired streams in Redis that no worker holds a lease on.", registry=r)
        self.streams_owned = Gauge(p + "streams_owned", "Streams this worker holds leases on.", registry=r)
        self.fleet_workers = Gauge(p + "fleet_workers", "Workers alive in the fleet (heartbeats in Redis).",
                                   registry=r)
        self.leases_lost = Counter(p + "leases_lost_total",
                                   "Streams stopped because this worker could no longer prove its lease.", registry=r)
        self.build_info = Info(p + "build", "The monitor's version, git commit (when known) and torch version.",
                               registry=r)
        self.build_info.info(build_labels())
        self.work_abandoned = Counter(
            p + "work_abandoned_total",
            "Work given up before its result was used, by kind: frame (face detection of a stopping stream), "
            "window (a detector window of a stopping stream, or one still unscored end_wait_s after its track "
            "ended), close (a stream's final track closing that did not finish within the stop's grace).",
            ["kind"], registry=r)
        for kind in WORK_KINDS:
            self.work_abandoned.labels(kind)
        # Every metric with a ``stream`` label: forget_stream removes their series of a deleted stream.
        self.per_stream: tuple[MetricWrapperBase, ...] = (
            self.frames_received, self.frames_analysed, self.frames_dropped, self.faces_detected, self.tracks_active,
            self.alerts, self.stream_up, self.stream_reconnects)

    def render(self) -> bytes:
        """Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def forget_stream(self, stream_id: str) -> None:
        """Remove every series of a deleted stream, whatever its other labels (``stage``,
        ``event``), from the :attr:`per_stream` metrics, so /metrics does not grow with every
        stream id ever used."""
        for metric in self.per_stream:
            # collect() is the public view of the children; each sample's labels are the
            # child's label values in declaration order (these are counters and gauges: no
            # ``le``/``quantile`` sample labels).
            stale = {tuple(sample.labels.values()) for family in metric.collect() for sample in family.samples
                     if sample.labels.get("stream") == stream_id}
            for values in stale:
                try:
                    metric.remove(*values)
                except KeyError:
                    pass  # removed meanwhile (forget_stream from another thread)


@lru_cache(maxsize=1)
def build_labels() -> dict[str, str]:
    """Labels of ``stream_monitor_build_info``: ``version`` (the package's), ``commit`` (the git
    commit of a source checkout, else $STREAM_MONITOR_COMMIT or "unknown": an installed image
    has no .git) and ``torch`` (torch's version, "none" when it is not importable)."""
    try:
        version = importlib.metadata.version("stream-monitor")
    except importlib.metadata.PackageNotFoundError:
        from . import __version__ as version
    commit = os.environ.get("STREAM_MONITOR_COMMIT", "")
    if not commit:
        try:
            result = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).resolve().parent,
                                    capture_output=True, text=True, timeout=5)
            commit = result.stdout.strip() if result.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            commit = ""
    try:
        import torch
        torch_version = str(torch.__version__)
    except ImportError:
        torch_version = "none"
    return {"version": str(version), "commit": commit or "unknown", "torch": torch_version}
