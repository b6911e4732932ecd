"""Track-guided (region) face detection with the real MTCNN on real face pixels."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
from skimage import data

from stream_monitor.config import FacesConfig, load_config
from stream_monitor.faces.detect import FaceDetector, create_detector
from stream_monitor.faces.roi import SIDE_STEP, Region, RegionDetector, region_for
from stream_monitor.faces.track import iou
from stream_monitor.inference.engine import Engine
from stream_monitor.ingest.synthetic import SyntheticScene, SyntheticSpec
from stream_monitor.metrics import Metrics
from stream_monitor.types import FaceObs, Frame
from tests.support.small import small_config

# Landmarks from a region agree with the full frame's to within this fraction of the face box
# side: MTCNN's own jitter between two consecutive frames of a still face is of this order
# (a few pixels on a 175-260 px face), measured 1-3 % here.
LANDMARK_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def mtcnn() -> FaceDetector:
    return create_detector(FacesConfig(), torch.device("cpu"))


def _scene(width: int, height: int, faces: int) -> SyntheticScene:
    return SyntheticScene(SyntheticSpec(fps=30, width=width, height=height, faces=faces, seconds=0))


def test_region_geometry_and_cut() -> None:
    region = region_for((100.0, 50.0, 180.0, 150.0), 2.5)  # 80 x 100 box -> 250 -> 256
    assert region.side == 256 and region.side % SIDE_STEP == 0
    assert (region.x, region.y) == (140 - 128, 100 - 128)
    image = np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8)
    cut = Region(-10, 280, 64, (0.0, 0.0, 1.0, 1.0)).cut(image)
    assert cut.shape == (64, 64, 3) and cut.dtype == np.uint8
    assert (cut[:, :10] == 0).all() and (cut[20:] == 0).all(), "outside the frame is black"
    np.testing.assert_array_equal(cut[:20, 10:], image[280:300, 0:54])
    face = FaceObs((1.0, 2.0, 30.0, 40.0), np.full((5, 2), 5.0, np.float32), 0.9)
    moved = Region(-10, 280, 64, (0.0, 0.0, 1.0, 1.0)).to_frame(face)
    assert moved.box == (-9.0, 282.0, 20.0, 320.0) and moved.score == 0.9
    np.testing.assert_array_equal(moved.points, np.tile(np.float32([-5.0, 285.0]), (5, 1)))


@pytest.mark.parametrize(("width", "height", "faces"), [(1280, 720, 1), (1280, 720, 2), (1920, 1080, 1)])
def test_regions_find_the_same_faces_as_the_full_frame(mtcnn: FaceDetector, width: int, height: int,
                                                       faces: int) -> None:
    scene = _scene(width, height, faces)
    regions = RegionDetector(mtcnn, FacesConfig())
    assert regions.enabled
    for index in (0, 45, 90):
        before, frame = scene.render(index), scene.render(index + 4)  # 4 frames = 1 CADDM sample later
        priors = [f.box for f in mtcnn.detect([before])[0]]
        assert len(priors) == faces
        full = mtcnn.detect([frame])[0]
        (found, mode), = regions.detect([frame], [priors])
        assert mode == "region" and len(found) == faces
        for face in found:
            ref = max(full, key=lambda f: iou(f.box, face.box))
            side = ref.box[2] - ref.box[0]
            assert iou(ref.box, face.box) > 0.85
            assert np.abs(face.points - ref.points).max() <= LANDMARK_TOLERANCE * side, (index, face, ref)
            assert face.score >= FacesConfig().min_confidence


def test_a_region_without_its_face_falls_back_to_the_full_frame(mtcnn: FaceDetector) -> None:
    scene = _scene(1280, 720, 1)
    frame = scene.render(10)
    full = mtcnn.detect([frame])[0]
    regions = RegionDetector(mtcnn, FacesConfig())
    (found, mode), = regions.detect([frame], [[(20.0, 20.0, 120.0, 140.0)]])  # nobody there
    assert mode == "fallback"
    assert [f.box for f in found] == [f.box for f in full]
    # No priors, or region detection disabled: the full frame, exactly the backend's answer.
    (found, mode), = regions.detect([frame], [None])
    assert mode == "full" and [f.box for f in found] == [f.box for f in full]
    off = RegionDetector(mtcnn, FacesConfig(roi={"enabled": False}))
    (found, mode), = off.detect([frame], [[full[0].box]])
    assert mode == "full" and [f.box for f in found] == [f.box for f in full]


def test_backends_without_sized_detection_always_detect_full_frames(mtcnn: FaceDetector) -> None:
    class FixedInput:  # stands for SCRFD: a fixed input size, no per-call smallest face
        def detect(self, images: list[np.ndarray]) -> list[list[FaceObs]]:
            return mtcnn.detect(images)

    regions = RegionDetector(FixedInput(), FacesConfig())
    assert not regions.enabled
    frame = _scene(640, 480, 1).render(0)
    (found, mode), = regions.detect([frame], [[(0.0, 0.0, 50.0, 50.0)]])
    assert mode == "full" and len(found) == 1


def _paste(frame: np.ndarray, head: np.ndarray, x: int, y: int) -> None:
    frame[y:y + head.shape[0], x:x + head.shape[1]] = head


def test_engine_detects_regions_between_refreshes_and_finds_new_faces() -> None:
    """30 fps, every frame analysed (detect_fps all), refresh 0.5 s: a second face that
    appears at frame 20 is found by the next full pass (frame 30), and most frames are
    searched by region."""
    cfg = load_config(overrides=small_config(detectors={"enabled": ["caddm"]},
                                             faces={"detect_fps": "all", "roi": {"refresh_s": 0.5}}),
                      environ={})
    metrics = Metrics()
    engine = Engine(cfg, metrics)
    engine.load()
    head = data.astronaut()[30:230, 150:330]  # 200 x 180 around the face (public domain)
    n, appears = 45, 20

    def frame(i: int) -> np.ndarray:
        image = np.full((480, 960, 3), 90, np.uint8)
        _paste(image, head, 40 + 2 * i, 120)
        if i >= appears:
            _paste(image, head[:, ::-1], 600, 150)
        return image

    async def main() -> list[int]:
        await engine.start()
        await engine.open_stream("s")
        t0 = time.time()
        counts = []
        for i in range(n):  # one at a time: each frame's priors come from the previous one
            analysis = await engine.analyse(Frame("s", i, i / 30, t0, frame(i)))  # type: ignore[misc]
            counts.append(len(analysis.faces))
        await engine.close_stream("s")
        await engine.stop()
        return counts

    counts = asyncio.run(main())
    modes = {m: metrics.face_detections.labels(m)._value.get() for m in ("full", "region", "fallback")}
    assert counts[:appears] == [1] * appears
    assert counts[30:] == [2] * (n - 30), counts  # the full pass at 1.0 s found it
    assert set(counts[appears:30]) <= {1, 2}
    assert modes["full"] + modes["fallback"] <= 5 and modes["region"] >= n - 5, modes
    assert sum(modes.values()) == n
