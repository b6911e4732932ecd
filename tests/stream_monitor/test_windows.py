"""Window sampling, emission and the track-end policy."""

from __future__ import annotations

import numpy as np
import pytest

from stream_monitor.windows import DetectionGate, FrameSampler, TrackWindows, WindowBank, WindowSpec
from stream_monitor.types import WindowItem


def _item(seq: int, fps: float = 30.0) -> WindowItem:
    return WindowItem(seq=seq, pts=seq / fps, arrival=1000.0 + seq / fps, box=(0, 0, 10, 10),
                      points=np.zeros((5, 2), np.float32), patch=np.zeros((1, 1, 3), np.uint8))


def _taken(fps_source: float, fps_target: float | None, n: int, jitter: float = 0.0) -> list[int]:
    rng = np.random.default_rng(0)
    sampler = FrameSampler(fps_target)
    return [i for i in range(n) if sampler.accept(i / fps_source + rng.uniform(-jitter, jitter))]


def test_sampler_rates() -> None:
    assert _taken(30, None, 10) == list(range(10))
    assert _taken(30, 30.0, 30, jitter=0.004) == list(range(30))      # same rate, jittery clock
    assert _taken(60, 30.0, 12) == [0, 2, 4, 6, 8, 10]                # decimates a faster source
    assert _taken(25, 30.0, 10) == list(range(10))                     # slower source: every frame
    sta = _taken(30, 1.875, 100)                                       # StA: ~16 frames apart
    assert sta == [0, 16, 32, 48, 64, 80, 96]


def test_sampler_restarts_after_a_gap() -> None:
    s = FrameSampler(2.0)
    assert s.accept(0.0) and not s.accept(0.2) and s.accept(0.5)
    assert s.accept(10.0)                  # long gap: take the next frame
    assert not s.accept(10.3) and s.accept(10.5)
    assert s.accept(0.1) and not s.accept(0.2)  # timestamps restarted (reconnect)


def test_windows_length_and_stride() -> None:
    w = TrackWindows(WindowSpec("x", window_len=4, stride=2, sample_fps=None, min_final=2))
    out = [w.push(_item(i)) for i in range(9)]
    emitted = [[it.seq for it in win] for win in out if win is not None]
    assert emitted == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    # Items are shared between overlapping windows, so a per-frame cache is shared too.
    wins = [win for win in out if win is not None]
    assert wins[0][2] is wins[1][0]


def test_stride_longer_than_window_skips_frames() -> None:
    w = TrackWindows(WindowSpec("x", window_len=2, stride=3, sample_fps=None, min_final=1))
    emitted = [[it.seq for it in win] for i in range(8) if (win := w.push(_item(i))) is not None]
    assert emitted == [[0, 1], [3, 4], [6, 7]]


def test_final_window_policy() -> None:
    spec = WindowSpec("clip", window_len=8, stride=8, sample_fps=None, min_final=4)
    # Long track with an uncovered tail of 5: the last 8 items.
    w = TrackWindows(spec)
    for i in range(13):
        w.push(_item(i))
    items, padded = w.finish()  # type: ignore[misc]
    assert [it.seq for it in items] == list(range(5, 13)) and padded == 0
    # Tail of 3 < min_final: dropped.
    w = TrackWindows(spec)
    for i in range(11):
        w.push(_item(i))
    assert w.finish() is None
    # Short track of 5: reflect-padded to 8.
    w = TrackWindows(spec)
    for i in range(5):
        w.push(_item(i))
    items, padded = w.finish()  # type: ignore[misc]
    assert [it.seq for it in items] == [0, 1, 2, 3, 4, 3, 2, 1] and padded == 3
    # Nothing uncovered: nothing to emit.
    w = TrackWindows(spec)
    for i in range(8):
        w.push(_item(i))
    assert w.finish() is None


def test_per_frame_models_score_a_short_tail_as_is() -> None:
    w = TrackWindows(WindowSpec("caddm", window_len=8, stride=4, sample_fps=None, min_final=1, pad_final=False))
    for i in range(3):
        w.push(_item(i))
    items, padded = w.finish()  # type: ignore[misc]
    assert [it.seq for it in items] == [0, 1, 2] and padded == 0


def test_bank_routes_tracks_and_detectors() -> None:
    bank = WindowBank("cam", [WindowSpec("a", 2, 2, None, 1), WindowSpec("b", 3, 3, 15.0, 2)])
    clips = []
    for i in range(6):
        for track in (1, 2):
            for det in bank.sample(track, i / 30):
                item = _item(i)
                clip = bank.push(track, det, item)
                if clip:
                    clips.append((clip.track_id, clip.detector, [it.seq for it in clip.items]))
    assert (1, "a", [0, 1]) in clips and (2, "a", [4, 5]) in clips
    assert (1, "b", [0, 2, 4]) in clips
    finals = bank.end_track(1)
    assert bank.track_ids == [2]
    assert all(c.final for c in finals)


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        WindowSpec("x", 0, 1, None, 1)
    with pytest.raises(ValueError):
        WindowSpec("x", 4, 1, -1.0, 1)
    with pytest.raises(ValueError):
        WindowSpec("x", 4, 1, None, 5)


CADDM = WindowSpec("caddm", 8, 4, 8.0, 1, pad_final=False)
STA = WindowSpec("sta", 8, 4, 1.875, 4)


def _admitted(gate: DetectionGate, n: int, fps: float = 30.0) -> dict[int, frozenset[str]]:
    return {i: due for i in range(n) if (due := gate.admit(i / fps)) is not None}


def _own(spec: WindowSpec, n: int, fps: float = 30.0) -> list[int]:
    """The frames a detector's own sampler takes when it sees every frame."""
    sampler = FrameSampler(spec.sample_fps)
    return [i for i in range(n) if sampler.accept(i / fps)]


def test_gate_admits_only_the_frames_the_detectors_sample() -> None:
    gate = _admitted(DetectionGate([CADDM, STA]), 300)  # 10 s of a 30 fps source
    # CADDM's 8 fps; StA's 1.875 fps share CADDM's frames where one is within a frame of
    # StA's due time, so only a few StA frames add a detection.
    caddm, sta = ([i for i in gate if d in gate[i]] for d in ("caddm", "sta"))
    assert len(caddm) == 80 and len(sta) == 19 and len(gate) == 85
    assert set(gate) == set(caddm) | set(sta)
    # CADDM's frames are exactly its own sampler's; StA's within one frame of its own sampler's,
    # spaced 16 +- 1 frames (0.533 s +- one frame interval).
    assert caddm == _own(CADDM, 300)
    own = _own(STA, 300)
    assert len(own) == len(sta) and max(abs(a - b) for a, b in zip(own, sta)) == 1
    assert sta[:6] == [0, 15, 32, 49, 64, 79] and own[:6] == [0, 16, 32, 48, 64, 80]
    assert set(np.diff(sta)) == {15, 16, 17} and set(np.diff(caddm)) == {3, 4}
    # StA alone: every 16th frame, exactly its own sampler's.
    assert sorted(_admitted(DetectionGate([STA]), 300)) == _own(STA, 300)


def test_gate_passes_every_frame_when_a_detector_takes_every_frame_or_all_is_asked() -> None:
    every = WindowSpec("styleflow", 32, 32, None, 16)
    for gate in (DetectionGate([CADDM, every]), DetectionGate([CADDM, STA], "all")):
        assert gate.every_frame and len(_admitted(gate, 60)) == 60
    # StyleFlow's card rate (30 fps) on a 30 fps source: every frame too, with jitter.
    styleflow = WindowSpec("styleflow", 32, 32, 30.0, 16)
    rng = np.random.default_rng(0)
    gate = DetectionGate([CADDM, styleflow])
    assert all(gate.admit(i / 30 + rng.uniform(-0.004, 0.004)) is not None for i in range(90))


def test_gate_with_a_rate_adds_frames_between_sparse_samples() -> None:
    admitted = sorted(_admitted(DetectionGate([STA], 4.0), 300))
    assert set(_own(STA, 300)) <= set(admitted), "every frame StA samples is still analysed"
    assert max(np.diff(admitted)) <= 11 and 38 <= len(admitted) <= 42, "about 4 fps: at most ~1.5 / 4 s apart"
    # A rate at or below the detectors' need changes nothing.
    assert _admitted(DetectionGate([CADDM, STA], 2.0), 300) == _admitted(DetectionGate([CADDM, STA]), 300)
    with pytest.raises(ValueError):
        DetectionGate([STA], 0.0)
    with pytest.raises(ValueError):
        DetectionGate([STA], "sometimes")


def test_bank_follows_the_stream_level_decision() -> None:
    bank = WindowBank("cam", [CADDM, STA])
    # A track that appears late takes exactly the detectors the stream chose, on no schedule of its own.
    assert bank.sample(7, 1.0, frozenset({"sta"})) == ["sta"]
    assert bank.sample(7, 1.0 + 1 / 30, frozenset({"caddm", "sta"})) == ["caddm", "sta"]
    assert bank.sample(7, 1.1, frozenset()) == []
