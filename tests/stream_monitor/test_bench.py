"""``stream-monitor bench``: the command runs a short CPU configuration and reports every field.

Behaviour only: speed is measured by the bench, never asserted here (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from stream_monitor.bench.flops import count_flops, detector_flops, stream_flop_rates
from stream_monitor.bench.presets import PRESETS
from stream_monitor.bench.scenario import parse_resolution

ROOT = Path(__file__).resolve().parents[2]
DETECTORS = ("caddm", "sta", "styleflow")

PIPELINE_DETECTOR_FIELDS = {"model", "sample_fps", "window_len", "window_stride", "windows_scored", "windows_per_s",
                            "windows_offered_per_s", "windows_dropped", "windows_discarded", "frames_computed", "busy_s", "batches",
                            "mean_batch", "throughput", "saturated", "flops_per_s"}
BASELINE_FIELDS = {"loop", "model", "wall_s", "phases_s", "frames_decoded", "frames_detected", "frames_forwarded",
                   "windows", "track_seconds", "throughput", "flops_per_s", "faces_flops_per_s", "mfu", "notes"}


def _numbers(node: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(node, bool) or node is None or isinstance(node, str):
        return []
    if isinstance(node, (int, float)):
        return [(path, float(node))]
    if isinstance(node, dict):
        return [n for k, v in node.items() for n in _numbers(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [n for i, v in enumerate(node) for n in _numbers(v, f"{path}[{i}]")]
    raise AssertionError(f"{path}: unexpected {type(node).__name__} in the report")


def _bench(*args: str, timeout: float = 240) -> "subprocess.CompletedProcess[str]":
    """``stream-monitor bench ARGS`` in a subprocess from the repository root."""
    return subprocess.run([sys.executable, "-m", "stream_monitor", "bench", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=timeout)


def _small_cpu_bench(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """A small-preset CPU bench at 320x240 with ``args``: (the printed table, the JSON report)."""
    out = tmp_path / "bench.json"
    proc = _bench("--preset", "small", "--device", "cpu", "--resolution", "320x240", *args, "--json", str(out),
                  "--workdir", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_bench_command_reports_every_field(tmp_path: Path) -> None:
    table, report = _small_cpu_bench(tmp_path, "--streams", "1", "--faces", "1", "--duration", "8", "--warmup", "3",
                                     "--baseline-seconds", "4")
    assert "streams sustained in real time" in table and "ratio" in table  # the table

    assert set(report) == {"meta", "scenario", "units", "flops", "pipeline", "baseline", "ratio"}
    for path, value in _numbers(report):
        assert math.isfinite(value) and value >= 0, f"{path} = {value}"
    meta, scenario = report["meta"], report["scenario"]
    assert meta["weights"] == "random" and "same" in meta["weights_note"] and meta["preset"] == "small"
    assert meta["detectors"] == list(DETECTORS)
    assert (scenario["width"], scenario["height"], scenario["fps"], scenario["streams"]) == (320, 240, 30.0, 1)
    assert "track-s/s" in report["units"]["throughput"]

    flops = report["flops"]
    assert flops["peak"]["flops_per_s"] > 0 and flops["peak"]["dtype"] == "float32"
    assert flops["per_unit"]["caddm"]["per_frame"] > 0 and flops["per_unit"]["sta"]["per_window"] > 0
    assert flops["per_unit"]["styleflow"]["per_frame"] > 0 and flops["per_unit"]["styleflow"]["per_window"] > 0
    assert flops["faces_per_frame"] > 0 and set(flops["required_per_stream"]) == {*DETECTORS, "faces"}

    p = report["pipeline"]
    assert p["wall_s"] >= 7.5 and p["device"].startswith("cpu")
    assert p["frames"]["decoded_per_s"] > 0 and p["frames"]["analysed_per_s"] > 0
    assert len(p["streams"]) == 1 and 0 <= p["streams_sustained"] <= 1
    stream = p["streams"][0]
    assert {"id", "source_fps", "detect_fps", "decoded_fps", "analysed_fps", "dropped", "sustained"} <= set(stream)
    assert stream["detect_fps"] == 30.0, "StyleFlow takes every frame: every frame is face-detected"
    assert stream["sustained"] == (stream["analysed_fps"] >= 0.9 * 30 and stream["dropped"].get("ingest", 0) == 0
                                   and stream["dropped"].get("faces", 0) == 0)
    assert set(p["detectors"]) == set(DETECTORS)
    for d, row in p["detectors"].items():
        assert PIPELINE_DETECTOR_FIELDS <= set(row), d
        if d == "styleflow" and row["windows_scored"] == 0:
            # A live stream that drops frames (this CPU cannot keep 30 fps of face detection under
            # load) cuts StyleFlow's runs of consecutive frames before they fill a window: every
            # run is then counted as discarded, never scored with a gap (issue 12).
            assert row["windows_discarded"] > 0 and stream["dropped"], (d, row, stream)
            continue
        assert row["windows_scored"] > 0 and row["throughput"] > 0, (d, row)
    assert p["detectors"]["caddm"]["frames_computed"] > 0
    assert p["throughput_all"] == min(row["throughput"] for row in p["detectors"].values())
    assert p["busy_fraction"] > 0 and p["gpu_utilization"] is None
    assert set(p["faces"]["modes_per_s"]) <= {"full", "region", "fallback"} and p["faces"]["modes_per_s"]["full"] > 0
    latency = p["alert_latency_s"]
    assert latency["count"] > 0 and 0 <= latency["p50"] <= latency["p99"]
    assert {"detectors_per_s", "faces_per_s", "total_per_s", "mfu", "mfu_incl_faces"} <= set(p["flops"])
    assert 0 < p["flops"]["mfu"] <= p["flops"]["mfu_incl_faces"]

    base = report["baseline"]
    assert base["media_s"] == 4.0 and set(base["detectors"]) == set(DETECTORS) and base["throughput_all"] > 0
    for d, row in base["detectors"].items():
        assert BASELINE_FIELDS <= set(row), d
        assert row["frames_decoded"] == 120 and row["windows"] > 0 and row["throughput"] > 0, (d, row)
        assert row["wall_s"] >= sum(row["phases_s"].values()) * 0.99
    assert base["detectors"]["caddm"]["phases_s"]["write"] > 0  # frames went to disk first
    assert base["detectors"]["styleflow"]["frames_forwarded"] == 32 * base["detectors"]["styleflow"]["windows"]

    ratio = report["ratio"]
    assert set(ratio) == {*DETECTORS, "all"}
    for d in DETECTORS:
        assert ratio[d] > 0
        assert math.isclose(ratio[d], p["detectors"][d]["throughput"] / base["detectors"][d]["throughput"])
    assert math.isclose(ratio["all"], p["throughput_all"] / base["throughput_all"])


def test_flop_count_matches_hand_computation() -> None:
    linear = nn.Linear(64, 32)
    assert count_flops(lambda: linear(torch.zeros(5, 64))) == 2 * 5 * 64 * 32
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(lambda: conv(torch.zeros(1, 3, 16, 16))) == 2 * (8 * 16 * 16) * (3 * 3 * 3)


def test_meta_device_count_equals_a_real_forward() -> None:
    import models

    small = PRESETS["small"]["caddm"]
    cost = detector_flops("caddm", small["model"], small["overrides"])
    model = models.create_model(small["model"], **small["overrides"]).requires_grad_(False)
    assert cost.per_window == 0 and cost.per_frame == count_flops(lambda: model(torch.zeros(1, 3, 224, 224)))


def test_stream_flop_rates_follow_the_sampling() -> None:
    from stream_monitor.bench.flops import DetectorFlops

    costs = {"caddm": DetectorFlops("caddm", "m", 10.0, 0.0), "sta": DetectorFlops("sta", "m", 0.0, 800.0)}
    rates = stream_flop_rates(costs, {"caddm": 8.0, "sta": 2.0}, {"caddm": 4, "sta": 4}, faces=2, face_flops=3.0,
                              detect_fps=30.0)
    # CADDM: 8 frames/s x 10 x 2 faces; StA: a window per 4 samples at 2/s = 0.5 windows/s x 800 x 2.
    assert rates == {"caddm": 160.0, "sta": 800.0, "faces": 90.0}


def test_resolutions() -> None:
    assert parse_resolution("720p") == (1280, 720) and parse_resolution("1080P") == (1920, 1080)
    assert parse_resolution("320x240") == (320, 240)
    for bad in ("719p", "321x240", "10x10"):
        with pytest.raises(ValueError):
            parse_resolution(bad)


def test_unpaced_bench_measures_capacity_without_losing_work(tmp_path: Path) -> None:
    table, report = _small_cpu_bench(tmp_path, "--detectors", "caddm", "--pace", "unpaced", "--duration", "5",
                                     "--warmup", "2", "--baseline-seconds", "3")
    assert "unpaced" in table and "region" in table
    scenario, p = report["scenario"], report["pipeline"]
    assert scenario["pace"] == "unpaced" and scenario["realtime"] is False and "unpaced" in scenario["label"]
    caddm = p["detectors"]["caddm"]
    assert caddm["saturated"] is True, "unpaced sources offer whatever the monitor takes"
    assert caddm["windows_scored"] > 0 and caddm["windows_dropped"] == 0, caddm
    assert p["frames"]["dropped"].get("ingest", 0) == 0 and p["frames"]["dropped"].get("faces", 0) == 0
    modes = p["faces"]["modes_per_s"]
    assert modes.get("region", 0) > 0, modes  # tracked faces searched by region between full passes
    total = sum(modes.values())
    assert math.isclose(total, p["frames"]["analysed_per_s"], rel_tol=0.05, abs_tol=0.5), (modes, p["frames"])
    assert report["ratio"]["caddm"] is not None and report["ratio"]["caddm"] > 0


def test_bench_refuses_an_unknown_pace() -> None:
    proc = _bench("--pace", "fast", "--no-baseline", timeout=120)
    assert proc.returncode != 0 and "--pace realtime|unpaced" in proc.stderr
