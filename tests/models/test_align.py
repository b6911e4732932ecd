"""Alignment solvers and the batched warp, against the libraries the authors used."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.transform import SimilarityTransform

from models.align import adapt_keypoints, fit_cp2tform, fit_template, fit_umeyama, warp_affine
from models.card import AlignTemplate

# A frontal face at roughly 2x the size of a 256 template, a little rotated.
FACE = np.array([[210.0, 240.0], [330.0, 236.0], [272.0, 310.0], [222.0, 372.0], [322.0, 368.0]])
TARGET = np.array([[85.83, 85.78], [169.05, 84.34], [127.57, 137.0], [90.70, 174.70], [167.31, 173.37]])


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def test_umeyama_equals_skimage_estimate() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        src = FACE + rng.normal(0, 6, FACE.shape)
        if hasattr(SimilarityTransform, "from_estimate"):
            tform = SimilarityTransform.from_estimate(src, TARGET)
        else:  # scikit-image < 0.26
            tform = SimilarityTransform()
            tform.estimate(src, TARGET)
        np.testing.assert_allclose(fit_umeyama(src, TARGET), tform.params[:2], atol=1e-9)


def test_both_solvers_recover_an_exact_similarity() -> None:
    m = _similarity(0.47, 8.0, -12.0, 30.0)
    dst = _apply(m, FACE)
    np.testing.assert_allclose(fit_umeyama(FACE, dst), m, atol=1e-9)
    np.testing.assert_allclose(fit_cp2tform(FACE, dst), m, atol=1e-9)


def test_cp2tform_is_least_squares_in_the_frame_not_the_crop() -> None:
    """With noise the two solvers differ; cp2tform's inverse must be the LS fit crop->frame."""
    rng = np.random.default_rng(1)
    src = np.concatenate([FACE + rng.normal(0, 1, FACE.shape) + [d, 0] for d in np.linspace(0, 60, 32)])
    dst = np.tile(TARGET, (32, 1))
    m_cp = fit_cp2tform(src, dst)
    m_um = fit_umeyama(src, dst)
    inverse_ls = fit_umeyama(dst, src)  # LS in frame space, crop -> frame
    full = np.vstack([inverse_ls, [0, 0, 1]])
    np.testing.assert_allclose(m_cp, np.linalg.inv(full)[:2], atol=1e-9)
    scale_cp, scale_um = np.hypot(*m_cp[0, :2]), np.hypot(*m_um[0, :2])
    assert scale_cp / scale_um > 1.01, "a drifting face should make cp2tform's scale larger"
    assert np.linalg.det(m_cp[:, :2]) > 0, "the reflective branch must not win on a face"


def test_fit_template_per_frame_and_per_clip() -> None:
    frames = np.stack([FACE + [3.0 * i, 0.0] for i in range(4)])
    per_frame = AlignTemplate("t", 256, tuple(map(tuple, TARGET)), "umeyama", False, "", "")  # type: ignore[arg-type]
    per_clip = AlignTemplate("t", 256, tuple(map(tuple, TARGET)), "cp2tform", True, "", "")  # type: ignore[arg-type]
    mats = fit_template(frames, per_frame)
    assert mats.shape == (4, 2, 3)
    for m, pts in zip(mats, frames):
        np.testing.assert_allclose(m, fit_umeyama(pts, TARGET))
    clip = fit_template(frames, per_clip)
    assert clip.shape == (2, 3)
    np.testing.assert_allclose(clip, fit_cp2tform(frames.reshape(-1, 2), np.tile(TARGET, (4, 1))))
    half = fit_template(frames, per_clip, size=128)
    np.testing.assert_allclose(_apply(half, FACE), _apply(clip, FACE) / 2, atol=1e-9)
    with pytest.raises(ValueError):
        fit_template(FACE, per_frame)


def test_adapt_keypoints_moves_in_the_face_frame() -> None:
    offsets = np.array([[-0.1, 0.0], [0.1, 0.0], [0.0, 0.2], [0.0, 0.0], [0.0, 0.0]])
    upright = np.array([[100.0, 100.0], [200.0, 100.0], [150.0, 150.0], [120.0, 200.0], [180.0, 200.0]])
    out = adapt_keypoints(upright, offsets)
    np.testing.assert_allclose(out[0], [90.0, 100.0])
    np.testing.assert_allclose(out[1], [210.0, 100.0])
    np.testing.assert_allclose(out[2], [150.0, 170.0])
    # Rotating the face rotates the offsets with it.
    rot = _similarity(1.0, 30.0, 0.0, 0.0)
    np.testing.assert_allclose(adapt_keypoints(_apply(rot, upright), offsets), _apply(rot, out), atol=1e-9)
    np.testing.assert_array_equal(adapt_keypoints(upright, None), upright)


def test_warp_affine_matches_cv2() -> None:
    rng = np.random.default_rng(2)
    # Smooth content: OpenCV's 1/32-quantised weights then differ by at most a grey level or two.
    small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    frame = cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC)
    mats = np.stack([_similarity(0.8, 10.0, -30.0, -20.0), _similarity(1.3, -25.0, 40.0, -60.0)])
    ours = warp_affine(torch.from_numpy(np.stack([frame, frame])), mats, 128).numpy()
    for m, crop in zip(mats, ours):
        ref = cv2.warpAffine(frame, m, (128, 128), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        diff = np.abs(ref.astype(int) - crop.astype(int))
        # Edges against the black border differ most (quantised weights); a half-pixel
        # convention error would shift every pixel and raise the mean (measured: 1.6 to 8 grey levels).
        assert diff.mean() < 0.25 and (diff > 1).mean() < 0.01 and diff.max() <= 8, (diff.max(), diff.mean())


def test_warp_affine_blacks_out_outside_the_box() -> None:
    frame = np.full((100, 100, 3), 200, dtype=np.uint8)
    crop = warp_affine(torch.from_numpy(frame[None]), np.eye(2, 3)[None], 100, boxes=[[20, 30, 60, 80]])[0].numpy()
    assert (crop[30:80, 20:60] == 200).all()
    assert (crop[:30] == 0).all() and (crop[:, 60:] == 0).all()
