"""The prepared GPU check (``scripts/gpu-check.sh``): its dry run on this CPU, its budget, its ladder.

The dry run is the same script and the same steps as on the GPU machine, with the small
configuration: every step must run and leave the JSON fields the summary and BENCHMARKS.md
read. Speed is never asserted here; the numbers of a dry run mean nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stream_monitor.bench.gpu_check import allowed_seconds, run_child
from stream_monitor.bench.gpu_plan import CUDA_TESTS, DRY, GPU, STEPS
from stream_monitor.bench.ladder import next_count
from stream_monitor.inference.runners import AUTOCAST_TOLERANCE

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
# What the GPU machine may send back: at most 8 files, names of letters, digits, '.', '_', '-'.
MAX_FILES = 8
FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _check(*args: str, timeout: float = 900) -> "subprocess.CompletedProcess[str]":
    # This interpreter; and never the wheels of .whl/ (built for the GPU machine's Python 3.12).
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_INSTALL": "0"}
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _positive(row: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(row[key], (int, float)) and row[key] > 0, (key, row)


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> tuple["subprocess.CompletedProcess[str]", Path]:
    out = tmp_path_factory.mktemp("gpu-check-out")
    return _check("--dry", "--out", str(out)), out


def test_dry_run_runs_every_step(dry: tuple["subprocess.CompletedProcess[str]", Path]) -> None:
    proc, out = dry
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["version"] == 1 and report["mode"] == "dry" and report["settings"]["device"] == "cpu"
    assert list(report["steps"]) == list(STEPS)
    for name, entry in report["steps"].items():
        assert entry["status"] == "ok" and entry["error"] is None, (name, entry)
        assert 0 < entry["seconds"] and entry["allowed_s"] >= STEPS[name][0] * DRY.time_scale, (name, entry)
        assert isinstance(entry["result"], dict), name
    assert 0 < report["elapsed_s"] <= report["budget_s"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench_capacity.json", "gpu_check.json", "steps.log", "summary.md", "tests.txt"]
    assert len(files) <= MAX_FILES and all(FILE_NAME.fullmatch(f) for f in files)
    assert "===== step compile =====" in (out / "steps.log").read_text()


def test_dry_run_results_have_the_fields_the_summary_reads(
        dry: tuple["subprocess.CompletedProcess[str]", Path]) -> None:
    proc, out = dry
    steps = {n: e["result"] for n, e in json.loads((out / "gpu_check.json").read_text())["steps"].items()}

    env = steps["env"]
    assert env["device"]["cuda_available"] is False and env["asked_device"] == "cpu" and env["cpus"] >= 1
    assert all(env["packages"][p] for p in ("torch", "av", "pydantic", "facenet-pytorch", "redis", "pytest"))
    assert isinstance(env["ffmpeg_hwdevices"], list) and isinstance(env["nvdec_problem"], (str, type(None)))

    peak = steps["peak"]
    assert set(peak["dtypes"]) == set(DRY.peak_dtypes)
    _positive(peak["dtypes"]["fp32"], "flops_per_s")
    assert peak["mfu_reference"] == {"dtype": "fp32", "flops_per_s": peak["dtypes"]["fp32"]["flops_per_s"]}

    tests = steps["tests"]
    assert tests["exit_code"] == 0 and tests["counts"]["passed"] > 0 and tests["counts"]["skipped"] > 0
    assert all(t in tests["command"] for t in CUDA_TESTS) and tests["log"] == "tests.txt"
    assert "passed" in (out / "tests.txt").read_text()

    forwards = steps["forwards"]
    assert forwards["tolerance"] == AUTOCAST_TOLERANCE and set(forwards["detectors"]) == {"caddm", "sta", "styleflow"}
    for d, row in forwards["detectors"].items():
        assert "error" not in row, (d, row)
        _positive(row, "flops_per_call", "batch")
        assert set(row["precisions"]) == {"fp32", "bf16", "fp16"}
        for precision in ("fp32", "bf16"):
            _positive(row["precisions"][precision], "median_s", "flops_per_s", "mfu")
        bf16 = row["precisions"]["bf16"]
        assert 0 < bf16["max_abs_dp"] <= AUTOCAST_TOLERANCE and bf16["within_tolerance"] is True, (d, bf16)
        assert "CUDA" in row["precisions"]["fp16"]["skipped"]  # the runners refuse fp16 off CUDA
        assert 0 <= row["p_range"][0] <= row["p_range"][1] <= 1

    capacity = steps["capacity"]
    bench = json.loads((out / capacity["report"]).read_text())
    assert bench["scenario"]["pace"] == "unpaced" and bench["meta"]["precision"] == "bf16"
    caddm = capacity["lanes"]["caddm"]
    _positive(caddm, "ours", "baseline", "ratio", "mfu", "baseline_mfu")
    assert caddm["ratio"] == pytest.approx(caddm["ours"] / caddm["baseline"])
    assert capacity["ratio_all"] == pytest.approx(capacity["ours_all"] / capacity["baseline_all"])

    ladder = steps["ladder"]
    probes = ladder["probes"]
    assert probes and probes[0]["streams"] == DRY.ladder_start
    for p in probes:
        assert {"keeps_up", "why", "sustained", "analysed_per_s", "detectors", "busy_fraction", "cpu_util",
                "alert_latency_s", "dropped"} <= set(p)
        assert p["keeps_up"] == (not p["why"])
    kept = [p["streams"] for p in probes if p["keeps_up"]]
    # A loaded 2-core machine may not keep even one stream up: then latency is of one stream and two.
    assert ladder["capacity_streams"] == max(kept, default=0)
    assert ladder["latency_base_streams"] == max(1, ladder["capacity_streams"])
    assert ladder["stopped"] in ("converged", "max_streams")
    for label, load in (("80%", 0.8), ("200%", 2.0)):
        row = ladder["latency"][label]
        assert row["load"] == load and row["streams"] == max(1, int(load * ladder["latency_base_streams"]))
        latency = row["alert_latency_s"]
        if latency["count"]:
            assert 0 <= latency["p50"] <= latency["p99"], latency
        else:  # nothing scored in the interval (a very busy machine): no percentiles, not zeros
            assert latency["p50"] is None and latency["p99"] is None

    decode = steps["decode"]
    software = decode["decoders"]["none"]
    assert software["available"] and software["decoded_on"] == ["software"]
    assert software["frames"] == round(DRY.decode_seconds * DRY.fps) and software["max_abs_diff_vs_software"] == 0
    _positive(software, "fps_single", "fps_parallel_total")
    cuda = decode["decoders"]["cuda"]
    assert cuda["available"] or cuda["reason"], cuda  # a CPU host says why NVDEC is unusable

    compiled = steps["compile"]["detectors"]["caddm"]
    assert set(compiled) == set(DRY.compile_modes)
    _positive(compiled["aot_eager"], "first_call_s", "median_s", "speedup_vs_off")
    assert compiled["aot_eager"]["max_abs_dp_vs_off"] <= 1e-6  # graph capture changes no number

    summary = (out / "summary.md").read_text()
    assert summary in proc.stdout
    for heading in ("## Matmul peak", "## CUDA tests", "## Detector forwards", "## Capacity against the authors'",
                    "## Streams in real time", "## NVDEC against software decode", "## torch.compile"):
        assert heading in summary, heading
    assert all(f"| {name} | ok |" in summary for name in STEPS)


def test_a_step_that_cannot_run_is_recorded_and_the_others_still_run(tmp_path: Path) -> None:
    # The GPU configuration on this CPU: the facts are gathered, the peak fails in one line.
    proc = _check("--only", "env", "peak", "--out", str(tmp_path), timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert list(steps) == ["env", "peak"] and steps["env"]["status"] == "ok"
    assert steps["peak"]["status"] == "error" and "no CUDA device" in steps["peak"]["error"]
    assert "Traceback" in (tmp_path / "steps.log").read_text()  # the details stay in the log
    assert "| peak | error |" in proc.stdout


def test_steps_without_time_are_skipped_not_started(tmp_path: Path) -> None:
    proc = _check("--only", "env", "tests", "--budget", "12", "--out", str(tmp_path), timeout=60)
    assert proc.returncode == 1
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    for name in ("env", "tests"):
        assert steps[name]["status"] == "skipped" and "not enough time" in steps[name]["error"], steps[name]
    assert (tmp_path / "steps.log").read_text() == ""


def test_a_step_past_its_limit_is_killed(tmp_path: Path) -> None:
    workdir, out = tmp_path / "work", tmp_path / "out"
    workdir.mkdir()
    out.mkdir()
    (workdir / "settings.json").write_text(json.dumps(DRY.to_json()))
    (workdir / "report.json").write_text(json.dumps({"steps": {}}))
    entry = run_child("env", 0.2, workdir, out, grace=0.0)  # no process imports torch in 0.2 s
    assert entry["status"] == "timeout" and entry["result"] is None and "killed after" in entry["error"]
    assert "===== step env =====" in (out / "steps.log").read_text()


def test_the_budget_keeps_the_later_steps_floors() -> None:
    names = list(STEPS)
    floors = sum(STEPS[n][0] for n in names[1:])
    assert allowed_seconds("env", 1000.0, names[1:]) == STEPS["env"][1]  # plenty: the cap
    assert allowed_seconds("env", floors + 3.0, names[1:]) == 3.0
    assert allowed_seconds("compile", 50.0, []) == 50.0  # the last step takes what is left
    assert allowed_seconds("env", 1000.0, names[1:], scale=2.0) == 2 * STEPS["env"][1]
    assert allowed_seconds("env", 2 * floors + 3.0, names[1:], scale=2.0) == 3.0
    assert GPU.budget_s <= 480 and sum(f for f, _ in STEPS.values()) < GPU.budget_s


@pytest.mark.parametrize("capacity", [0, 1, 5, 8, 37, 64, 255, 1000])
def test_the_ladder_doubles_then_bisects_to_the_capacity(capacity: int) -> None:
    start, max_streams = 8, 256
    lo, hi, n, probed = 0, None, start, []
    while True:
        probed.append(n)
        if n <= capacity:
            lo = max(lo, n)
        else:
            hi = n if hi is None else min(hi, n)
        nxt = next_count(lo, hi, n, max_streams)
        if nxt is None:
            break
        assert nxt not in probed, probed
        n = nxt
    assert lo <= capacity and (hi is None or hi > capacity)
    if capacity >= max_streams:
        assert lo == max_streams and hi is None
    else:
        assert hi is not None and hi - lo <= max(1, lo // 16), (lo, hi)
    assert len(probed) <= 12, probed  # within the ladder's share of the 8 minutes
