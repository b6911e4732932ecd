"""The face tracker: stable ids through short misses, new ids for new people."""

from __future__ import annotations

import numpy as np
import pytest

from stream_monitor.faces.track import FaceTracker, iou
from stream_monitor.types import FaceObs


def _face(x: float, y: float, size: float = 100.0) -> FaceObs:
    return FaceObs(box=(x, y, x + size, y + size), points=np.zeros((5, 2), np.float32), score=0.99)


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_ids_survive_short_misses_and_moving_faces() -> None:
    tr = FaceTracker(iou_threshold=0.3, max_missed=2)
    faces, ended = tr.update([_face(0, 0), _face(400, 0)])
    a, b = (f.track_id for f in faces)
    assert a != b and not ended
    # Both move 10 px per frame; face b is missed for two frames.
    for step in (1, 2):
        faces, ended = tr.update([_face(10 * step, 0)])
        assert [f.track_id for f in faces] == [a] and not ended
    faces, ended = tr.update([_face(30, 0), _face(430, 0)])
    assert [f.track_id for f in faces] == [a, b] and not ended


def test_long_miss_ends_the_track_and_a_new_face_gets_a_new_id() -> None:
    tr = FaceTracker(max_missed=1)
    (first,), _ = tr.update([_face(0, 0)])
    tr.update([])
    faces, ended = tr.update([])
    assert ended == [first.track_id] and not faces and tr.active == 0
    (again,), _ = tr.update([_face(0, 0)])
    assert again.track_id != first.track_id


def test_velocity_keeps_a_fast_face_through_a_miss() -> None:
    tr = FaceTracker(iou_threshold=0.3, max_missed=2)
    ids = set()
    x = 0.0
    for i in range(8):
        x += 40.0  # 40% of the box width per frame
        faces, _ = tr.update([] if i == 4 else [_face(x, 0)])
        ids.update(f.track_id for f in faces)
    assert len(ids) == 1


def test_close_ends_everything() -> None:
    tr = FaceTracker()
    faces, _ = tr.update([_face(0, 0), _face(300, 300)])
    assert tr.close() == sorted(f.track_id for f in faces) and tr.active == 0


def test_sparse_frames_keep_a_fast_face_by_time_and_distance() -> None:
    """Frames analysed 0.6 s apart (others dropped under load): no overlap between boxes."""
    tr = FaceTracker(iou_threshold=0.3, max_missed=2)
    ids = set()
    for k, t in enumerate([0.0, 0.04, 0.64, 1.24, 1.28, 1.92]):
        x = 160.0 * t  # 1.6 box widths per second
        faces, ended = tr.update([_face(x, 0)], t)
        assert not ended
        ids.update(f.track_id for f in faces)
    assert len(ids) == 1


def test_distance_fallback_does_not_join_different_people() -> None:
    tr = FaceTracker(max_missed=0)
    (a,), _ = tr.update([_face(0, 0)], 0.0)
    # A face far away, and a face of a very different size at the same place: both new people.
    faces, ended = tr.update([_face(400, 300)], 0.5)
    assert faces[0].track_id != a.track_id and ended == [a.track_id]
    (big,), _ = tr.update([_face(400, 300, size=300)], 1.0)
    assert big.track_id != faces[0].track_id


def test_two_faces_do_not_swap_ids() -> None:
    tr = FaceTracker()
    first, _ = tr.update([_face(0, 0), _face(300, 0)], 0.0)
    ids = {round(f.obs.box[0]): f.track_id for f in first}
    for step in range(1, 6):
        faces, _ = tr.update([_face(300 + 10 * step, 0), _face(10 * step, 0)], step / 10)
        assert {round(f.obs.box[0]) - 10 * step: f.track_id for f in faces} == ids


@pytest.mark.parametrize("fps", [8.0, 1.875])
def test_a_moving_face_keeps_its_id_at_the_gated_detection_rates(fps: float) -> None:
    """Face detection only on the frames a detector samples (CADDM 8 fps, StA 1.875 fps of a
    30 fps source): the time-based motion model follows a face moving 0.6 box widths a second,
    and ``max_missed`` (counted in analysed frames) rides out two missed detections."""
    from stream_monitor.windows import DetectionGate, WindowSpec

    gate = DetectionGate([WindowSpec("d", 8, 4, fps, 1)])
    tr = FaceTracker(iou_threshold=0.3, max_missed=2)
    ids, analysed = set(), 0
    for i in range(300):
        t = i / 30
        if gate.admit(t) is None:
            continue
        analysed += 1
        missed = analysed in (5, 6)  # two detector blinks in a row
        faces, ended = tr.update([] if missed else [_face(60.0 * t, 0.2 * 60.0 * t)], t)
        assert not ended
        ids.update(f.track_id for f in faces)
    assert ids == {1} and analysed == round(10 * fps)
