"""``faces.align_device``: batched torch alignment on the detectors' device vs OpenCV.

The device path runs on the CPU here (``align_device: device``), which is how it is
checked without a GPU: the same torch code, the same frames uploaded once. Frames show the
astronaut's face (public domain) twice, moving right 3 px a frame; MTCNN finds the two
faces once and later frames' faces are those shifted by the same amount (exact, and keeps
the test fast).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import pytest
import torch
from skimage import data

from models.align import fit_template, warp_affine
from stream_monitor.config import ConfigError, load_config
from stream_monitor.faces.align import Aligner, stack_on_device, to_device
from stream_monitor.inference.analysis import StreamAnalysis, resolve_align_device
from stream_monitor.inference.engine import Engine
from stream_monitor.metrics import Metrics
from stream_monitor.types import Clip, FaceObs, Frame, WindowItem
from tests.support.small import small_config

CPU = torch.device("cpu")
FRAMES = 16  # StyleFlow's final window needs half a 32-frame clip
STEP = 3  # pixels the faces move per frame
# torch's bilinear weights are exact where OpenCV quantises them to 1/32. Measured on these
# frames: per-frame crops (CADDM, StA) differ by at most 3 grey levels (mean 0.11), StyleFlow's
# clip crops by at most 5 (mean 0.10), where the face region meets the black canvas.
MAX_GREY_DIFF = 6
MEAN_GREY_DIFF = 0.25
# Window probabilities of the small random-weight detectors, device vs OpenCV crops.
# Measured (CPU, torch 2.14): |dp| <= 2.0e-5 (CADDM), 2.1e-5 (StA), 1.8e-7 (StyleFlow).
SCORE_TOLERANCE = 1e-4


def _frame(i: int) -> np.ndarray:
    face = data.astronaut()[30:230, 150:330]  # 200 x 180 around the face
    frame = np.full((360, 640, 3), 96, np.uint8)
    for x in (40, 330):
        frame[60:260, x + STEP * i:x + STEP * i + 180] = face
    return frame


@lru_cache(maxsize=1)
def _faces0() -> tuple[FaceObs, ...]:
    engine = _engine("cpu")
    assert engine.face_detector is not None
    faces = sorted(engine.face_detector.detect([_frame(0)])[0], key=lambda f: f.box[0])
    assert len(faces) == 2, "MTCNN should find both faces"
    return tuple(faces)


def _faces(i: int) -> list[FaceObs]:
    dx = float(STEP * i)
    return [FaceObs((f.box[0] + dx, f.box[1], f.box[2] + dx, f.box[3]), f.points + np.float32([dx, 0]), f.score)
            for f in _faces0()]


@lru_cache(maxsize=2)
def _engine(align_device: str) -> Engine:
    cfg = load_config(overrides=small_config(
        faces={"align_device": align_device},
        detectors={"caddm": {"sample_fps": "all"}, "sta": {"sample_fps": "all"}, "styleflow": {"sample_fps": "all"}}),
        environ={})
    engine = Engine(cfg, Metrics())
    engine.load()
    return engine


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.mark.parametrize("detector", ["caddm", "sta"])
def test_per_frame_crops_on_the_device_match_opencv(detector: str) -> None:
    aligner = _engine("cpu").runners[detector].aligner
    t = aligner.template
    assert not t.per_clip
    for i in (0, 5, 11):
        image, faces = _frame(i), _faces(i)
        ref = np.stack([aligner.patch(image, f)[0] for f in faces])
        crops = aligner.patches(to_device(image, CPU), faces)
        assert crops.dtype == torch.uint8 and tuple(crops.shape) == (2, t.size, t.size, 3)
        diff = _diff(ref, crops.numpy())
        assert diff.max() <= MAX_GREY_DIFF and diff.mean() < MEAN_GREY_DIFF, (diff.max(), diff.mean())
    # One shared frame gives the same pixels as a copy of it per crop.
    m = fit_template(np.stack([f.points for f in faces]).astype(np.float64), t)
    frame = torch.from_numpy(image)
    assert torch.equal(warp_affine(frame[None], m, t.size), warp_affine(frame[None].repeat(2, 1, 1, 1), m, t.size))


def _styleflow_items(aligner: Aligner) -> list[WindowItem]:
    """A track of the left face, reflect-padded to 32 items as a final window is."""
    items = []
    for i in range(FRAMES):
        face = _faces(i)[0]
        patch, origin = aligner.patch(_frame(i), face)
        items.append(WindowItem(i, i / 30, 0.0, face.box, face.points, patch, origin))
    return items + items[::-1]


def test_styleflow_clip_crops_on_the_device_match_opencv() -> None:
    host = _engine("cpu").runners["styleflow"].aligner
    device = _engine("device").runners["styleflow"].aligner
    assert host.device is None and device.device == CPU and host.template.per_clip
    items = _styleflow_items(host)
    ref = host.clip_crops(items)
    crops = device.clip_tensor(items, CPU)
    assert crops.dtype == torch.uint8 and tuple(crops.shape) == ref.shape == (32, host.template.size,
                                                                            host.template.size, 3)
    diff = _diff(ref, crops.numpy())
    assert diff.max() <= MAX_GREY_DIFF and diff.mean() < MEAN_GREY_DIFF, (diff.max(), diff.mean())
    assert (crops.numpy() == 0).all(axis=-1).any(), "black outside the context regions, as on the host"
    # Without an aligner device the same call is OpenCV plus an upload.
    assert np.array_equal(host.clip_tensor(items, CPU).numpy(), ref)


def _windows(engine: Engine) -> tuple[StreamAnalysis, list[Clip]]:
    """The frames through one stream's analysis, built as ``Engine.open_stream`` builds it."""
    tc = engine.cfg.faces.track
    analysis = StreamAnalysis("a", engine.runners, tc.iou_threshold, tc.max_missed, engine.align_device)
    clips: list[Clip] = []
    for i in range(FRAMES):
        clips += analysis.process(Frame("a", i, i / 30, 1000.0 + i / 30, _frame(i)), _faces(i)).clips
    clips += analysis.close().clips
    return analysis, clips


def _scores(engine: Engine, clips: list[Clip]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with torch.inference_mode():  # as on the worker thread
        for name, runner in engine.runners.items():
            mine = [c for c in clips if c.detector == name]
            out[name] = runner.run(mine) if mine else []
    return out


def test_device_and_opencv_alignment_give_the_same_window_scores() -> None:
    host, device = _engine("cpu"), _engine("device")
    _, host_clips = _windows(host)
    _, device_clips = _windows(device)
    assert [(c.detector, c.track_id, [it.seq for it in c.items]) for c in host_clips] == \
        [(c.detector, c.track_id, [it.seq for it in c.items]) for c in device_clips]
    for c in device_clips:
        kinds = {type(it.patch) for it in c.items}
        assert kinds == ({np.ndarray} if c.detector == "styleflow" else {torch.Tensor}), (c.detector, kinds)
    assert all(isinstance(it.patch, np.ndarray) for c in host_clips for it in c.items)
    a, b = _scores(host, host_clips), _scores(device, device_clips)
    assert {d: len(s) for d, s in a.items()} == {"caddm": 6, "sta": 6, "styleflow": 2}
    for detector in a:
        np.testing.assert_allclose(b[detector], a[detector], rtol=0, atol=SCORE_TOLERANCE, err_msg=detector)
    # Runners take either kind of patch: the host crops scored by the device-path runners.
    with torch.inference_mode():
        caddm = [dataclasses.replace(c, items=tuple(dataclasses.replace(it, cache={}) for it in c.items))
                 for c in host_clips if c.detector == "caddm"]
        np.testing.assert_allclose(device.runners["caddm"].run(caddm), a["caddm"], rtol=0, atol=1e-6)


def test_each_frame_is_uploaded_once_for_all_faces_and_templates() -> None:
    analysis, clips = _windows(_engine("device"))
    per_frame = {it_id for c in clips if c.detector != "styleflow" for it_id in map(id, c.items)}
    assert len(per_frame) == FRAMES * 2 * 2, "2 faces x 2 per-frame detectors cut a crop in every frame"
    assert analysis.frames_uploaded == FRAMES
    assert _windows(_engine("cpu"))[0].frames_uploaded == 0


def test_stack_on_device_takes_arrays_or_tensors() -> None:
    crops = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    from_arrays = stack_on_device(list(crops), CPU)
    from_tensors = stack_on_device([torch.from_numpy(c) for c in crops], CPU)
    mixed = stack_on_device([crops[0], torch.from_numpy(crops[1]), crops[2]], CPU)
    for t in (from_arrays, from_tensors, mixed):
        assert t.dtype == torch.uint8 and np.array_equal(t.numpy(), crops)


def test_auto_resolves_to_opencv_on_a_cpu() -> None:
    assert resolve_align_device("auto", CPU) is None
    assert resolve_align_device("cpu", CPU) is None
    assert resolve_align_device("device", CPU) == CPU
    cuda = torch.device("cuda", 0)  # a device object only; nothing runs on it
    assert resolve_align_device("auto", cuda) == cuda and resolve_align_device("cpu", cuda) is None
    cfg = load_config(overrides=small_config(), environ={})
    assert cfg.faces.align_device == "auto"
    engine = Engine(cfg, Metrics())
    assert engine.device == CPU and engine.align_device is None
    assert all(r.aligner.device is None for r in _engine("cpu").runners.values())
    with pytest.raises(ConfigError, match="align_device"):
        load_config(overrides={"faces": {"align_device": "gpu"}}, environ={})
