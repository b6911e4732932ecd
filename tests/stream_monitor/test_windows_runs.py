"""Consecutive-frame windows (StyleFlow): regular decimation, runs broken at gaps, discards counted.

Unit tests per gap kind, then a property test: hundreds of seeded random streams (source rates,
dropped and shed frames, timestamp jumps, missed detections, several faces, every gate mode)
through the real gate and window bank, each checked against an independent oracle of the runs.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest

from stream_monitor.types import Clip, WindowItem
from stream_monitor.windows import (GAP_REASONS, DetectionGate, FrameSampler, Link, StepSampler, WindowBank,
                                    WindowSpec, decimation_step)

_POINTS = np.zeros((5, 2), np.float32)
_PATCH = np.zeros((1, 1, 3), np.uint8)


def _item(seq: int, pts: float) -> WindowItem:
    return WindowItem(seq=seq, pts=pts, arrival=1000.0 + pts, box=(0, 0, 10, 10), points=_POINTS, patch=_PATCH)


def _run_sampler(sampler: StepSampler, frames: list[tuple[int, float]]) -> list[tuple[int, Link]]:
    return [(seq, link) for seq, pts in frames if (link := sampler.admit(seq, pts)) is not None]


def _steady(fps: float, n: int, jitter: float = 0.0, seed: int = 0) -> list[tuple[int, float]]:
    rng = np.random.default_rng(seed)
    return [(i, i / fps + rng.uniform(-jitter, jitter) / fps) for i in range(n)]


# ---------------------------------------------------------------- the decimation


def test_the_step_is_the_whole_decimation_nearest_the_training_rate() -> None:
    steps = {fps: decimation_step(fps, 30.0) for fps in (10, 24, 25, 29.97, 30, 44, 45, 50, 59.94, 60, 75, 120)}
    assert steps == {10: 1, 24: 1, 25: 1, 29.97: 1, 30: 1, 44: 1, 45: 2, 50: 2, 59.94: 2, 60: 2, 75: 3, 120: 4}
    assert decimation_step(60, None) == 1  # sample_fps "all": every frame


@pytest.mark.parametrize("fps", [24, 25, 29.97, 30, 50, 59.94, 60, 120])
def test_samples_are_every_step_th_frame_of_a_steady_jittery_source(fps: float) -> None:
    taken = _run_sampler(StepSampler(30.0), _steady(fps, 300, jitter=0.05))
    step = decimation_step(fps, 30.0)
    assert [seq for seq, _ in taken] == list(range(0, 300, step))
    assert [link.prev for _, link in taken] == [None] + [seq for seq, _ in taken[:-1]], "one unbroken run"
    assert {link.step for _, link in taken[1:]} == {step}


def test_a_50fps_source_is_decimated_regularly_where_a_rate_sampler_is_not() -> None:
    frames = _steady(50, 200)
    steps = np.diff([seq for seq, _ in _run_sampler(StepSampler(30.0), frames)])
    assert set(steps) == {2}, "every second frame: 25 fps, consecutive in the decimated source"
    rate = FrameSampler(30.0)
    assert set(np.diff([seq for seq, pts in frames if rate.accept(pts)])) == {1, 2}, "the 2, 2, 1 pattern"


def test_a_source_at_a_half_keeps_its_step() -> None:
    # 45 fps / 30 = 1.5: with jitter the median interval falls either side of the half, and the
    # step must not flap between 1 and 2 (each change would break the run).
    taken = _run_sampler(StepSampler(30.0), _steady(45, 600, jitter=0.1, seed=3))
    assert all(link.prev is not None for _, link in taken[1:])
    assert len({link.step for _, link in taken[1:]}) == 1


def test_each_kind_of_gap_starts_a_new_run() -> None:
    p = 1 / 60  # a 60 fps source: step 2
    # The due frame 10 dropped (frame 9 between samples dropped too): a frame gap; the next frame seen starts the run.
    frames = [(i, i * p) for i in range(9)] + [(i, i * p) for i in range(11, 16)]
    links = dict(_run_sampler(StepSampler(30.0), frames))
    assert links[8] == Link(2, 6) and links[11] == Link(2, None, "frame_gap") and links[13] == Link(2, 11)
    # A frame between two samples dropped: not in the decimated sequence, the run goes on.
    links = dict(_run_sampler(StepSampler(30.0), [(i, i * p) for i in range(12) if i != 7]))
    assert links[8] == Link(2, 6) and links[10] == Link(2, 8)
    # A timestamp jump (frame 9 one second late, seq unbroken).
    frames = [(i, i * p + (1.0 if i >= 9 else 0.0)) for i in range(14)]
    links = dict(_run_sampler(StepSampler(30.0), frames))
    assert links[8] == Link(2, 6) and links[10] == Link(2, None, "pts_jump") and links[12] == Link(2, 10)
    # Timestamps going back (a new session) are a jump too; the new run starts at once and
    # adopts the new session's rate (unknown at its first frame: step 1 there).
    frames = [(i, i * p) for i in range(9)] + [(i, (i - 9) * p) for i in range(9, 14)]
    links = dict(_run_sampler(StepSampler(30.0), frames))
    assert links[9] == Link(1, None, "pts_jump") and links[11] == Link(2, 9)
    # The source's rate doubles: the step changes once the median follows, and the run restarts there.
    frames = [(i, i / 30) for i in range(40)] + [(40 + i, 39 / 30 + (i + 1) / 60) for i in range(40)]
    taken = _run_sampler(StepSampler(30.0), frames)
    changes = [(seq, link) for seq, link in taken if link.reason == "rate_change"]
    assert len(changes) == 1 and changes[0][1].step == 2
    assert all(link.prev is None or seq - link.prev == link.step for seq, link in taken)


def test_a_rate_of_all_takes_every_frame() -> None:
    taken = _run_sampler(StepSampler(None), _steady(60, 50, jitter=0.2))
    assert [seq for seq, _ in taken] == list(range(50)) and all(link.step == 1 for _, link in taken)


def test_the_gate_admits_only_the_steps_frames_and_its_links_reach_the_bank() -> None:
    sf = WindowSpec("styleflow", 32, 32, 30.0, 16, consecutive=True)
    caddm = WindowSpec("caddm", 8, 4, 8.0, 1, pad_final=False)
    gate = DetectionGate([sf, caddm])
    admitted = {i: a for i in range(300) if (a := gate.admit_frame(i, i / 60)) is not None}
    sf_frames = [i for i, a in admitted.items() if "styleflow" in a.due]
    assert sf_frames == list(range(0, 300, 2)) and all(set(a.links) == ({"styleflow"} if i % 2 == 0 else set())
                                                        for i, a in admitted.items())
    assert len([i for i in admitted if i % 2]) < 40, "CADDM's 8 fps adds at most its own odd frames"
    # The timestamp-only view is the same decision.
    gate2 = DetectionGate([sf, caddm])
    assert [i for i in range(300) if gate2.admit(i / 60) is not None] == sorted(admitted)
    # With every frame analysed the links are still the step's.
    gate = DetectionGate([sf, caddm], "all")
    links = [gate.admit_frame(i, i / 60) for i in range(20)]
    assert all(a is not None for a in links)
    assert [i for i, a in enumerate(links) if a is not None and "styleflow" in a.links] == list(range(0, 20, 2))


# ---------------------------------------------------------------- the bank: runs, tails, counts

SPEC4 = WindowSpec("sf", window_len=4, stride=4, sample_fps=None, min_final=2, consecutive=True)


def _feed(bank: WindowBank, frames: list[tuple[int, float, set[int]]]) -> list[Clip]:
    """Frames ``(seq, pts, tracks found)`` through the bank without a gate, as the analysis does."""
    clips = []
    for seq, pts, tracks in frames:
        clips += bank.open_frame(seq, pts)
        for t in sorted(tracks):
            for d in bank.sample(t, pts):
                if (clip := bank.push(t, d, _item(seq, pts))) is not None:
                    clips.append(clip)
    return clips


def _seqs(clips: list[Clip]) -> list[tuple[int, list[int], int]]:
    return [(c.track_id, [it.seq for it in c.items], c.padded) for c in clips]


def test_a_missed_detection_closes_the_tracks_run_and_a_short_run_is_counted() -> None:
    bank = WindowBank("s", [SPEC4])
    # Track 1 found on 0-2, missed on 3, found on 4-7, missed on 8; track 2 found throughout.
    frames = [(i, i / 30, {1, 2} if i not in (3, 8) else {2}) for i in range(9)]
    clips = _feed(bank, frames)
    assert _seqs(clips) == [(2, [0, 1, 2, 3], 0), (1, [4, 5, 6, 7], 0), (2, [4, 5, 6, 7], 0)]
    # 0-2 made no window: counted; 4-7 made one (closed at 9 when the miss on 8 is seen): not counted.
    assert bank.take_discarded() == {("sf", "missed_detection"): 1} and bank.take_discarded() == {}
    # Track 1 found on 9 alone, missed on 10 and 11, then ended by the tracker: its run (9) ended
    # at the miss, counted; track 2's windows go on, its end leaves nothing uncovered.
    clips = _feed(bank, [(9, 9 / 30, {1, 2}), (10, 10 / 30, {2}), (11, 11 / 30, {2})])
    clips += bank.end_track(1) + bank.end_track(2)
    assert _seqs(clips) == [(2, [8, 9, 10, 11], 0)]
    assert bank.take_discarded() == {("sf", "missed_detection"): 1}
    # A track that ends right after a miss: its run ended at the miss (counted), not at the end.
    clips = _feed(bank, [(12, 12 / 30, {3}), (13, 13 / 30, {3}), (14, 14 / 30, set())]) + bank.end_track(3)
    assert clips == [] and bank.take_discarded() == {("sf", "missed_detection"): 1}
    # Found on the last sample: a track end, reflect-padded (3 items >= min_final 2), not counted.
    clips = _feed(bank, [(15, 15 / 30, {4}), (16, 16 / 30, {4}), (17, 17 / 30, {4})]) + bank.end_track(4)
    assert _seqs(clips) == [(4, [15, 16, 17, 16], 1)] and bank.take_discarded() == {}


def test_a_stream_gap_closes_every_run_and_names_its_cause() -> None:
    bank = WindowBank("s", [SPEC4])
    frames = [(0, 0.0, {1, 2}), (1, 1 / 30, {1, 2}), (2, 2 / 30, {1}),  # track 2 missed on 2
              (4, 4 / 30, {1, 2})]  # frame 3 never arrived
    clips = _feed(bank, frames)
    assert clips == []
    assert bank.take_discarded() == {("sf", "frame_gap"): 1, ("sf", "missed_detection"): 1}
    clips = _feed(bank, [(5, 5 / 30, {1}), (6, 2.0, {1})])  # a timestamp jump
    assert bank.take_discarded() == {("sf", "pts_jump"): 1, ("sf", "missed_detection"): 1}


def test_a_frame_shed_after_the_gate_is_a_frame_gap() -> None:
    bank = WindowBank("s", [SPEC4])
    link = {0: Link(1, None), 1: Link(1, 0), 2: Link(1, 1), 3: Link(1, 2)}
    for seq in (0, 1, 3):  # the gate linked 3 to 2, but frame 2 was shed before face detection
        bank.open_frame(seq, seq / 30, {"sf": link[seq]})
        for d in bank.sample(1, seq / 30):
            bank.push(1, d, _item(seq, seq / 30))
    assert bank.take_discarded() == {("sf", "frame_gap"): 1}


def test_a_long_run_cut_by_a_gap_scores_its_tail_and_a_short_one_is_never_padded() -> None:
    bank = WindowBank("s", [SPEC4])
    clips = _feed(bank, [(i, i / 30, {1}) for i in range(6)] + [(7, 7 / 30, {1})])
    assert _seqs(clips) == [(1, [0, 1, 2, 3], 0), (1, [2, 3, 4, 5], 0)]
    assert clips[1].final and bank.take_discarded() == {}, "the run filled a window: its tail is scored"
    bank = WindowBank("s", [SPEC4])
    clips = _feed(bank, [(i, i / 30, {1}) for i in range(5)] + [(7, 7 / 30, {1})])
    assert _seqs(clips) == [(1, [0, 1, 2, 3], 0)] and bank.take_discarded() == {}, "a 1-item tail is dropped"
    bank = WindowBank("s", [SPEC4])
    clips = _feed(bank, [(0, 0.0, {1}), (1, 1 / 30, {1}), (2, 2 / 30, {1}), (4, 4 / 30, {1})])
    clips += bank.end_track(1)
    assert clips == [] and bank.take_discarded() == {("sf", "frame_gap"): 1}, "3 of 4 frames, then a gap"


def test_an_item_that_does_not_continue_the_run_is_refused() -> None:
    bank = WindowBank("s", [SPEC4])
    _feed(bank, [(0, 0.0, {1}), (1, 1 / 30, {1})])
    with pytest.raises(ValueError):
        bank.push(1, "sf", _item(2, 2 / 30))  # no open_frame: no link says frame 2 follows 1
    bank.open_frame(3, 3 / 30, {"sf": Link(1, 2)})  # a gate that linked 3 to 2, which never came
    assert bank.take_discarded() == {("sf", "frame_gap"): 1}, "the bank closed the run instead"
    bank.push(1, "sf", _item(3, 3 / 30))  # a new run
    with pytest.raises(ValueError):
        bank.push(1, "sf", _item(5, 5 / 30))  # the same frame's link cannot continue 3


# ---------------------------------------------------------------- property test


@dataclass
class _Stream:
    """One random stream and what went through the gate and bank."""

    fps: float
    step: int
    jumps: list[int] = field(default_factory=list)  # seq at which a timestamp jump takes effect
    clips: list[Clip] = field(default_factory=list)
    pushed: dict[int, list[int]] = field(default_factory=dict)  # track -> seqs pushed to styleflow
    ended_in_run: dict[int, bool] = field(default_factory=dict)  # track -> its last item was the last sample
    discarded: Counter[tuple[str, str]] = field(default_factory=Counter)


def _simulate(seed: int) -> _Stream:
    rng = random.Random(seed)
    fps = rng.choice([24, 25, 29.97, 30, 50, 59.94, 60, 120])
    sample_fps = 30.0 if rng.random() < 0.8 else None
    sf = WindowSpec("styleflow", 32, 32, sample_fps, 16, consecutive=True)
    caddm, sta = WindowSpec("caddm", 8, 4, 8.0, 1, pad_final=False), WindowSpec("sta", 8, 4, 1.875, 4)
    specs = [sf, *rng.choice([[], [caddm], [caddm, sta]])]
    mode = rng.choice(["auto", "all", 4.0, None])  # None: no gate, the bank decides
    gate = None if mode is None else DetectionGate(specs, mode)
    replica = StepSampler(sample_fps)  # without a gate: the same sampler the bank keeps, to know the samples
    bank = WindowBank("s", specs)
    out = _Stream(fps, decimation_step(fps, sample_fps))
    n = rng.randrange(60, 400)
    p_drop, p_jump, p_shed, p_miss = (rng.choice(v) for v in (
        [0, 0.002, 0.01, 0.1], [0, 0.003, 0.01], [0, 0.005, 0.05], [0, 0.003, 0.02, 0.15]))
    spans = [tuple(sorted((rng.randrange(n), rng.randrange(n)))) for _ in range(rng.randrange(1, 4))]
    ids: list[int | None] = [None] * len(spans)
    missed = [0] * len(spans)
    next_id, last_sample, offset = 1, None, 0.0

    def end(track: int) -> None:
        seqs = out.pushed.get(track, [])
        out.ended_in_run[track] = bool(seqs) and seqs[-1] == last_sample
        out.clips.extend(bank.end_track(track))

    for i in range(n):
        if i >= 20 and rng.random() < p_jump:  # not while the rate estimate is being formed
            offset += rng.uniform(1.0, 40.0) / fps
            out.jumps.append(i)
        pts = i / fps + offset + rng.uniform(-0.05, 0.05) / fps
        if i > 0 and rng.random() < p_drop:
            continue  # dropped before the gate: a gap in seq
        links = due = None
        if gate is not None:
            admission = gate.admit_frame(i, pts)
            if admission is None:
                continue
            links, due = admission.links, None if gate.every_frame else admission.due
        if rng.random() < p_shed:
            continue  # admitted, then shed before face detection
        sampled = "styleflow" in links if links is not None else replica.admit(i, pts) is not None
        out.clips += bank.open_frame(i, pts, links)
        ended: list[int] = []
        for k, (start, stop) in enumerate(spans):
            if start <= i < stop and rng.random() >= p_miss:
                if ids[k] is None:
                    ids[k], next_id = next_id, next_id + 1
                missed[k] = 0
                track = ids[k]
                assert track is not None
                for d in bank.sample(track, pts, due):
                    if d == "styleflow":
                        out.pushed.setdefault(track, []).append(i)
                    if (clip := bank.push(track, d, _item(i, pts))) is not None:
                        out.clips.append(clip)
            elif (track := ids[k]) is not None:
                missed[k] += 1
                if missed[k] > 2:  # the tracker's max_missed
                    ended.append(track)
                    ids[k] = None
        if sampled:
            last_sample = i
        for track in ended:
            end(track)
        out.discarded.update(bank.take_discarded())
    for track in ids:
        if track is not None:
            end(track)
    out.discarded.update(bank.take_discarded())
    return out


def _oracle(s: _Stream) -> tuple[list[tuple[int, tuple[int, ...], int]], int]:
    """The StyleFlow windows and the discarded-run count the policy implies, from the pushed
    seqs alone: a run is a maximal chain of a track's samples exactly ``step`` apart with no
    timestamp jump between."""
    windows, discards = [], 0
    for track, seqs in s.pushed.items():
        runs = [[seqs[0]]]
        for a, b in zip(seqs, seqs[1:]):
            if b - a == s.step and not any(a < j <= b for j in s.jumps):
                runs[-1].append(b)
            else:
                runs.append([b])
        for k, run in enumerate(runs):
            n = len(run)
            windows += [(track, tuple(run[i:i + 32]), 0) for i in range(0, n - 31, 32)]
            track_end = k == len(runs) - 1 and s.ended_in_run[track]
            if n >= 32 and n % 32 >= 16:
                windows.append((track, tuple(run[-32:]), 0))
            elif n < 32 and track_end and n >= 16:
                cycle = run + run[-2:0:-1]
                windows.append((track, tuple(cycle[i % len(cycle)] for i in range(32)), 32 - n))
            elif n < 32 and not track_end:
                discards += 1
    return sorted(windows), discards


def test_property_styleflow_windows_never_contain_a_gap_and_discards_are_counted() -> None:
    totals: Counter[str] = Counter()
    for seed in range(300):
        s = _simulate(seed)
        sf = [c for c in s.clips if c.detector == "styleflow"]
        for clip in sf:
            real = [it.seq for it in clip.items[:32 - clip.padded]]
            pts = [it.pts for it in clip.items[:32 - clip.padded]]
            assert all(b - a == s.step for a, b in zip(real, real[1:])), (seed, real)
            assert not any(a < j <= b for a, b in zip(real, real[1:]) for j in s.jumps), (seed, real, s.jumps)
            assert all(0 < b - a <= (s.step + 0.5) / s.fps for a, b in zip(pts, pts[1:])), (seed, pts)
            # A padded window is its run reflected: the same frames, back and forth, no new neighbour.
            assert clip.padded == 0 or {it.seq for it in clip.items} == set(real)
        expected, discards = _oracle(s)
        assert sorted((c.track_id, tuple(it.seq for it in c.items), c.padded) for c in sf) == expected, seed
        assert sum(s.discarded.values()) == discards, (seed, s.discarded, discards)
        assert {d for d, _ in s.discarded} <= {"styleflow"}, "CADDM and StA never discard"
        assert {r for _, r in s.discarded} <= set(GAP_REASONS) - {"rate_change"}, "a steady source keeps its step"
        totals["windows"] += len(sf)
        totals["padded"] += sum(c.padded > 0 for c in sf)
        totals["final_unpadded"] += sum(c.final and not c.padded for c in sf)
        totals["discards"] += discards
        totals.update(r for (_, r), k in s.discarded.items() for _ in range(k))
    # The random streams exercised every path (else the property above could pass vacuously).
    assert totals["windows"] > 300 and totals["discards"] > 300, totals
    assert totals["final_unpadded"] > 20 and totals["padded"] > 0, totals
    assert min(totals[r] for r in ("missed_detection", "frame_gap", "pts_jump")) > 20, totals
