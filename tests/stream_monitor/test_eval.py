"""``stream-monitor eval``: layouts, metrics, and a whole run on a dataset made by ``synth``.

The dataset: two generated real face videos (2 s, 12 fps, 192x144) and their pseudo-fakes
from ``synth`` (video-level blending, multi-scale swap, per-frame self-blending): 8 videos
in the FF++ layout. The detectors are the real ones, small and untrained (random
weights), so the numbers are not asserted — only that every metric exists and is a valid
number (or null where undefined), that the files are written, that the scores are the live
path's, and that a run killed half-way resumes from its cache to the same scores.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from stream_monitor.alerts.policy import fuse
from stream_monitor.config import load_config
from stream_monitor.evaluation.cache import count_videos
from stream_monitor.evaluation.datasets import DatasetError, load_dataset
from stream_monitor.evaluation.metrics import SCORE_KEYS, aggregate, binary_metrics
from stream_monitor.evaluation.run import EvalOptions, run_eval
from stream_monitor.evaluation.scoring import live_fusion
from stream_monitor.synth.build import SynthOptions, synthesize
from tests.support.face_videos import eval_config, write_eval_config, write_face_videos
from tests.support.listeners import RecordingListener

ROOT = Path(__file__).resolve().parents[2]
DETECTORS = ["caddm", "sta", "styleflow", "fused"]
METHOD_GROUPS = ["MultiScaleSwap", "SelfBlending", "VideoBlending"]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stream_monitor", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line of an expected failure (no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---------------------------------------------------------------- metrics


def test_metrics_follow_deepfakebench_definitions() -> None:
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], threshold=0.7)
    assert m["n"] == 4 and m["n_real"] == 2 and m["n_fake"] == 2
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 (fake, real) pairs ranked right
    assert m["ap"] == pytest.approx((1.0 + 2 / 3) / 2)  # precision 1 at recall .5, 2/3 at recall 1
    # ROC points (fpr, tpr): (0,0) (0,.5) (.5,.5) (.5,1) (1,1); |fnr - fpr| is smallest (0) at (.5,.5).
    assert m["eer"] == pytest.approx(0.5)
    assert m["acc"] == pytest.approx(0.75)  # p > 0.5: only 0.8 flagged
    assert m["tpr_at_threshold"] == pytest.approx(0.5) and m["fpr_at_threshold"] == pytest.approx(0.0)
    strict = binary_metrics([0, 1], [0.5, 0.5], threshold=0.5)
    assert strict["acc"] == pytest.approx(0.5)  # DeepfakeBench's strict > 0.5: 0.5 is "real"
    assert strict["tpr_at_threshold"] == 1.0 and strict["fpr_at_threshold"] == 1.0  # live rule: p >= threshold
    one_class = binary_metrics([1, 1], [0.2, 0.9], threshold=0.5)
    for key in ("auc", "eer", "ap", "fpr_at_threshold"):
        assert math.isnan(one_class[key])
    assert one_class["tpr_at_threshold"] == 0.5 and one_class["acc"] == 0.5
    assert all(math.isnan(binary_metrics([], [], 0.5)[k]) for k in SCORE_KEYS)


def test_video_aggregation_is_the_authors() -> None:
    assert aggregate("caddm", 0.3, [0.1, 0.5]) == 0.3  # predict's mean frame probability, as is
    logits = [math.log(0.9 / 0.1), math.log(0.2 / 0.8)]
    expected = 1 / (1 + math.exp(-sum(logits) / 2))
    assert aggregate("styleflow", 0.55, [0.9, 0.2]) == pytest.approx(expected)  # TrueMedia: sigmoid(mean logit)


def test_live_fusion_replays_the_policy_per_track() -> None:
    windows = {"caddm": [[1, 0.5, 0.2], [1, 1.0, 0.4], [2, 1.0, 0.9]], "sta": [[1, 0.8, 0.6]]}
    # time order: caddm t1 @.5, sta t1 @.8, caddm t1 @1.0, caddm t2 @1.0
    assert live_fusion(windows, "mean", {}) == pytest.approx([0.2, 0.4, 0.5, 0.9])
    assert live_fusion(windows, "max", {}) == pytest.approx([0.2, 0.6, 0.6, 0.9])
    assert live_fusion(windows, "weighted", {"sta": 3.0})[1] == pytest.approx(fuse({"caddm": 0.2, "sta": 0.6},
                                                                                    "weighted", {"sta": 3.0}))


# ---------------------------------------------------------------- layouts


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0")
    return path


def test_layouts_read_ffpp_celebdf_dfdc_deepfakebench_csv(tmp_path: Path) -> None:
    ff = tmp_path / "ff"
    for c in ("c23", "c40"):
        _touch(ff / f"original_sequences/youtube/{c}/videos/000.mp4")
        _touch(ff / f"original_sequences/youtube/{c}/videos/003.mp4")
        _touch(ff / f"original_sequences/actors/{c}/videos/01__a.mp4")
        for m in ("Deepfakes", "FaceSwap"):
            _touch(ff / f"manipulated_sequences/{m}/{c}/videos/000_003.mp4")
        _touch(ff / f"manipulated_sequences/DeepFakeDetection/{c}/videos/01_02__a.mp4")
    d = load_dataset(ff)
    assert d.layout == "ffpp"
    assert [(s.video, s.label, s.group) for s in d.samples] == [
        ("manipulated_sequences/Deepfakes/c23/videos/000_003.mp4", 1, "Deepfakes"),
        ("manipulated_sequences/FaceSwap/c23/videos/000_003.mp4", 1, "FaceSwap"),
        ("original_sequences/youtube/c23/videos/000.mp4", 0, "original"),
        ("original_sequences/youtube/c23/videos/003.mp4", 0, "original")]
    c40 = load_dataset(ff, compression="c40", methods=["DeepFakeDetection"])
    assert {(s.group, s.label) for s in c40.samples} == {("DeepFakeDetection", 1), ("actors", 0), ("original", 0)}
    split = tmp_path / "test.json"
    split.write_text(json.dumps([["000", "999"]]))
    assert [s.video.rsplit("/", 1)[1] for s in load_dataset(ff, split_file=split).samples] == ["000.mp4"]
    with pytest.raises(DatasetError, match="NeuralTextures"):
        load_dataset(ff, methods=["NeuralTextures"])
    with pytest.raises(DatasetError, match="raw"):
        load_dataset(ff, compression="raw")
    with pytest.raises(DatasetError, match="--root is for the deepfakebench layout"):
        load_dataset(ff, root=tmp_path)

    cdf = tmp_path / "cdf"
    _touch(cdf / "Celeb-real/id0_0000.mp4")
    _touch(cdf / "Celeb-synthesis/id0_id1_0000.mp4")
    (cdf / "List_of_testing_videos.txt").write_text("1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n")
    assert [(s.video, s.label, s.group) for s in load_dataset(cdf).samples] == [
        ("Celeb-real/id0_0000.mp4", 0, "Celeb-real"), ("Celeb-synthesis/id0_id1_0000.mp4", 1, "Celeb-synthesis")]

    dfdc = tmp_path / "dfdc"
    for part in ("dfdc_train_part_0", "dfdc_train_part_1"):
        _touch(dfdc / part / "a.mp4")
        _touch(dfdc / part / "b.mp4")
        (dfdc / part / "metadata.json").write_text(json.dumps({"a.mp4": {"label": "FAKE", "original": "b.mp4"},
                                                               "b.mp4": {"label": "REAL"}}))
    got = load_dataset(dfdc)
    assert got.layout == "dfdc" and got.counts() == {"real": 2, "fake": 2}
    assert got.samples[0].video == "dfdc_train_part_0/a.mp4" and got.samples[0].label == 1

    dfb_root = tmp_path / "dfb"
    _touch(dfb_root / "FaceForensics++/original_sequences/youtube/c23/videos/000.mp4")
    _touch(dfb_root / "FaceForensics++/manipulated_sequences/Deepfakes/c23/videos/000_003.mp4")
    dfb = {"FF-DF": {
        "FF-real": {"test": {"c23": {"000": {"label": "FF-real", "frames": [
            "/authors/disk/FaceForensics++/original_sequences/youtube/c23/frames/000/000.png"]}}}},
        "FF-DF": {"test": {"c23": {"000_003": {"label": "FF-DF", "frames": [
            "/authors/disk/FaceForensics++/manipulated_sequences/Deepfakes/c23/frames/000_003/000.png"]}}},
                  "train": {"c23": {"x": {"label": "FF-DF", "frames": ["nowhere/frames/x/0.png"]}}}}}}
    (tmp_path / "FF-DF.json").write_text(json.dumps(dfb))
    got = load_dataset(tmp_path / "FF-DF.json", root=dfb_root)
    assert [(s.video, s.label, s.group) for s in got.samples] == [
        ("FaceForensics++/manipulated_sequences/Deepfakes/c23/videos/000_003.mp4", 1, "FF-DF"),
        ("FaceForensics++/original_sequences/youtube/c23/videos/000.mp4", 0, "FF-real")]

    _touch(tmp_path / "lists/v/x.mp4")
    _touch(tmp_path / "lists/v/y.mp4")
    listing = tmp_path / "lists/labels.csv"
    listing.write_text("filename,label\nv/x.mp4,0\nv/y.mp4,FAKE\n")  # DFDC test labels.csv style header
    assert [(s.video, s.label, s.group) for s in load_dataset(listing).samples] == [("v/x.mp4", 0, None),
                                                                                    ("v/y.mp4", 1, None)]
    listing.write_text("v/x.mp4,1,mine\n")
    assert load_dataset(listing).samples[0].group == "mine"
    for bad, match in (("v/missing.mp4,0\n", "no such video"), ("v/x.mp4,maybe\n", "label"),
                       ("file:///etc/passwd,0\n", "not a local file"), ("v/x.mp4,0\nv/x.mp4,1\n", "real and")):
        listing.write_text(bad)
        with pytest.raises(DatasetError, match=match):
            load_dataset(listing)


def test_cli_refuses_bad_datasets_before_loading_models(tmp_path: Path,
                                                        outside: tuple[RecordingListener, RecordingListener]) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text(f"http://127.0.0.2:{outside[0].port}/v.mp4,1\n")
    proc = _cli("eval", str(listing), "--out", str(tmp_path / "out"), "--random-weights", timeout=120)
    assert proc.returncode == 2 and "not a local file" in _error_line(proc)
    assert outside[0].connections == [] and not (tmp_path / "out").exists()
    proc = _cli("eval", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2 and "no such file" in _error_line(proc)
    (tmp_path / "v.mp4").write_bytes(b"\0")
    listing.write_text("v.mp4,1\n")
    proc = _cli("eval", str(listing), "--out", str(tmp_path / "out"), "--weights-dir", str(tmp_path / "empty"),
                "--device", "cpu", timeout=120)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert "sta_best.pth" in proc.stderr and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("eval-data")
    write_face_videos(base / "reals", 2)
    synthesize(base / "reals", base / "ds", load_config(None, eval_config()), SynthOptions(), progress=False)
    return base / "ds"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("eval-clean")
    doc = run_eval(load_config(None, eval_config()), load_dataset(dataset), dataset,
                   EvalOptions(out=out, progress=False))
    yield out, doc


def _scores(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    return {(r["video"], r["detector"]): r for r in rows}


def _valid(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0)


def test_eval_reports_every_metric_per_detector_and_fused(dataset: Path, clean: tuple[Path, dict[str, Any]]) -> None:
    out, doc = clean
    for name in ("scores.jsonl", "metrics.json", "report.md", "roc.png", "hist.png"):
        assert (out / name).stat().st_size > 0, name
    for png in ("roc.png", "hist.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: no NaN tokens
    assert metrics["dataset"]["videos"] == 8 and metrics["dataset"]["real"] == 2
    assert metrics["calibrated"] is False and metrics["unreadable"] == []
    assert list(metrics["detectors"]) == DETECTORS
    for d in DETECTORS:
        m = metrics["detectors"][d]
        assert metrics["unscored"][d] == [], d  # every detector scored every video
        for level in ("frame", "video"):
            for key in SCORE_KEYS:
                assert key in m[level] and _valid(m[level][key]), (d, level, key, m[level].get(key))
            assert m[level]["n_real"] > 0 and m[level]["n_fake"] > 0
            assert m[level]["auc"] is not None and m[level]["eer"] is not None and m[level]["ap"] is not None
        assert m["video"]["n"] == 8
        assert m["groups"]["original"] == {"n_real": 2, "n_fake": 0, "scored_with": None}
        for g in METHOD_GROUPS:
            gm = m["groups"][g]
            assert gm["scored_with"] == "all real videos" and gm["video"]["n"] == 4  # 2 fakes + the 2 reals
            assert all(key in gm[level] and _valid(gm[level][key]) for level in ("frame", "video")
                       for key in SCORE_KEYS)
    report = (out / "report.md").read_text()
    for needle in ("| Detector | Frame AUC | Video AUC", "| CADDM |", "| StA |", "| StyleFlow |", "| Fused (live) |",
                   "VideoBlending", "Random weights"):
        assert needle in report

    scores = _scores(out)
    videos = {s.video for s in load_dataset(dataset).samples}
    assert {v for v, _ in scores} == videos and len(scores) == 8 * len(DETECTORS)
    cfg = load_config(None, eval_config())
    conn = sqlite3.connect(f"file:{out / 'cache.sqlite'}?mode=ro", uri=True)
    windows: dict[str, int] = {}
    for path, result in conn.execute("SELECT video_path, result FROM scores"):
        windows[path] = windows.get(path, 0) + len(json.loads(result)["windows"])
    conn.close()
    for v in videos:
        rows = {d: scores[(v, d)] for d in DETECTORS}
        assert (dataset / v).is_file()
        for d, r in rows.items():
            assert r["label"] == (0 if v.startswith("original_sequences") else 1)
            assert r["frame_scores"] and all(0.0 <= p <= 1.0 for p in r["frame_scores"])
            assert 0.0 <= r["video_score"] <= 1.0
        # predict's per-detector video scores: CADDM and StA are the mean of their frame/window scores
        for d in ("caddm", "sta"):
            assert rows[d]["video_score"] == pytest.approx(sum(rows[d]["frame_scores"]) /
                                                           len(rows[d]["frame_scores"]), abs=2e-6)
        # the fused video score is the live fusion of the three
        assert rows["fused"]["video_score"] == pytest.approx(
            fuse({d: rows[d]["video_score"] for d in DETECTORS[:3]}, cfg.alerts.fusion, cfg.alerts.weights), abs=2e-6)
        # and its frame scores: one per window of any detector, as the live policy fuses on each
        assert len(rows["fused"]["frame_scores"]) == windows[str((dataset / v).resolve())]


def _rows(cache: Path) -> dict[tuple[str, str], float]:
    conn = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
    try:
        return {(p, d): c for p, d, c in conn.execute("SELECT video_path, detector, created FROM scores")}
    finally:
        conn.close()


def test_eval_killed_half_way_resumes_from_its_cache(tmp_path: Path, dataset: Path,
                                                     clean: tuple[Path, dict[str, Any]]) -> None:
    cfg = write_eval_config(tmp_path / "small.yaml")
    out = tmp_path / "out"
    # A cache holding the clean run's faces but no scores (a shared --cache, as after another
    # detector's run): the detectors score every video again, the face detector is skipped.
    cache = tmp_path / "shared.sqlite"
    with sqlite3.connect(clean[0] / "cache.sqlite") as src, sqlite3.connect(cache) as dst:
        src.backup(dst)
    with sqlite3.connect(cache) as conn:
        conn.execute("DELETE FROM scores")
    args = [sys.executable, "-m", "stream_monitor", "eval", str(dataset), "--out", str(out), "-c", str(cfg),
            "--cache", str(cache)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        done = 0
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                done = count_videos(cache)
                if done >= 2:
                    break
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    stored = _rows(cache)
    done = len({p for p, _ in stored})
    assert 2 <= done < 8, f"killed after {done} of 8 videos:\n" + (tmp_path / "first.log").read_text()[-3000:]
    assert not (out / "scores.jsonl").exists()  # the report comes only at the end
    assert not (out / "cache.sqlite").exists()

    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming: {done} of 8 videos already scored" in second.stderr
    after = _rows(cache)
    assert {k: after[k] for k in stored} == stored  # the cached videos were not scored again
    assert len(after) == 8 * 3

    clean_scores, resumed = _scores(clean[0]), _scores(out)
    assert resumed.keys() == clean_scores.keys()
    for key, row in resumed.items():
        ref = clean_scores[key]
        assert row["video_score"] == pytest.approx(ref["video_score"], abs=1e-4), key
        assert row["frame_scores"] == pytest.approx(ref["frame_scores"], abs=1e-4), key
    assert "| Fused (live) |" in second.stdout  # the report is printed


def test_a_second_detector_reuses_the_cached_faces_and_scores(tmp_path: Path, dataset: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    listing = dataset / "manifest.csv"
    subset = tmp_path / "subset.csv"
    lines = listing.read_text().splitlines()
    subset.write_text("\n".join([lines[0]] + [f"{dataset}/{line}" for line in lines[1:3]]) + "\n")
    data = load_dataset(subset)
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="stream_monitor.evaluation.run")
    first = run_eval(load_config(None, eval_config(["caddm"])), data, subset, EvalOptions(out=out, progress=False))
    before = _rows(out / "cache.sqlite")
    assert {d for _, d in before} == {"caddm"} and len(before) == 2
    caplog.clear()
    second = run_eval(load_config(None, eval_config(["caddm", "sta"])), data, subset,
                      EvalOptions(out=out, progress=False))
    after = _rows(out / "cache.sqlite")
    assert {k: after[k] for k in before} == before and len(after) == 4  # CADDM kept, StA added
    faces = [r.getMessage() for r in caplog.records if r.getMessage().startswith("faces:")]
    assert len(faces) == 1 and faces[0].endswith(" 0 through the face detector"), faces
    assert int(faces[0].split()[1]) > 0
    assert second["detectors"]["caddm"]["video"] == first["detectors"]["caddm"]["video"]
    assert list(second["detectors"]) == ["caddm", "sta", "fused"]
