"""The metric registry's exposition: build_info, the score histogram, no ``_created`` series."""

from __future__ import annotations

import re

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

import stream_monitor
from stream_monitor.metrics import Metrics, build_labels


def _samples(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
    text = metrics.render().decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def test_build_info_names_version_commit_and_torch() -> None:
    [(name, labels, value)] = [s for s in _samples(Metrics()) if s[0] == "stream_monitor_build_info"]
    assert value == 1.0
    assert labels["version"] == stream_monitor.__version__
    assert labels["torch"] == torch.__version__
    # A source checkout knows its commit (this test runs in one); an image may say "unknown".
    assert re.fullmatch(r"[0-9a-f]{7,40}|unknown", labels["commit"]), labels


def test_window_score_histogram_and_no_created_series() -> None:
    m = Metrics()
    m.windows_scored.labels("caddm").inc()
    for score in (0.02, 0.45, 0.97):
        m.window_score.labels("caddm").observe(score)
    samples = _samples(m)
    buckets = {s[1]["le"]: s[2] for s in samples
               if s[0] == "stream_monitor_window_score_bucket" and s[1]["detector"] == "caddm"}
    assert buckets["0.05"] == 1 and buckets["0.5"] == 2 and buckets["0.95"] == 2 and buckets["1.0"] == 3
    assert buckets["+Inf"] == 3
    # Scores are probabilities: the buckets end at 1.
    assert max(float(le) for le in buckets if le != "+Inf") == 1.0
    text = m.render().decode()
    assert "_created" not in text, [line for line in text.splitlines() if "_created" in line][:3]
    # The counters are still there (only their creation timestamps are gone).
    assert "stream_monitor_windows_scored_total{detector=\"caddm\"} 1.0" in text


def test_build_info_commit_from_the_image_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An image has no .git: the Dockerfile's STREAM_MONITOR_COMMIT build argument is used."""
    monkeypatch.setenv("STREAM_MONITOR_COMMIT", "0123456789ab")
    build_labels.cache_clear()
    try:
        [labels] = [s[1] for s in _samples(Metrics()) if s[0] == "stream_monitor_build_info"]
        assert labels["commit"] == "0123456789ab"
    finally:
        build_labels.cache_clear()
