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
    # Naming the detectors turns the CPU profile off: every default model's files are asked for.
    proc = _cli("run", str(face_video), "--weights-dir", str(tmp_path / "empty"), "--device", "cpu",
                "--detectors", "caddm,sta,styleflow", timeout=120)
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
        # The API answers while the models load: ready once they are.
        wait_until(lambda: call("GET", "/readyz") == (200, {"ready": True}), 120, "ready")
        assert call("POST", "/streams", {"id": "synth", "url": "synthetic:?fps=10"})[0] == 201
        wait_until(lambda: call("GET", "/streams/synth")[1]["frames_analysed"] > 3, 60, "frames analysed")
        status, result = call("POST", "/predict", {"file_path": str(face_video)})
        assert status == 200 and result["frames"] == 100
        assert call("DELETE", "/streams/synth")[0] == 204
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    # The API was up before the models loaded (the random-weights warning comes from loading them).
    assert err.index("API on http://") < err.index("RANDOM WEIGHTS"), err[-3000:]


# --- issue 15: the CLI's edge, the CPU profile, finite runs -----------------------------------------------------


def _one_error_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The process failed with ``code`` and said so in exactly one line, ``error: ...``, naming ``needles``."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_expected_failures_are_one_line_before_any_model_loads(tmp_path: Path, face_video: Path) -> None:
    # --log-level warning: a model load would log "RANDOM WEIGHTS" (a warning), so a single line also
    # shows that nothing was loaded before the refusal.
    quiet = ("--random-weights", "--log-level", "warning")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x80\x02not a checkpoint at all" * 4)  # torch's legacy reader: KeyError/IndexError
    _one_error_line(_cli("weights", "import", str(junk), "--detector", "caddm", "--weights-dir", str(tmp_path / "w"),
                         timeout=120), 2, "junk.bin")
    assert not (tmp_path / "w" / "caddm_efficientnet_b4.safetensors").exists()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    _one_error_line(_cli("alerts", "tail", "--redis", dead, timeout=60), 1, "Redis", dead)
    _one_error_line(_cli("bench", "--duration", "-3", "--log-level", "warning", timeout=60), 2, "--duration")
    _one_error_line(_cli("run", str(face_video), "--duration", "-5", *quiet, timeout=60), 2, "--duration")
    _one_error_line(_cli("run", str(face_video), "--threshold", "1.5", *quiet, timeout=60), 2, "--threshold")
    _one_error_line(_cli("run", str(face_video), "--api-port", "70000", *quiet, timeout=60), 2, "--api-port")
    _one_error_line(_cli("run", str(face_video), "--log-format", "xml", "--random-weights", timeout=60), 2,
                    "--log-format")
    _one_error_line(_cli("run", str(face_video), "--bogus", timeout=60), 2, "--bogus")
    _one_error_line(_cli("run", str(tmp_path / "absent.mp4"), *quiet, timeout=60), 2, "absent.mp4")
    _one_error_line(_cli("run", str(face_video), "--config", str(tmp_path / "nope.yaml"), *quiet, timeout=60), 2,
                    "--config", "nope.yaml")
    _one_error_line(_cli("predict", str(tmp_path / "nope.mp4"), *quiet, timeout=60), 2, "nope.mp4")


def test_serve_on_a_port_in_use_is_one_line_before_models_load(tmp_path: Path) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = _cli("serve", "--random-weights", "--log-level", "warning", "--api-port", str(port), timeout=120)
    _one_error_line(proc, 1, f"127.0.0.1:{port}")


def test_version() -> None:
    from stream_monitor import __version__

    proc = _cli("--version", timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"stream-monitor {__version__}", proc.stderr


def test_every_option_has_help() -> None:
    import typer.main

    from stream_monitor.cli import app

    def walk(cmd: Any, path: str) -> list[str]:
        lacking = [f"{path} {p.opts[0]}" for p in cmd.params
                   if getattr(p, "param_type_name", "") == "option" and not p.hidden and not (p.help or "").strip()]
        for name, sub in getattr(cmd, "commands", {}).items():
            lacking += walk(sub, f"{path} {name}")
        return lacking

    assert walk(typer.main.get_command(app), "stream-monitor") == []


def test_verbose_is_for_our_loggers_only() -> None:
    import logging

    from stream_monitor.logs import setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in ("stream_monitor", "models")})
    try:
        setup_logging(verbose=True)
        assert logging.getLogger("stream_monitor.app").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("models").isEnabledFor(logging.DEBUG)
        for lib in ("aiohttp.access", "urllib3.connectionpool", "asyncio"):
            assert not logging.getLogger(lib).isEnabledFor(logging.DEBUG), lib
            assert logging.getLogger(lib).isEnabledFor(logging.INFO), lib
        setup_logging("warning")
        assert not logging.getLogger("stream_monitor.app").isEnabledFor(logging.INFO)
        assert not logging.getLogger("aiohttp.server").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


def test_cpu_profile_selection() -> None:
    from stream_monitor.config import load_config
    from stream_monitor.profiles import CPU_PROFILE, cpu_profile

    def no_cuda() -> bool:
        return False

    assert CPU_PROFILE == yaml.safe_load((ROOT / "deploy" / "demo-cpu.yaml").read_text())  # kept in step
    assert cpu_profile({}, no_cuda) == CPU_PROFILE
    assert cpu_profile({"detectors": {"device": "cpu"}}, lambda: True) == CPU_PROFILE
    assert cpu_profile({}, lambda: True) is None  # auto finds CUDA
    assert cpu_profile({"detectors": {"device": "cuda"}}, no_cuda) is None
    assert cpu_profile({"detectors": {"enabled": ["sta"]}}, no_cuda) is None  # naming detectors turns it off
    cfg = load_config(None, {"ingest": {"max_fps": 2.0}}, environ={}, profile=lambda d: cpu_profile(d, no_cuda))
    assert cfg.detectors.enabled == ["caddm"] and cfg.detectors.caddm.model == "caddm_resnet34"
    assert cfg.ingest.max_fps == 2.0  # what the user sets wins over the profile
    named = load_config(None, {"detectors": {"enabled": ["sta"]}}, environ={},
                        profile=lambda d: cpu_profile(d, no_cuda))
    assert named.detectors.enabled == ["sta"] and named.ingest.max_fps is None


def test_cpu_profile_is_said_once_and_log_format_json(tmp_path: Path, face_video: Path) -> None:
    # No detectors named, no CUDA here: the CPU profile's model is the one whose files are asked for.
    proc = _cli("run", str(face_video), "--weights-dir", str(tmp_path / "empty"), "--device", "cpu",
                "--log-format", "json", timeout=120)
    assert proc.returncode == 2 and "resnet34.pkl" in proc.stderr and "sta_best.pth" not in proc.stderr, proc.stderr
    records = []
    for line in proc.stderr.splitlines():
        if line.startswith("error:") or line.startswith("  ") or not line.startswith("{"):
            continue  # the missing-weights message (several lines by design)
        records.append(json.loads(line))
    assert records and all(set(r) >= {"ts", "level", "logger", "message"} for r in records)
    notes = [r for r in records if r["logger"] == "stream_monitor.profiles"]
    assert len(notes) == 1 and notes[0]["level"] == "info" and "--detectors" in notes[0]["message"], records


def test_weights_import_is_0644_and_list_verify_cover_variants(tmp_path: Path) -> None:
    import stat

    import torch
    from typer.testing import CliRunner

    import models
    from stream_monitor.cli import app

    def cli(*args: str) -> Any:
        return CliRunner().invoke(app, list(args), catch_exceptions=False)

    weights = tmp_path / "w"
    r34 = tmp_path / "r34.pth"
    torch.save(dict(models.create_model("caddm_resnet34", device="cpu").state_dict()), r34)
    old = os.umask(0o077)  # a root shell's strict umask must not make the file unreadable to others
    try:
        imported = cli("weights", "import", str(r34), "--detector", "caddm_resnet34", "--weights-dir", str(weights))
    finally:
        os.umask(old)
    assert imported.exit_code == 0, imported.output
    out = weights / "caddm_resnet34.safetensors"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert not [p for p in weights.iterdir() if p.name.startswith(".")]  # no partial file left behind
    cfg = tmp_path / "r34.yaml"
    cfg.write_text(yaml.safe_dump({"detectors": {"weights_dir": str(weights), "caddm": {"model": "caddm_resnet34"}}}))
    listing = cli("weights", "list", "--config", str(cfg))
    assert listing.exit_code == 0, listing.output
    for variant in ("caddm_efficientnet_b3", "caddm_efficientnet_b4", "caddm_resnet34", "styleflow_truemedia"):
        assert f"({variant})" in listing.stdout
    assert "caddm (caddm_resnet34)  [configured]  [converted:" in listing.stdout
    # The configured model verifies; other variants of caddm are only checked when present.
    ok = cli("weights", "verify", "--config", str(cfg), "--detectors", "caddm")
    assert ok.exit_code == 0 and "caddm: ok (caddm_resnet34)" in ok.stdout, ok.output
    # Default config: B4 is configured and missing (fails), the present ResNet-34 is still checked.
    default = cli("weights", "verify", "--weights-dir", str(weights), "--detectors", "caddm")
    assert default.exit_code == 2 and "caddm: FAILED" in default.stdout
    assert "caddm/caddm_resnet34: ok (caddm_resnet34)" in default.stdout, default.stdout


def test_run_file_scores_every_window_and_prints_a_summary(tmp_path: Path) -> None:
    from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
    from tests.support.media import write_video

    spec = SyntheticSpec(fps=25, width=320, height=240, faces=2, seconds=2)
    video = write_video(tmp_path / "two.mp4", synthetic_frames(spec), fps=spec.fps)
    cfg = _small_yaml(tmp_path, ["caddm"])
    predicted = _cli("predict", str(video), "--config", str(cfg), "--random-weights", timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    windows = json.loads(predicted.stdout)["windows"]["caddm"]
    assert windows >= 10
    proc = _cli("run", str(video), "--config", str(cfg), "--random-weights", "--threshold", "0", "--no-realtime",
                timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [line for line in proc.stderr.splitlines() if line.startswith("summary: ")]
    assert len(summary) == 1, proc.stderr[-3000:]
    assert f", {windows} windows scored," in summary[0] and "50 frames analysed" in summary[0], (summary, windows)
    assert "2 tracks" in summary[0] and ", 0 shed" in summary[0], summary
    alerts = [json.loads(line) for line in proc.stdout.splitlines()]
    assert f"{len(alerts)} alert events" in summary[0]
    starts = {a["track_id"] for a in alerts if a["event"] == "start"}
    assert len(starts) == 2, alerts  # both faces' incidents, each ended


def test_run_rtsp_without_config_alerts_and_stops_on_duration(tmp_path: Path) -> None:
    """Issue 15's "done when": no configuration on a machine without CUDA (the CPU profile), a
    five-face 720p RTSP stream, random weights, threshold 0: alerts arrive, and the process
    exits within 10 s of --duration passing."""
    import threading

    from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
    from tests.support.media import write_video
    from tests.support.rtsp import RtspServer

    # 5 fps (what the CPU profile analyses) and longer than the run: the stream does not restart
    # (which would end every track) and the file costs little to encode.
    duration = 40.0
    spec = SyntheticSpec(fps=5, width=1280, height=720, faces=5, seconds=duration + 20)
    video = write_video(tmp_path / "five.mp4", synthetic_frames(spec), fps=spec.fps)
    server = RtspServer(tmp_path, files={"/five": video})
    server.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "stream_monitor", "run", server.url("/five"), "--random-weights",
                             "--threshold", "0", "--duration", f"{duration:g}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []  # stderr, each line with when it arrived
    out_lines: list[str] = []
    readers = [threading.Thread(target=lambda: [lines.append((time.monotonic(), x)) for x in proc.stderr or []]),
               threading.Thread(target=lambda: out_lines.extend(proc.stdout or []))]
    for r in readers:
        r.start()
    try:
        proc.wait(timeout=240)
        ended = time.monotonic()
        for r in readers:
            r.join(timeout=10)
    finally:
        proc.kill()
        server.stop()
    out = "".join(out_lines)
    err = "".join(line for _, line in lines)
    assert proc.returncode == 0, err[-3000:]
    assert "CPU profile" in err and "caddm_resnet34" in err, err[-3000:]
    alerts = [json.loads(line) for line in out.splitlines()]
    assert any(a["event"] == "start" for a in alerts), err[-3000:]
    for a in alerts:
        check_schema(a)
    started = [t for t, line in lines if "stopping after" in line]
    assert len(started) == 1, err[-3000:]
    assert ended - started[0] <= duration + 10, (ended - started[0], err[-3000:])
    assert any(line.startswith("summary: 1 stream(s)") for _, line in lines), err[-3000:]
