"""Face detection backends: MTCNN on a real face photo, SCRFD on an SCRFD-shaped ONNX model.

Faces come from scikit-image's astronaut (public domain, NASA), pasted into frames; the
five points hand-checked on the source photo are the reference for location and order.
SCRFD's real weights cannot be downloaded here, so ``tests.support.scrfd_model`` exports a
model with its exact input/output layout that encodes faces at known places.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from stream_monitor.batch_sizes import padded_size, power_of_two_parts
from stream_monitor.config import FacesConfig
from stream_monitor.errors import FaceBackendError
from stream_monitor.faces.detect import FaceDetector, create_detector, select_faces
from stream_monitor.faces.mtcnn import MtcnnDetector, PaddedBatches
from stream_monitor.types import FaceObs
from tests.support.scrfd_model import export_fake_scrfd, expected_faces

torch.set_num_threads(1)

ASTRONAUT = data.astronaut()  # uint8 RGB 512x512
# Hand-checked on the photo: image-left eye, image-right eye, nose tip, mouth corners.
ASTRONAUT_POINTS = np.array([[205, 101], [247, 103], [225, 129], [201, 140], [245, 141]], np.float32)
ASTRONAUT_BOX = (180.0, 60.0, 268.0, 172.0)  # brows to chin, ear to ear (approximately)
MIRROR_ORDER = [1, 0, 2, 4, 3]  # a mirrored face swaps image-left and image-right points


def _paste(frame: np.ndarray, scale: float, x: int, y: int, mirror: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Paste the scaled astronaut at (x, y); returns its expected box [4] and points [5, 2] in the frame."""
    size = round(512 * scale)
    photo = cv2.resize(ASTRONAUT, (size, size), interpolation=cv2.INTER_AREA)
    pts = ASTRONAUT_POINTS.copy()
    box = np.array(ASTRONAUT_BOX, np.float32)
    if mirror:
        photo = photo[:, ::-1]
        pts[:, 0] = 512 - pts[:, 0]
        pts = pts[MIRROR_ORDER]
        box = np.array([512 - box[2], box[1], 512 - box[0], box[3]], np.float32)
    frame[y:y + size, x:x + size] = photo
    offset = np.array([x, y], np.float32)
    return box * scale + np.tile(offset, 2), pts * scale + offset


def _blank(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), 96, np.uint8)


def _iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _assert_face_at(face: FaceObs, box: np.ndarray, points: np.ndarray) -> None:
    eye_distance = float(np.linalg.norm(points[1] - points[0]))
    assert _iou(face.box, box) > 0.5, (face.box, box)
    assert face.points.dtype == np.float32 and face.points.shape == (5, 2)
    err = np.linalg.norm(face.points - points, axis=1)
    assert err.max() < 0.25 * eye_distance, (face.points, points)
    p = face.points
    assert p[0, 0] < p[1, 0] and p[3, 0] < p[4, 0]  # image-left before image-right
    assert max(p[0, 1], p[1, 1]) < p[2, 1] < min(p[3, 1], p[4, 1])  # eyes above nose above mouth
    x1, y1, x2, y2 = face.box
    assert (x1 < p[:, 0]).all() and (p[:, 0] < x2).all() and (y1 < p[:, 1]).all() and (p[:, 1] < y2).all()
    assert 0.0 <= face.score <= 1.0


def _assert_same(a: list[list[FaceObs]], b: list[list[FaceObs]], atol: float) -> None:
    assert [len(x) for x in a] == [len(x) for x in b]
    for fa, fb in zip(a, b):
        for x, y in zip(fa, fb):
            np.testing.assert_allclose(x.box, y.box, atol=atol)
            np.testing.assert_allclose(x.points, y.points, atol=atol)
            assert x.score == pytest.approx(y.score, abs=1e-5)


# ---------------------------------------------------------------------------------------- selection rule


def _obs(score: float, size: float) -> FaceObs:
    return FaceObs(box=(10.0, 10.0, 10.0 + size, 10.0 + size * 1.2), points=np.zeros((5, 2), np.float32), score=score)


def test_select_faces_applies_confidence_size_and_count() -> None:
    faces = [_obs(0.96, 50), _obs(0.99, 45), _obs(0.94, 200), _obs(0.99, 80), _obs(0.97, 39)]
    kept = select_faces(faces, FacesConfig(min_confidence=0.95, min_size=40, max_faces=10))
    assert [(f.score, f.box[2] - 10) for f in kept] == [(0.99, 80), (0.99, 45), (0.96, 50)]  # tie: larger first
    top = select_faces(faces, FacesConfig(min_confidence=0.95, min_size=40, max_faces=1))
    assert [(f.score, f.box[2] - 10) for f in top] == [(0.99, 80)]


# ---------------------------------------------------------------------------------------- MTCNN


@pytest.fixture(scope="module")
def mtcnn() -> FaceDetector:
    return create_detector(FacesConfig(backend="mtcnn", min_size=40), torch.device("cpu"))


def _one_face_frame(width: int = 640, height: int = 480, scale: float = 0.75, x: int = 150, y: int = 60,
                    mirror: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = _blank(width, height)
    box, pts = _paste(frame, scale, x, y, mirror)
    return frame, box, pts


def _two_face_frame() -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    frame = _blank(640, 480)
    left = _paste(frame, 0.55, 20, 100)
    right = _paste(frame, 0.55, 340, 100, mirror=True)
    return frame, [left, right]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_mtcnn_finds_the_face_with_points_in_order(device: str, mtcnn: FaceDetector) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    detector = mtcnn if device == "cpu" else create_detector(FacesConfig(min_size=40), torch.device(device))
    frame, box, pts = _one_face_frame()
    (faces,) = detector.detect([frame])
    assert len(faces) == 1
    _assert_face_at(faces[0], box, pts)
    assert faces[0].score >= 0.95
    if device == "cuda":
        _assert_same([faces], mtcnn.detect([frame]), atol=0.5)


def test_mtcnn_two_faces_and_a_mirrored_one_keeps_image_order(mtcnn: FaceDetector) -> None:
    frame, expected = _two_face_frame()
    (faces,) = mtcnn.detect([frame])
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score
    by_x = sorted(faces, key=lambda f: f.box[0])
    for face, (box, pts) in zip(by_x, expected):
        _assert_face_at(face, box, pts)


def test_mtcnn_blank_and_tiny_frames_have_no_faces(mtcnn: FaceDetector) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert mtcnn.detect([_blank(640, 480), noise, _blank(32, 24)]) == [[], [], []]
    assert mtcnn.detect([]) == []


@pytest.mark.parametrize("batch_size", [8, 2])
def test_mtcnn_batch_equals_one_by_one_and_groups_by_size(batch_size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import facenet_pytorch

    detector = create_detector(FacesConfig(min_size=40, batch_size=batch_size), torch.device("cpu"))
    big, big_box, big_pts = _one_face_frame()
    two, _ = _two_face_frame()
    small, small_box, small_pts = _one_face_frame(480, 360, 0.6, 100, 40)
    mirrored, *_ = _one_face_frame(480, 360, 0.6, 120, 30, mirror=True)
    frames = [big, small, two, _blank(480, 360), mirrored, big]
    singles = [detector.detect([f])[0] for f in frames]
    assert [len(f) for f in singles] == [1, 1, 2, 0, 1, 1]
    _assert_face_at(singles[1][0], small_box, small_pts)

    stacks: list[tuple[int, ...]] = []
    original = facenet_pytorch.MTCNN.detect

    def counting_detect(self: Any, img: Any, landmarks: bool = False) -> Any:
        stacks.append(tuple(np.asarray(img).shape))
        return original(self, img, landmarks)

    monkeypatch.setattr(facenet_pytorch.MTCNN, "detect", counting_detect)
    batched = detector.detect(frames)
    _assert_same(batched, singles, atol=1e-3)
    # Stacked calls per size (640x480: 3 frames, 480x360: 3 frames), split by batch_size, and
    # each chunk into power-of-two stacks (3 frames: 2 + 1).
    per_size = [part.stop - part.start for n in _chunks(3, batch_size) for part in power_of_two_parts(n)]
    assert sorted(per_size) == [1, 2]
    assert sorted(stacks) == sorted([(n, 360, 480, 3) for n in per_size] + [(n, 480, 640, 3) for n in per_size])


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def test_power_of_two_parts_cover_the_batch_in_order() -> None:
    assert power_of_two_parts(0) == []
    assert power_of_two_parts(7) == [slice(0, 4), slice(4, 6), slice(6, 7)]
    assert power_of_two_parts(8) == [slice(0, 8)]
    for n in range(1, 70):
        parts = power_of_two_parts(n)
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
        lengths = [p.stop - p.start for p in parts]
        assert all(k & (k - 1) == 0 for k in lengths) and len(set(lengths)) == len(lengths)
    with pytest.raises(ValueError):
        power_of_two_parts(-1)


def test_padded_sizes_keep_three_significant_bits() -> None:
    assert [padded_size(n) for n in range(10)] == list(range(9)) + [10]
    assert [padded_size(n) for n in (17, 33, 65, 100, 257, 512)] == [20, 40, 80, 112, 320, 512]
    sizes = {padded_size(n) for n in range(1, 513)}  # facenet-pytorch runs R/O-nets in chunks of 512
    assert len(sizes) == 32 and all(padded_size(s) == s for s in sizes)
    assert all(n <= padded_size(n) < 1.25 * n for n in range(1, 2000))


@pytest.mark.parametrize("n", [1, 3, 5, 17, 40])
def test_padded_r_and_o_nets_give_each_row_what_the_net_gives_it(n: int) -> None:
    from facenet_pytorch.models.mtcnn import ONet, RNet

    torch.manual_seed(n)
    for net, side in ((RNet(), 24), (ONet(), 48)):  # facenet's released weights
        net.eval()
        batch = torch.randn(n, 3, side, side)
        seen: list[int] = []
        net.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
        with torch.inference_mode():
            expected = [net(batch[i:i + 1]) for i in range(n)]  # one row at a time: no padding anywhere
            padded = PaddedBatches(net)(batch)
        assert seen[-1] == padded_size(n)
        assert all(out.shape[0] == n for out in padded)
        for k, out in enumerate(padded):
            torch.testing.assert_close(out, torch.cat([e[k] for e in expected]), atol=1e-5, rtol=1e-4)


def test_mtcnn_runs_r_and_o_nets_at_padded_sizes_and_finds_what_facenet_finds(mtcnn: FaceDetector) -> None:
    # Why it matters: oneDNN compiles a kernel per input shape, and the number of candidate
    # boxes differs on nearly every frame (stream_monitor.faces.mtcnn's docstring).
    from facenet_pytorch import MTCNN

    assert isinstance(mtcnn, MtcnnDetector)
    sizes: list[int] = []
    wrapped = [mtcnn._mtcnn.rnet, mtcnn._mtcnn.onet]
    assert all(isinstance(w, PaddedBatches) for w in wrapped)
    hooks = [w.net.register_forward_pre_hook(lambda _m, args: sizes.append(int(args[0].shape[0]))) for w in wrapped]
    try:
        frames = [_one_face_frame()[0], _two_face_frame()[0], _one_face_frame(scale=0.5, x=300, y=200)[0]]
        ours = mtcnn.detect(frames)
    finally:
        for hook in hooks:
            hook.remove()
    assert sizes and all(padded_size(s) == s for s in sizes), sizes
    assert any(s > 32 for s in sizes), "the frames should give R-net more than 32 candidates"
    plain = MTCNN(keep_all=True, device="cpu", post_process=False, min_face_size=40, select_largest=False).eval()
    with torch.inference_mode():
        boxes, probs, points = plain.detect(np.stack(frames), landmarks=True)
    for faces, b, p, pts in zip(ours, boxes, probs, points):
        kept = [k for k in range(len(p)) if p[k] >= 0.95]
        assert len(faces) == len(kept)
        for face, k in zip(sorted(faces, key=lambda f: -f.score), kept):
            np.testing.assert_allclose(face.box, np.asarray(b[k], np.float32), atol=1e-2)
            np.testing.assert_allclose(face.points, np.asarray(pts[k], np.float32), atol=1e-2)


def test_mtcnn_filters(mtcnn: FaceDetector) -> None:
    frame, _ = _two_face_frame()
    (both,) = mtcnn.detect([frame])
    assert len(both) == 2 and both[0].score > both[1].score
    # min_confidence between the two scores keeps the better face only.
    threshold = (both[0].score + both[1].score) / 2
    (strict,) = create_detector(FacesConfig(min_size=40, min_confidence=threshold), torch.device("cpu")).detect([frame])
    assert [f.score for f in strict] == [both[0].score]
    (one,) = create_detector(FacesConfig(min_size=40, max_faces=1), torch.device("cpu")).detect([frame])
    assert [f.box for f in one] == [both[0].box]
    # The faces are about 50x60 px: a 70 px minimum drops both.
    assert all(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) < 70 for f in both)
    assert create_detector(FacesConfig(min_size=70), torch.device("cpu")).detect([frame]) == [[]]


def test_mtcnn_rejects_non_rgb_uint8(mtcnn: FaceDetector) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        mtcnn.detect([np.zeros((48, 64), np.uint8)])


# ---------------------------------------------------------------------------------------- SCRFD

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture(scope="module", params=[False, True], ids=["outputs_NxC", "outputs_1xNxC"])
def scrfd_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_fake_scrfd(tmp_path_factory.mktemp("scrfd") / "det_fake.onnx", batched=request.param)


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """insightface's FaceAnalysis (which downloads on construction) and any HTTP via requests must not run."""
    import insightface.app.face_analysis
    import requests

    calls: list[str] = []

    def refuse(name: str) -> Any:
        def _refuse(*args: Any, **kwargs: Any) -> None:
            calls.append(name)
            raise AssertionError(f"{name} must not be used")
        return _refuse

    monkeypatch.setattr(insightface.app.face_analysis.FaceAnalysis, "__init__", refuse("FaceAnalysis"))
    monkeypatch.setattr(requests.Session, "request", refuse("requests"))
    yield calls
    assert not calls


def _solid(width: int, height: int, rgb: tuple[int, int, int]) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = rgb
    return frame


def _scrfd(model: Path, **cfg: Any) -> FaceDetector:
    faces_cfg = FacesConfig(backend="scrfd", scrfd_model=model, **({"min_confidence": 0.5, "min_size": 8} | cfg))
    return create_detector(faces_cfg, torch.device("cpu"))


offline = pytest.mark.usefixtures("no_downloads")


@offline
@pytest.mark.parametrize("width,height", [(320, 240), (800, 600)])
def test_scrfd_decodes_the_encoded_faces_into_frame_pixels(scrfd_model: Path, width: int, height: int) -> None:
    (faces,) = _scrfd(scrfd_model).detect([_solid(width, height, RED)])
    expected = sorted(expected_faces(width, height, RED), key=lambda e: (-e[2], -(e[0][2] - e[0][0])))
    assert len(faces) == 4
    for face, (box, points, score) in zip(faces, expected):
        np.testing.assert_allclose(face.box, box, atol=1e-3)
        np.testing.assert_allclose(face.points, points, atol=1e-3)
        assert face.points.dtype == np.float32
        assert face.score == pytest.approx(score, abs=1e-5)
    assert faces[0].score > 0.99  # the colour-dependent face: red frame in RGB


@offline
def test_scrfd_sees_rgb_frames_as_rgb(scrfd_model: Path) -> None:
    # The colour face scores ~1 on red and ~0 on blue only if the backend hands insightface
    # BGR (which it swaps back to the RGB the network wants).
    red, blue = _scrfd(scrfd_model).detect([_solid(320, 240, RED), _solid(320, 240, BLUE)])
    assert red[0].score > 0.99 and len(red) == 4
    assert [f.score for f in blue] == pytest.approx([0.9, 0.9, 0.8])


@offline
def test_scrfd_filters(scrfd_model: Path) -> None:
    red, blue = _solid(320, 240, RED), _solid(320, 240, BLUE)
    assert len(_scrfd(scrfd_model, min_confidence=0.95).detect([red])[0]) == 1
    # In a 320x240 frame (letterbox scale 2) the faces' shorter sides are 8, 12, 40 and 64 px.
    sizes = [min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in _scrfd(scrfd_model).detect([red])[0]]
    assert sorted(sizes) == pytest.approx([8, 12, 40, 64])
    assert sorted(min(f.box[2] - f.box[0], f.box[3] - f.box[1])
                  for f in _scrfd(scrfd_model, min_size=16).detect([red])[0]) == pytest.approx([40, 64])
    # Two faces tie at 0.9: max_faces keeps the larger.
    (top,) = _scrfd(scrfd_model, max_faces=1).detect([blue])
    assert len(top) == 1 and top[0].box[2] - top[0].box[0] == pytest.approx(40)


@offline
def test_scrfd_batch_equals_one_by_one(scrfd_model: Path) -> None:
    detector = _scrfd(scrfd_model)
    frames = [_solid(320, 240, RED), _solid(800, 600, BLUE), _solid(800, 600, RED)]
    _assert_same(detector.detect(frames), [detector.detect([f])[0] for f in frames], atol=1e-6)


@offline
def test_scrfd_bad_model_files_fail_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "det_10g.onnx"
    with pytest.raises(FaceBackendError, match=r"SCRFD model file not found: .*det_10g\.onnx.*buffalo_l"):
        _scrfd(missing)
    with pytest.raises(FaceBackendError, match="not a readable file"):
        _scrfd(tmp_path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(FaceBackendError, match=r"cannot load SCRFD model .*garbage\.onnx"):
        _scrfd(garbage)
    other = tmp_path / "other.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 32, 32),), str(other), dynamo=False)
    with pytest.raises(FaceBackendError, match="not an SCRFD detector with keypoints: .* 1 outputs"):
        _scrfd(other)


def test_onnx_providers_follow_the_device(caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime

    from stream_monitor.faces.scrfd import onnx_providers

    assert onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert onnx_providers(torch.device("cuda:1")) == [("CUDAExecutionProvider", {"device_id": 1}),
                                                          "CPUExecutionProvider"]
    else:
        with caplog.at_level("WARNING"):
            assert onnx_providers(torch.device("cuda")) == ["CPUExecutionProvider"]
        assert "no CUDA provider" in caplog.text


def test_unknown_backend_is_refused() -> None:
    cfg = FacesConfig.model_construct(backend="retinaface")  # bypasses the Literal, as a stale caller might
    with pytest.raises(FaceBackendError, match="unknown face backend 'retinaface'.*mtcnn.*scrfd"):
        create_detector(cfg, torch.device("cpu"))
