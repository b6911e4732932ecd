"""Calibration: fitting on seeded synthetic scores, the file, the policy with it, the
``calibrate`` command, and calibrate → file → ``run`` alerts that say ``"calibrated": true``."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from stream_monitor.alerts.policy import AlertPolicy, PolicyConfig
from stream_monitor.calibration import (
    CalibrationError, ScoreRow, ScoresError, fit_calibration, load_calibration, read_scores,
    save_calibration, threshold_at_fpr,
)
from stream_monitor.types import Score
from tests.support.schema import check_schema
from tests.support.small import SMALL_DETECTORS

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"caddm": "caddm_resnet34@random", "sta": "sta_clip_vitl14@random", "styleflow": "styleflow@random"}


def _rows(seed: int, separation: dict[str, float], videos: int = 120, frames: int = 30) -> list[ScoreRow]:
    """Videos alternately real and fake; each detector's frame logits are normal around
    ``±separation/2`` (0: a detector that knows nothing). A video's score is its frames' mean."""
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(videos):
        label = v % 2
        for detector, sep in separation.items():
            z = rng.normal(sep / 2 * (1 if label else -1), 1.0, frames)
            p = 1.0 / (1.0 + np.exp(-z))
            rows.append(ScoreRow(f"v{v}.mp4", label, "synthetic" if label else None, detector, float(p.mean()),
                                 tuple(float(x) for x in p)))
    return rows


def _write_scores(path: Path, rows: list[ScoreRow]) -> Path:
    path.write_text("".join(json.dumps({"video": r.video, "label": r.label, "group": r.group,
                                        "detector": r.detector, "video_score": r.video_score,
                                        "frame_scores": list(r.frame_scores)}) + "\n" for r in rows))
    return path


# ---- fitting ----------------------------------------------------------------------------


def test_threshold_is_the_smallest_at_the_target_fpr() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.beta(2, 5, 1000), rng.beta(5, 2, 500)])
    labels = np.concatenate([np.zeros(1000, int), np.ones(500, int)])
    for target in (0.001, 0.01, 0.1, 0.5):
        t, fpr, tpr = threshold_at_fpr(scores, labels, target)
        real = scores[labels == 0]
        assert fpr == np.mean(real >= t) <= target and tpr == np.mean(scores[labels == 1] >= t)
        # Anything lower lets in the highest real score that had to be excluded: over the target.
        below = real[real < t].max()
        assert np.mean(real >= below) > target
    # Tied real scores at the cut are all excluded; real scores of 1.0 cannot be excluded at all.
    tied = np.array([0.2, 0.5, 0.5, 0.5, 0.9])
    t, fpr, _ = threshold_at_fpr(tied, np.array([0, 0, 0, 0, 1]), 0.3)
    assert 0.5 < t <= 0.500001 and fpr == 0.0
    t, fpr, _ = threshold_at_fpr(np.array([1.0, 1.0, 0.1, 1.0]), np.array([0, 0, 0, 1]), 0.1)
    assert t == 1.0 and fpr == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        threshold_at_fpr(np.array([0.1, 0.2]), np.array([1, 1]), 0.01)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_detector_thresholds_meet_the_target_and_maps_are_monotone(method: str) -> None:
    rows = _rows(1, {"caddm": 2.0, "sta": 1.0})
    cal = fit_calibration(rows, {"caddm": MODELS["caddm"], "sta": MODELS["sta"]}, fpr=0.02, method=method)  # type: ignore[arg-type]
    grid = np.linspace(0.0, 1.0, 501)
    for detector, c in cal.detectors.items():
        assert c.method == method and c.n_real == 60 * 30 and c.n_fake == 60 * 30
        assert c.fpr <= 0.02 and c.tpr > 0.1, (detector, c)
        mapped = c.apply_array(grid)
        assert np.all(np.diff(mapped) >= 0) and mapped.min() >= 0.0 and mapped.max() <= 1.0
        assert all(c.apply(float(p)) == pytest.approx(float(m)) for p, m in zip(grid[::50], mapped[::50]))
        # The recorded rates are the rates on the fit data.
        p = np.array([x for r in rows if r.detector == detector for x in r.frame_scores])
        y = np.array([r.label for r in rows if r.detector == detector for _ in r.frame_scores])
        calibrated = c.apply_array(p)
        assert np.mean(calibrated[y == 0] >= c.threshold) == c.fpr
        assert np.mean(calibrated[y == 1] >= c.threshold) == c.tpr
    if method == "isotonic":
        x, y_ = cal.detectors["caddm"].params["x"], cal.detectors["caddm"].params["y"]
        assert all(b > a for a, b in zip(x, x[1:])) and all(b >= a for a, b in zip(y_, y_[1:]))


def test_platt_calibrates() -> None:
    rng = np.random.default_rng(2)
    # An over-confident detector: its logit is 3x the true one. Labels drawn from the truth.
    true_logit = rng.normal(0.0, 1.5, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    raw = 1 / (1 + np.exp(-3 * true_logit))
    rows = [ScoreRow(f"v{i}", int(y), None, "caddm", None, (float(p),)) for i, (p, y) in enumerate(zip(raw, labels))]
    c = fit_calibration(rows, {"caddm": MODELS["caddm"]}, method="platt").detectors["caddm"]
    assert c.params["slope"] == pytest.approx(1 / 3, abs=0.05) and abs(c.params["intercept"]) < 0.1
    calibrated = c.apply_array(raw)
    for lo in np.arange(0.0, 1.0, 0.2):  # reliability: predicted ≈ observed in each bin
        in_bin = (calibrated >= lo) & (calibrated < lo + 0.2)
        assert abs(calibrated[in_bin].mean() - labels[in_bin].mean()) < 0.05
    brier_raw, brier_cal = np.mean((raw - labels) ** 2), np.mean((calibrated - labels) ** 2)
    assert brier_cal < brier_raw - 0.02


def test_fusion_weights_favour_the_informative_detector() -> None:
    rows = _rows(3, {"caddm": 3.0, "sta": 0.0})  # sta knows nothing
    cal = fit_calibration(rows, {"caddm": MODELS["caddm"], "sta": MODELS["sta"]}, fpr=0.01)
    model = cal.fused[frozenset({"caddm", "sta"})]

    def spread(detector: str) -> float:  # how much the detector moves the fused logit
        p = np.array([x for r in rows if r.detector == detector for x in r.frame_scores])
        z = np.log(cal.detectors[detector].apply_array(p)) - np.log1p(-cal.detectors[detector].apply_array(p))
        return abs(model.weights[detector]) * float(np.std(z))

    assert spread("caddm") > 10 * spread("sta")
    assert model.fpr <= 0.01 and model.tpr >= cal.detectors["caddm"].tpr - 0.05
    assert model.n_real == model.n_fake == 60 * 30


def test_assess_uses_the_model_of_the_detectors_present() -> None:
    cal = fit_calibration(_rows(4, {"caddm": 2.0, "sta": 1.5, "styleflow": 1.0}, videos=60, frames=10), MODELS)
    assert set(cal.fused) == {frozenset(c) for n in (2, 3) for c in itertools.combinations(MODELS, n)}
    alone = cal.assess({"sta": 0.7})
    assert alone.detectors == {"sta": cal.detectors["sta"].apply(0.7)}
    assert alone.score == alone.detectors["sta"] and alone.threshold == cal.detectors["sta"].threshold
    raw = {"caddm": 0.9, "sta": 0.7, "styleflow": 0.4}
    for n in (2, 3):
        for combo in itertools.combinations(raw, n):
            got = cal.assess({d: raw[d] for d in combo})
            model = cal.fused[frozenset(combo)]
            z = model.bias + sum(model.weights[d] * math.log(got.detectors[d] / (1 - got.detectors[d])) for d in combo)
            assert got.score == pytest.approx(1 / (1 + math.exp(-z))) and got.threshold == model.threshold


def test_video_level_fits_video_scores() -> None:
    rows = _rows(5, {"caddm": 1.0, "sta": 1.0}, videos=200, frames=8)
    cal = fit_calibration(rows, {"caddm": MODELS["caddm"], "sta": MODELS["sta"]}, level="video", fpr=0.05)
    assert cal.level == "video"
    assert cal.detectors["caddm"].n_real == cal.detectors["caddm"].n_fake == 100
    assert cal.fused[frozenset({"caddm", "sta"})].n_real == 100 and cal.detectors["sta"].fpr <= 0.05


def test_fit_refuses_missing_detectors_and_single_classes() -> None:
    rows = _rows(6, {"caddm": 1.0}, videos=10, frames=3)
    with pytest.raises(ScoresError, match="no scores for sta"):
        fit_calibration(rows, {"caddm": MODELS["caddm"], "sta": MODELS["sta"]})
    with pytest.raises(ScoresError, match="no real"):
        fit_calibration([r for r in rows if r.label == 1], {"caddm": MODELS["caddm"]})
    with pytest.raises(ScoresError, match="only real"):
        fit_calibration([r for r in rows if r.label == 0], {"caddm": MODELS["caddm"]})
    # Both detectors scored, but never the same video: no samples to fuse.
    sta = [ScoreRow("other" + r.video, r.label, None, "sta", r.video_score, r.frame_scores) for r in rows]
    with pytest.raises(ScoresError, match="fusion of caddm\\+sta"):
        fit_calibration(rows + sta, {"caddm": MODELS["caddm"], "sta": MODELS["sta"]})


# ---- files ------------------------------------------------------------------------------


def test_scores_file_errors_name_the_line(tmp_path: Path) -> None:
    good = {"video": "a.mp4", "label": 0, "group": None, "detector": "caddm", "video_score": 0.2,
            "frame_scores": [0.1, 0.3]}
    path = tmp_path / "scores.jsonl"
    cases = [
        ("{not json\n", "scores.jsonl:1"),
        (json.dumps(good) + "\n\n" + json.dumps({**good, "label": 2}) + "\n", "scores.jsonl:3: label"),
        (json.dumps({**good, "detector": "xception"}) + "\n", "unknown detector"),
        (json.dumps({**good, "frame_scores": [0.1, 1.5]}) + "\n", "frame_scores"),
        (json.dumps({**good, "video_score": float("nan")}) + "\n", "video_score"),
        (json.dumps({k: v for k, v in good.items() if k != "label"}) + "\n", "missing label"),
        (json.dumps(good) + "\n" + json.dumps(good) + "\n", "scores.jsonl:2: a second line"),
        (json.dumps(good) + "\n" + json.dumps({**good, "detector": "sta", "label": 1}) + "\n", "both labels"),
        ("\n", "no scores"),
    ]
    for text, needle in cases:
        path.write_text(text)
        with pytest.raises(ScoresError, match=needle):
            read_scores(path)
    with pytest.raises(ScoresError, match="cannot read"):
        read_scores(tmp_path / "absent.jsonl")
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "detector": "fused", "video_score": None}) + "\n")
    rows, digest = read_scores(path)
    assert [r.detector for r in rows] == ["caddm", "fused"] and len(digest) == 64


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_file_round_trip(tmp_path: Path, method: str) -> None:
    cal = fit_calibration(_rows(7, {"caddm": 2.0, "sta": 1.0}, videos=40, frames=10),
                          {"caddm": MODELS["caddm"], "sta": MODELS["sta"]}, method=method,  # type: ignore[arg-type]
                          source={"scores": "s.jsonl", "sha256": "ab" * 32})
    path = tmp_path / "cal.json"
    save_calibration(cal, path)
    loaded = load_calibration(path)
    assert loaded.to_json() == cal.to_json() and loaded.path == str(path)
    data = json.loads(path.read_text())
    assert data["schema"] == "stream-monitor/calibration" and data["version"] == 1 and data["created_at"]
    assert data["source"] == {"scores": "s.jsonl", "sha256": "ab" * 32} and data["fpr_target"] == 0.01
    raw = {"caddm": 0.8, "sta": 0.3}
    assert loaded.assess(raw) == cal.assess(raw)


def test_invalid_files_are_refused_naming_the_field(tmp_path: Path) -> None:
    cal = fit_calibration(_rows(8, {"caddm": 2.0, "sta": 1.0}, videos=20, frames=5),
                          {"caddm": MODELS["caddm"], "sta": MODELS["sta"]}, method="isotonic")
    good = cal.to_json()
    path = tmp_path / "cal.json"

    def refused(data: Any, needle: str) -> None:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        with pytest.raises(CalibrationError, match=needle):
            load_calibration(path)

    def edit(**changes: Any) -> dict[str, Any]:
        return {**json.loads(json.dumps(good)), **changes}

    refused("{", "not a JSON calibration file")
    refused([1, 2], "schema")
    refused(edit(version=2), "version 2 is not supported")
    refused({k: v for k, v in good.items() if k != "fpr_target"}, "missing 'fpr_target'")
    refused(edit(method="magic"), "method")
    bad = edit()
    bad["detectors"]["caddm"]["threshold"] = 1.5
    refused(bad, "detectors.caddm.threshold")
    bad = edit()
    bad["detectors"]["sta"]["params"]["x"] = list(reversed(bad["detectors"]["sta"]["params"]["x"]))
    refused(bad, "detectors.sta.params: x must increase")
    refused(edit(models={"caddm": MODELS["caddm"]}), "exactly the detectors in models")
    refused(edit(fused=[]), "fused lacks the combinations caddm\\+sta")
    bad = edit()
    bad["fused"][0]["weights"] = {"caddm": 1.0}
    refused(bad, "fused\\[0\\].weights")
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(tmp_path / "absent.json")


def test_models_must_match_the_running_ones() -> None:
    cal = fit_calibration(_rows(9, {"caddm": 2.0}, videos=20, frames=5), {"caddm": MODELS["caddm"]})
    cal.check_models({"caddm": MODELS["caddm"]})
    for running in ({"caddm": "caddm_resnet34@0123456789ab"}, {"caddm": MODELS["caddm"], "sta": MODELS["sta"]}):
        with pytest.raises(CalibrationError, match="was fitted for caddm=caddm_resnet34@random, but this run has"):
            cal.check_models(running)


# ---- the policy -------------------------------------------------------------------------


def test_policy_events_carry_calibrated_scores_threshold_and_fpr() -> None:
    cal = fit_calibration(_rows(10, {"caddm": 2.0, "sta": 2.0}, videos=60, frames=10),
                          {"caddm": MODELS["caddm"], "sta": MODELS["sta"]}, fpr=0.05)
    ids = itertools.count()
    policy = AlertPolicy(PolicyConfig(threshold=0.0, start_after=1, end_after=1, models=MODELS,
                                      calibration=cal), clock=lambda: 0.0, new_id=lambda: f"id{next(ids)}")

    def score(detector: str, p: float, t: float) -> Score:
        return Score("cam1", 1, detector, p, t - 1.0, t, 8, 100.0 + t, (0.0, 0.0, 10.0, 10.0))

    # A raw probability below caddm's calibrated threshold starts nothing although alerts.threshold is 0.
    assert cal.detectors["caddm"].apply(0.05) < cal.detectors["caddm"].threshold
    assert policy.on_score(score("caddm", 0.05, 1.0)) == []
    (start,) = policy.on_score(score("caddm", 0.99, 2.0))
    p = start.payload
    assert p["event"] == "start" and p["calibrated"] is True and p["fpr"] == 0.05
    assert p["threshold"] == cal.detectors["caddm"].threshold and p["raw"] == {"caddm": 0.99}
    assert p["detectors"]["caddm"] == pytest.approx(cal.detectors["caddm"].apply(0.99), abs=1e-6)
    assert p["score"] == p["detectors"]["caddm"] >= p["threshold"]
    (update,) = policy.on_score(score("sta", 0.95, 3.0))
    pair = cal.fused[frozenset({"caddm", "sta"})]
    assert update.payload["threshold"] == pair.threshold and update.payload["raw"] == {"caddm": 0.99, "sta": 0.95}
    assert update.payload["score"] == pytest.approx(cal.assess({"caddm": 0.99, "sta": 0.95}).score, abs=1e-6)
    (end,) = policy.on_track_end("cam1", 1)
    assert end.payload["event"] == "end" and end.payload["calibrated"] is True
    # Without a calibration nothing changes: the configured threshold and flag, no extra fields.
    plain = AlertPolicy(PolicyConfig(threshold=0.0, start_after=1), clock=lambda: 0.0)
    (ev,) = plain.on_score(score("caddm", 0.2, 1.0))
    assert ev.payload["calibrated"] is False and "fpr" not in ev.payload and "raw" not in ev.payload
    assert ev.payload["threshold"] == 0.0 and ev.payload["detectors"] == {"caddm": 0.2}


# ---- the command, and calibrate → file → run -------------------------------------------


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stream_monitor", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _small_yaml(tmp_path: Path, calibration: Path | None = None) -> Path:
    caddm = {**SMALL_DETECTORS["caddm"], "window_len": 4, "window_stride": 4}
    cfg: dict[str, Any] = {"detectors": {"enabled": ["caddm"], "device": "cpu", "random_weights": True,
                                         "caddm": caddm},
                           "faces": {"min_size": 20}, "alerts": {"threshold": 0.0, "start_after": 1}}
    if calibration is not None:
        cfg["detectors"]["calibration"] = str(calibration)
    path = tmp_path / ("calibrated.yaml" if calibration else "small.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_error_line(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_calibrate_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stream_monitor.cli import app

    config = _small_yaml(tmp_path)
    out = tmp_path / "cal.json"
    rows = _rows(11, {"caddm": 1.0}, videos=6, frames=3)
    fakes = _write_scores(tmp_path / "fakes.jsonl", [r for r in rows if r.label == 1])
    reals = _write_scores(tmp_path / "reals.jsonl", [r for r in rows if r.label == 0])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(reals.read_text() + "{oops\n")
    good = _write_scores(tmp_path / "good.jsonl", rows)
    cases = [
        ([str(tmp_path / "absent.jsonl")], "absent.jsonl: cannot read"),
        ([str(broken)], "broken.jsonl:4: "),
        ([str(fakes)], "no real (label 0) samples"),
        ([str(reals)], "only real samples"),
        ([str(good), "--fpr", "0"], "--fpr must be in (0, 1)"),
        ([str(good), "--method", "magic"], "--method platt|isotonic"),
        ([str(good), "--config", str(tmp_path / "absent.yaml")], "absent.yaml: no such file"),
        ([str(good), "--out", str(tmp_path / "nodir" / "cal.json")], "no such directory"),
    ]
    for args, needle in cases:
        flags = [*([] if "--config" in args else ["--config", str(config)]),
                 *([] if "--out" in args else ["--out", str(out)])]
        result = CliRunner().invoke(app, ["calibrate", *args, *flags])
        assert result.exit_code == 2 and result.stdout == "", (args, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert needle in result.stderr, (needle, result.stderr)
    assert not out.exists()


def test_calibrate_then_run_alerts_are_calibrated(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stream_monitor.cli import app
    from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
    from tests.support.media import write_video

    # Real videos' windows score below 0.5, fake ones above (overlapping a little): the threshold
    # lands near a raw 0.5, below what the seeded random small CADDM gives the synthetic face.
    rng = np.random.default_rng(12)
    rows = [ScoreRow(f"v{v}.mp4", v % 2, None, "caddm", None,
                     tuple(float(x) for x in np.clip(rng.normal(0.6 if v % 2 else 0.3, 0.1, 20), 0, 1)))
            for v in range(40)]
    scores = _write_scores(tmp_path / "scores.jsonl", rows)
    out = tmp_path / "cal.json"
    proc = CliRunner().invoke(app, ["calibrate", str(scores), "--out", str(out), "--config",
                                    str(_small_yaml(tmp_path)), "--method", "isotonic"])
    assert proc.exit_code == 0, proc.output
    cal = load_calibration(out)
    c = cal.detectors["caddm"]
    assert cal.models == {"caddm": "caddm_resnet34@random"} and cal.fpr_target == 0.01 and c.fpr <= 0.01
    assert "caddm" in proc.stdout and f"{c.threshold:.6f}" in proc.stdout and "isotonic" in proc.stdout

    spec = SyntheticSpec(fps=25, width=320, height=240, faces=1, seconds=2)
    video = write_video(tmp_path / "face.mp4", synthetic_frames(spec), fps=spec.fps)
    run = _cli("run", str(video), "--config", str(_small_yaml(tmp_path, out)), "--no-realtime", "--duration", "150")
    assert run.returncode == 0, run.stderr[-3000:]
    alerts = [json.loads(line) for line in run.stdout.splitlines()]
    assert alerts and alerts[0]["event"] == "start" and alerts[-1]["event"] == "end", run.stderr[-2000:]
    for a in alerts:
        check_schema(a, calibrated=True)
        assert a["threshold"] == c.threshold and a["fpr"] == 0.01  # not alerts.threshold (0)
        assert a["detectors"]["caddm"] == pytest.approx(c.apply(a["raw"]["caddm"]), abs=2e-6)
    assert alerts[0]["score"] >= c.threshold

    # The same file with other models: the service does not start (exit 2, one line).
    data = json.loads(out.read_text())
    data["models"]["caddm"] = "caddm_resnet34@0123456789ab"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    refused = _cli("run", str(video), "--config", str(_small_yaml(tmp_path, other)), "--no-realtime",
                   "--duration", "60")
    _one_error_line(refused, "other.json was fitted for caddm=caddm_resnet34@0123456789ab, but this run has "
                             "caddm=caddm_resnet34@random")
    assert refused.stdout == ""

