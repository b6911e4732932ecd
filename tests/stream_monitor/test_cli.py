"""The ``stream-monitor`` command as a user runs it: a real process, real files, real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.support.schema import check_schema, metric
from tests.support.servers import RedisServer, free_port, wait_until
from tests.support.small import SMALL_DETECTORS

ROOT = Path(__file__).resolve().parents[2]


def _small_yaml(tmp_path: Path, enabled: list[str]) -> Path:
    cfg = {"detectors": {"enabled": enabled, "device": "cpu", **SMALL_DETECTORS,
                         "caddm": {**SMALL_DETECTORS["caddm"], "sample_fps": "all", "window_len": 4,
                                   "window_stride": 4}},
           "faces": {"min_size": 20}}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str, timeout: float = 240, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stream_monitor", *args], cwd=kw.pop("cwd", ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def test_run_prints_alerts_as_json_lines(tmp_path: Path, face_video: Path) -> None:
    cfg = _small_yaml(tmp_path, ["caddm"])
    proc = _cli("run", str(face_video), "--config", str(cfg), "--random-weights", "--threshold", "0",
                "--no-realtime", "--duration", "200")
    assert proc.returncode == 0, proc.stderr[-3000:]
    alerts = [json.loads(line) for line in proc.stdout.splitlines()]
    assert alerts, proc.stderr[-2000:]
    for a in alerts:
        check_schema(a)
    assert alerts[0]["event"] == "start" and alerts[-1]["event"] == "end"
    assert "RANDOM WEIGHTS" in proc.stderr


def test_missing_weights_exit_2_and_name_the_files(tmp_path: Path, face_video: Path) -> None:
    proc = _cli("run", str(face_video), "--weights-dir", str(tmp_path / "empty"), "--device", "cpu", timeout=120)
    assert proc.returncode == 2
    for needle in ("efficientnet-b4.pkl", "sta_best.pth", "psp_ffhq_encode.pt", "--random-weights"):
        assert needle in proc.stderr
    bad = _cli("run", "ftp://example/x", "--random-weights", timeout=60)
    assert bad.returncode == 2 and "ftp" in bad.stderr


def test_run_against_rtsp_and_redis_with_metrics(tmp_path: Path, rtsp_server: Any, redis_server: RedisServer) -> None:
    cfg = _small_yaml(tmp_path, ["caddm"])
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "stream_monitor", "run", rtsp_server.url("/face"), "--config",
                             str(cfg), "--random-weights", "--threshold", "0", "--redis", redis_server.url,
                             "--duration", "60", "--metrics-port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = redis.Redis.from_url(redis_server.url)
    try:
        wait_until(lambda: client.xlen("deepfake:alerts") >= 2, 90, "alerts in Redis")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=5).read())
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert out == "", "with --redis, alerts go to Redis, not stdout"
    assert health == {"healthy": True}
    assert metric(text, "stream_monitor_frames_received_total") > 0
    assert metric(text, "stream_monitor_alerts_total") >= 1
    entries = client.xrange("deepfake:alerts")
    alerts = [json.loads(fields[b"alert"]) for _, fields in entries]
    for a in alerts:
        check_schema(a)
    # SIGTERM stops gracefully: the open incident got its end event.
    assert alerts[-1]["event"] == "end"


def test_predict_command(tmp_path: Path, face_video: Path) -> None:
    cfg = _small_yaml(tmp_path, ["caddm", "sta", "styleflow"])
    proc = _cli("predict", str(face_video), "--config", str(cfg), "--random-weights", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["frames"] == 100 and result["faces"] >= 90
    assert set(result["detectors"]) == {"caddm", "sta", "styleflow"}
    assert 0.0 <= result["fake_probability"] <= 1.0 and result["label"] in ("FAKE", "REAL")
    missing = _cli("predict", str(tmp_path / "nope.mp4"), "--config", str(cfg), "--random-weights", timeout=120)
    assert missing.returncode != 0 and "nope.mp4" in missing.stderr


def test_alerts_tail(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.xadd("deepfake:alerts", {"alert": json.dumps({"stream_id": "old", "seq": 0})})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "stream_monitor", "alerts", "tail", "--redis", redis_server.url,
                             "--history", "1", "--count", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        client.publish("deepfake:alerts:cam9", json.dumps({"stream_id": "cam9", "seq": 1}))
        time.sleep(0.3)
    out, err = proc.communicate(timeout=10)
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines[0] == {"stream_id": "old", "seq": 0} and lines[1] == {"stream_id": "cam9", "seq": 1}, err


def test_weights_commands(tmp_path: Path) -> None:
    listing = _cli("weights", "list", "--weights-dir", str(tmp_path), timeout=120)
    assert listing.returncode == 0
    assert "sta_best.pth" in listing.stdout and "missing" in listing.stdout and "CC BY-NC 4.0" in listing.stdout
    verify = _cli("weights", "verify", "--weights-dir", str(tmp_path), timeout=120)
    assert verify.returncode == 2 and "FAILED" in verify.stdout
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    imported = _cli("weights", "import", str(junk), "--detector", "sta", "--weights-dir", str(tmp_path), timeout=120)
    assert imported.returncode == 2 and "junk.pth" in imported.stderr


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["weights", "--help"]])
def test_help(args: list[str]) -> None:
    proc = _cli(*args, timeout=60)
    assert proc.returncode == 0 and "Usage" in proc.stdout


def test_serve_with_streams_added_at_run_time(tmp_path: Path, face_video: Path) -> None:
    cfg = _small_yaml(tmp_path, ["caddm"])
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STREAM_MONITOR_API_TOKEN": "tok"}
    proc = subprocess.Popen([sys.executable, "-m", "stream_monitor", "serve", "--config", str(cfg),
                             "--random-weights", "--api-port", str(port), "--predict-root", str(face_video.parent)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(base + path, method=method, headers={"Authorization": "Bearer tok",
                                                                          "Content-Type": "application/json"},
                                     data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        wait_until(lambda: urllib.request.urlopen(base + "/healthcheck", timeout=1).status == 200, 120, "serve")
        assert call("GET", "/readyz") == (200, {"ready": True})
        assert call("POST", "/streams", {"id": "synth", "url": "synthetic:?fps=10"})[0] == 201
        wait_until(lambda: call("GET", "/streams/synth")[1]["frames_analysed"] > 3, 60, "frames analysed")
        status, result = call("POST", "/predict", {"file_path": str(face_video)})
        assert status == 200 and result["frames"] == 100
        assert call("DELETE", "/streams/synth")[0] == 204
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
