"""``stream-monitor synth``: the recipes on known images, and the command on generated face videos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream_monitor.evaluation.datasets import load_dataset
from stream_monitor.synth.blend import BlendParams, self_blend
from stream_monitor.synth.geometry import TEMPLATE_112, apply, face_hull, hull_box, similarity
from stream_monitor.synth.swap import SwapParams, facial_swap, place_window, swap_mask
from tests.support.face_videos import write_eval_config, write_face_videos

ROOT = Path(__file__).resolve().parents[2]


def _points(scale: float = 1.6, dx: float = 40.0, dy: float = 30.0) -> np.ndarray:
    """Five face points: the 112 template scaled and moved into a 256x256 frame."""
    return (TEMPLATE_112 * scale + [dx, dy]).astype(np.float32)


def _noise(seed: int = 0) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 2.0)


def test_similarity_recovers_a_known_transform_and_the_hull_covers_the_face() -> None:
    angle, scale, t = 0.3, 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = TEMPLATE_112 @ rot.T + t
    m = similarity(TEMPLATE_112, dst)
    assert np.allclose(m[:, :2], rot, atol=1e-9) and np.allclose(m[:, 2], t, atol=1e-9)
    assert np.allclose(apply(m, TEMPLATE_112), dst)

    pts = _points()
    hull = face_hull(pts)
    for x, y in pts:
        assert cv2.pointPolygonTest(hull.reshape(-1, 1, 2).astype(np.float32), (float(x), float(y)), False) >= 0
    x1, y1, x2, y2 = hull_box(hull)
    iod = float(pts[1, 0] - pts[0, 0])
    assert 1.7 * iod < x2 - x1 < 2.5 * iod  # cheek to cheek
    assert y1 < pts[:2, 1].min() - 0.2 * iod and y2 > pts[3:, 1].max() + 0.5 * iod  # brows to chin


def _params(**kw: object) -> BlendParams:
    base = dict(rgb_shift=(40.0, -30.0, 10.0), hue=3.0, saturation=1.1, brightness=0.05, contrast=1.05,
                frequency="blur", frequency_amount=1.2, scale=(1.03, 0.97), shift=(0.02, -0.01),
                mask_scale=(1.0, 1.0), mask_blur=0.04, ratio=1.0)
    base.update(kw)
    return BlendParams(**base)  # type: ignore[arg-type]


def test_self_blend_alters_the_face_only_and_repeats_exactly() -> None:
    frame, pts = _noise(), _points()
    out = self_blend(frame, pts, _params())
    assert out.shape == frame.shape and out.dtype == np.uint8
    inside = np.zeros(frame.shape[:2], np.uint8)
    cv2.fillConvexPoly(inside, face_hull(pts), 1)
    diff = np.abs(out.astype(int) - frame.astype(int)).sum(axis=2)
    assert diff[inside == 1].mean() > 20  # the face took the altered copy
    x1, y1, x2, y2 = hull_box(face_hull(pts))
    size = max(x2 - x1, y2 - y1)
    far = np.ones_like(inside)
    far[max(0, int(y1 - 0.5 * size)):int(y2 + 0.5 * size) + 1, max(0, int(x1 - 0.5 * size)):int(x2 + 0.5 * size) + 1] = 0
    assert far.any() and diff[far == 1].max() == 0  # nothing outside the face's work box changes
    assert np.array_equal(out, self_blend(frame, pts, _params()))  # same parameters, same pixels
    half = self_blend(frame, pts, _params(ratio=0.5))
    assert 0 < np.abs(half.astype(int) - frame.astype(int)).sum(axis=2)[inside == 1].mean() < diff[inside == 1].mean()


def test_partial_swap_window_goes_where_the_faces_differ() -> None:
    frame, pts = _noise(1), _points()
    hull = face_hull(pts)
    donor = frame.copy()
    # The donor differs in one patch on the face's lower left (image coordinates).
    px, py = int(pts[3, 0]) - 10, int(pts[3, 1]) - 6
    donor[py:py + 24, px:px + 40] = 255 - donor[py:py + 24, px:px + 40]
    placed = place_window(frame, donor, hull, SwapParams("partial", (40, 80), "alpha"))
    assert placed.anchor is not None
    mask = swap_mask(frame.shape[:2], hull, placed)
    assert mask[py + 12, px + 20] == 255  # the window covers the changed patch
    assert 0 < (mask > 0).sum() < (swap_mask(frame.shape[:2], hull, SwapParams("global", None, "alpha")) > 0).sum()
    out = facial_swap(frame, pts, donor, pts, placed)
    changed = np.abs(out.astype(int) - frame.astype(int)).sum(axis=2) > 0
    assert changed[py + 12, px + 20]
    assert not changed[cv2.dilate(mask, np.ones((7, 7), np.uint8)) == 0].any()  # alpha feathers <= 3 px


@pytest.mark.parametrize("blending", ["alpha", "poisson"])
def test_global_swap_pastes_the_aligned_donor_face(blending: str) -> None:
    frame = np.full((256, 256, 3), 40, np.uint8)
    donor = np.full((256, 256, 3), 40, np.uint8)
    dpts = _points(scale=1.2, dx=60, dy=50)  # the donor's face elsewhere and smaller
    cv2.fillConvexPoly(donor, face_hull(dpts), (200, 180, 160))
    donor[int(dpts[0, 1]) - 3:int(dpts[0, 1]) + 3, int(dpts[0, 0]) - 3:int(dpts[0, 0]) + 3] = 0  # a dark "eye"
    pts = _points()
    out = facial_swap(frame, pts, donor, dpts, SwapParams("global", None, blending))
    nose = (int(pts[2, 1]), int(pts[2, 0]))
    eye = (int(pts[0, 1]), int(pts[0, 0]))
    # The donor's eye lands on this face's eye point. Alpha pastes the donor's pixels; Poisson
    # editing pastes its gradients (the flat face takes this frame's colour, the eye stays dark).
    assert out[nose].mean() > out[eye].mean() + 30
    if blending == "alpha":
        assert out[nose].mean() > 150
    assert out[5, 5].tolist() == [40, 40, 40]  # background untouched


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stream_monitor", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_synth_writes_ffpp_layout_with_temporally_consistent_video_blending(tmp_path: Path) -> None:
    write_face_videos(tmp_path / "reals", 2, seconds=1.5, static=True)
    cfg = write_eval_config(tmp_path / "small.yaml")
    out = tmp_path / "ds"
    proc = _cli("synth", str(tmp_path / "reals"), str(out), "-c", str(cfg), "--seed", "3", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 real and 6 pseudo-fake videos" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["path"]: e for e in manifest["videos"]}
    assert set(entries) == {
        "original_sequences/youtube/c23/videos/real_0.mp4", "original_sequences/youtube/c23/videos/real_1.mp4",
        "manipulated_sequences/VideoBlending/c23/videos/real_0.mp4",
        "manipulated_sequences/VideoBlending/c23/videos/real_1.mp4",
        "manipulated_sequences/SelfBlending/c23/videos/real_0.mp4",
        "manipulated_sequences/SelfBlending/c23/videos/real_1.mp4",
        "manipulated_sequences/MultiScaleSwap/c23/videos/real_0_real_1.mp4",
        "manipulated_sequences/MultiScaleSwap/c23/videos/real_1_real_0.mp4"}
    assert "not real deepfakes" in manifest["note"] and manifest["seed"] == 3
    for path, e in entries.items():
        assert (out / path).is_file()
        assert e["frames"] == 18
        if e["label"] == 1:
            assert e["frames_altered"] == 18
        else:
            assert e["frames_with_face"] == 18
    assert entries["manipulated_sequences/MultiScaleSwap/c23/videos/real_0_real_1.mp4"]["donor"] == "real_1.mp4"
    assert set(entries["manipulated_sequences/VideoBlending/c23/videos/real_0.mp4"]["params"]) >= {
        "rgb_shift", "frequency", "mask_blur", "ratio"}
    assert entries["manipulated_sequences/MultiScaleSwap/c23/videos/real_0_real_1.mp4"]["params"]["level"] in (
        "global", "partial")
    # eval reads the output both as FF++ and through manifest.csv
    ff, listed = load_dataset(out), load_dataset(out / "manifest.csv")
    assert ff.layout == "ffpp" and ff.counts() == listed.counts() == {"real": 2, "fake": 6}
    assert {(s.video, s.label, s.group) for s in ff.samples} == {(s.video, s.label, s.group) for s in listed.samples}

    # The face does not move: consecutive frames of the real video differ by codec noise only. Video-level
    # blending alters every frame alike (noise-level changes between frames); per-frame blending flickers.
    real = _decode(out / "original_sequences/youtube/c23/videos/real_0.mp4")
    vb = _decode(out / "manipulated_sequences/VideoBlending/c23/videos/real_0.mp4")
    sbi = _decode(out / "manipulated_sequences/SelfBlending/c23/videos/real_0.mp4")
    mfs = _decode(out / "manipulated_sequences/MultiScaleSwap/c23/videos/real_0_real_1.mp4")

    face = np.abs(real[0] - real[0, 0, 0]).sum(axis=-1) > 20  # the head (the background is flat)

    def change(v: np.ndarray) -> float:
        return float(np.abs(v - real)[:, face].mean())

    def flicker(v: np.ndarray) -> float:
        return float(np.abs(np.diff(v, axis=0))[:, face].mean())

    assert change(vb) > 1.0 and change(sbi) > 1.0 and change(mfs) > 0.5
    assert flicker(vb) < flicker(real) + 0.3
    assert flicker(sbi) > 3 * flicker(vb) + 1.0


def _refused(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr


def test_synth_refuses_bad_inputs_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _refused(_cli("synth", str(tmp_path / "empty"), str(tmp_path / "out1"), timeout=120), "no video files")
    write_face_videos(tmp_path / "one", 1, seconds=0.5)
    _refused(_cli("synth", str(tmp_path / "one"), str(tmp_path / "out2"), timeout=120), "at least two real videos")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    _refused(_cli("synth", str(tmp_path / "one"), str(tmp_path / "busy"), "--methods", "vb,nope", timeout=120),
             "--methods")
    _refused(_cli("synth", str(tmp_path / "one"), str(tmp_path / "busy"), "--methods", "vb", timeout=120),
             "not an empty folder")
    assert (tmp_path / "busy" / "x").read_text() == "keep me"
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
