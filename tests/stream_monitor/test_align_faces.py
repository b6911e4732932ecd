"""Per-detector alignment of tracked faces: per-frame crops and StyleFlow's per-clip canvas."""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

import models
from models.align import adapt_keypoints, caddm_fit, caddm_matrix, deepfakebench_target32, fit_cp2tform
from stream_monitor.faces.align import Aligner, context_box
from stream_monitor.types import FaceObs, WindowItem

POINTS = np.array([[300, 200], [360, 198], [331, 236], [305, 268], [355, 266]], np.float32)


def _frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)


def _face(shift: float) -> FaceObs:
    pts = POINTS + np.float32([shift, shift / 2])
    # A tight box, so the 2x context region is smaller than the crop and black shows.
    box = (float(pts[:, 0].min() - 8), float(pts[:, 1].min() - 12), float(pts[:, 0].max() + 8),
           float(pts[:, 1].max() + 8))
    return FaceObs(box=box, points=pts, score=0.99)


def test_context_box_follows_ftcn() -> None:
    assert context_box((100, 100, 200, 160), 2.0, 640, 480) == (50, 70, 250, 190)
    assert context_box((10.4, 5.6, 100.2, 90.0), 2.0, 120, 100) == (0, 0, 119, 99)  # clipped to the frame


def test_per_frame_crop_is_the_authors_warp() -> None:
    """StA: scikit-image's fit of float32 points onto the float32 template, then warpAffine."""
    card = models.create_model("sta_clip_vitl14", device="meta").card
    t = card.template
    image, face = _frame(0), _face(0)
    crop, origin = Aligner(t).patch(image, face)
    pts = adapt_keypoints(face.points.astype(np.float64), np.asarray(t.keypoint_offsets))
    tform = SimilarityTransform.from_estimate(pts.astype(np.float32), deepfakebench_target32(t.size))
    ref = cv2.warpAffine(image, tform.params[:2], (t.size, t.size))
    assert origin == (0, 0) and crop.shape == (t.size, t.size, 3)
    np.testing.assert_array_equal(crop, ref)
    # The given authors' keypoints replace the adapted detector points.
    theirs = face.points.astype(np.float64) + 3.0
    tform = SimilarityTransform.from_estimate(theirs.astype(np.float32), deepfakebench_target32(t.size))
    np.testing.assert_array_equal(Aligner(t).patch(image, face, theirs)[0],
                                  cv2.warpAffine(image, tform.params[:2], (t.size, t.size)))


def test_caddm_crop_is_the_composed_perspective_warp() -> None:
    """CADDM: one warpPerspective of M3·M2·M1, where at test time M2 is the identity and M3
    nearly so (float32 rounding of the identity stretches leaves 1e-9 in its perspective
    row) — not warpAffine of M1, which differs by up to several grey levels. The authors'
    own function is compared in test_crop_parity.py."""
    t = models.create_model("caddm_efficientnet_b4", device="meta").card.template
    image, face = _frame(1), _face(0)
    crop, _ = Aligner(t).patch(image, face)
    m1 = caddm_fit(face.points.astype(np.float64), np.asarray(t.points))
    m = caddm_matrix(face.points.astype(np.float64), t, t.size)
    assert m.shape == (3, 3) and 0 < np.abs(m[2, :2]).max() < 1e-8 and abs(m[2, 2] - 1) < 1e-5
    np.testing.assert_allclose(m[:2], m1, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(crop, cv2.warpPerspective(image, m, (t.size, t.size)))
    affine = cv2.warpAffine(image, m1, (t.size, t.size))
    assert (affine != crop).any(), "expected warpAffine to differ somewhere (else this test proves nothing)"


def test_per_clip_crops_equal_the_black_canvas_warp() -> None:
    t = models.create_model("styleflow", device="meta").card.template
    assert t.per_clip
    aligner = Aligner(t)
    frames, faces, items = [], [], []
    for i in range(6):
        image, face = _frame(i), _face(4.0 * i)
        patch, origin = aligner.patch(image, face)
        frames.append(image)
        faces.append(face)
        items.append(WindowItem(i, i / 30, 0.0, face.box, face.points, patch, origin))
    crops = aligner.clip_crops(items)
    assert crops.shape == (6, t.size, t.size, 3)
    m = fit_cp2tform(np.concatenate([f.points for f in faces]).astype(np.float64), np.tile(np.asarray(t.points), (6, 1)))
    for image, face, crop in zip(frames, faces, crops):
        x1, y1, x2, y2 = context_box(face.box, t.box_scale or 2.0, 640, 480)
        canvas = np.zeros_like(image)
        canvas[y1:y2, x1:x2] = image[y1:y2, x1:x2]
        ref = cv2.warpAffine(canvas, m, (t.size, t.size))
        diff = np.abs(ref.astype(int) - crop.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
        assert crop.any() and (crop == 0).all(axis=-1).any(), "expected black outside the context box"
