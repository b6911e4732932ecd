"""Per-track, per-detector sliding windows (pure: no asyncio, no torch).

Each detector samples a track's frames at its own rate (``sample_fps`` from its model
card: StA's training data spaces frames ≈0.5 s apart, StyleFlow's are consecutive) and
emits windows of ``window_len`` sampled frames every ``stride`` sampled frames.

Partial windows at track end — the deliberate policy:

* If the items not yet covered by an emitted window number at least ``min_final``:
  - a track that filled at least one window emits its **last** ``window_len`` items
    (overlapping the previous window: the tail is scored with full context);
  - a shorter track is **reflect-padded** to ``window_len`` (StyleFlow's authors pad
    16–31-frame tracks the same way) for clip models, or scored as it is (fewer frames
    in the mean) for per-frame models (``pad_final=False``).
* Otherwise the tail is dropped: too little evidence to score (StyleFlow's authors skip
  tracks shorter than 16 frames; we use half a window for clip models).

A window emitted this way has ``Clip.final = True`` and ``Clip.padded`` counts the
reflected items, so an alert can say how much of it was real.

Which frames are analysed at all is a stream-level decision (:class:`DetectionGate`): face
detection runs only on frames that some detector samples. While the gate skips frames, a
track's samples for a detector are exactly the frames that detector's stream-level
sampler chose (one schedule, no per-track drift); when every frame is analysed (a
detector takes every frame, or ``faces.detect_fps: all``) each track samples on its own
schedule from its first frame, as it always has.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .types import Clip, WindowItem


@dataclass(frozen=True)
class WindowSpec:
    """How one detector windows a track. ``sample_fps=None`` takes every frame."""

    detector: str
    window_len: int
    stride: int
    sample_fps: float | None
    min_final: int
    pad_final: bool = True

    def __post_init__(self) -> None:
        if self.window_len < 1 or self.stride < 1:
            raise ValueError(f"{self.detector}: window_len and stride must be >= 1")
        if self.sample_fps is not None and self.sample_fps <= 0:
            raise ValueError(f"{self.detector}: sample_fps must be positive or None")
        if not 1 <= self.min_final <= self.window_len:
            raise ValueError(f"{self.detector}: min_final must be in 1..window_len")


class FrameSampler:
    """Takes frames at (at most) ``fps`` in stream time, robust to timestamp jitter.

    A frame is taken when it is no earlier than the next due time minus a tolerance of
    a quarter period or half the source's frame interval, whichever is smaller: a 30 fps
    source sampled at 30 fps keeps every frame despite jitter, a 60 fps source keeps
    every other one, and StA's 1.875 fps on a 30 fps source takes every 16th frame.
    Due times advance by whole periods, so jitter does not accumulate. After a gap (a
    missed detection, a stall) the schedule restarts at the next frame instead of
    bursting to catch up.

    :meth:`accept` is the whole rule; :meth:`due_at`, :meth:`take` and :meth:`seen` are
    its parts, for a caller that decides across several samplers (:class:`DetectionGate`).
    """

    def __init__(self, fps: float | None) -> None:
        self.period = 0.0 if fps is None else 1.0 / fps
        self._next_due: float | None = None
        self._last_pts: float | None = None
        self.last_taken: float | None = None

    def accept(self, pts: float) -> bool:
        taken = self.due_at(pts)
        if taken:
            self.take(pts)
        self.seen(pts)
        return taken

    def due_at(self, pts: float, after: float | None = None) -> bool:
        """Whether a frame at ``pts`` would be taken, the previous frame having been at
        ``after`` (default: the last frame :meth:`seen`). Changes nothing."""
        last = self._last_pts if after is None else after
        if self.period == 0.0 or self._next_due is None or (last is not None and pts < last):
            return True  # every frame; the first frame; or the clock went backwards (a new session)
        tolerance = 0.25 * self.period
        if last is not None and pts > last:
            tolerance = min(tolerance, 0.5 * (pts - last))
        return pts >= self._next_due - tolerance

    def take(self, pts: float) -> None:
        """Take the frame at ``pts``: the next one is due a period after the current due
        time (so a frame taken a little early or late does not shift the schedule), or a
        period after ``pts`` when the schedule fell behind (a gap) or restarts."""
        if self._last_pts is not None and pts < self._last_pts:
            self._next_due = None  # the clock went backwards (a new session): start afresh
        due = self._next_due if self._next_due is not None else pts
        self.last_taken = pts
        self._next_due = due + self.period
        if self._next_due <= pts:  # fell behind (gap): restart the schedule here
            self._next_due = pts + self.period

    def seen(self, pts: float) -> None:
        """Record that a frame at ``pts`` went by (taken or not)."""
        self._last_pts = pts

    @property
    def next_due(self) -> float | None:
        """Stream time of the next frame to take (``None`` before the first)."""
        return self._next_due

    def restart(self, pts: float) -> None:
        """Treat ``pts`` as taken: the next frame is due one period after it."""
        self._last_pts = pts
        self._next_due = pts + self.period


# A detector's sample is moved by one frame, earlier or later, to share another detector's
# face detection only when its sampling period spans at least this many source frames, so
# the shift is small against its spacing: StA's 16 frames at 30 fps move, CADDM's 3.75 and
# consecutive-frame models never do.
_SHIFT_MIN_FRAMES = 8.0
_SLACK_S = 1e-6  # timestamp rounding: a spacing of exactly a period plus or minus one frame is within it


class DetectionGate:
    """Which frames of one stream go to face detection, and which detectors sample them.

    One :class:`FrameSampler` per detector at its rate, fed every decoded frame's
    timestamp, skipped frames included. :meth:`admit` returns ``None`` when no detector
    samples the frame (skip detection: the frame is neither analysed nor dropped), else
    the set of detectors that sample it. A sparse detector (a period of at least
    :data:`_SHIFT_MIN_FRAMES` frames, StA) due one frame before or after another
    detector's frame takes that frame instead (one frame early or late; its schedule
    keeps its grid, and the spacing since its previous sample stays within one frame of
    its period), so the two share one face detection: with CADDM at 8 fps and StA at
    1.875 fps on 30 fps, about 8.5 frames a second are analysed instead of 9.4, every
    CADDM frame is the one its own sampler would take and every StA frame is within one
    source frame of it.

    ``detect_fps``: ``"auto"`` — just the frames the detectors sample; ``"all"`` —
    every frame; a number — every frame a detector samples (never fewer than the
    detectors need) plus extra frames so that consecutive analysed frames are at most
    about 1.5 / ``detect_fps`` apart (denser tracking and live view between sparse
    samples): a number at or below the detectors' rate changes nothing; above it the
    stream is analysed at about that rate (the detectors' frames fall where their own
    schedules put them, so the extra frames cannot always be evenly spaced). A detector
    that takes every frame (``sample_fps=None``) makes every frame pass.
    :attr:`every_frame` is then true and the returned set is every detector: tracks keep
    their own samplers (the bank's behaviour without a gate).
    """

    def __init__(self, specs: list[WindowSpec], detect_fps: float | str = "auto") -> None:
        if isinstance(detect_fps, str) and detect_fps not in ("auto", "all"):
            raise ValueError(f"detect_fps must be 'auto', 'all' or a positive number, not {detect_fps!r}")
        if not isinstance(detect_fps, str) and detect_fps <= 0:
            raise ValueError("detect_fps must be positive")
        self.detectors = frozenset(s.detector for s in specs)
        self.every_frame = detect_fps == "all" or any(s.sample_fps is None for s in specs)
        self._samplers = {} if self.every_frame else {s.detector: FrameSampler(s.sample_fps) for s in specs}
        self._floor = None if self.every_frame or isinstance(detect_fps, str) else FrameSampler(float(detect_fps))
        self._last_pts: float | None = None

    def _share(self, due: set[str], pts: float, dt: float) -> set[str]:
        """Move sparse detectors by one frame so that they share a face detection: wait for
        the next frame when only they are due now and another detector is due then, or
        come one frame early to a frame being analysed anyway. ``dt``: the frame interval."""
        nxt = pts + dt  # the next frame's expected timestamp
        samplers = self._samplers

        def spacing_ok(d: str, at: float) -> bool:  # within one frame of the period since the last sample
            last = samplers[d].last_taken
            return last is None or abs(at - last - samplers[d].period) <= dt + _SLACK_S

        movable = {d for d, s in samplers.items() if s.period >= _SHIFT_MIN_FRAMES * dt}
        due_next = {d for d, s in samplers.items() if d not in due and s.due_at(nxt, after=pts)}
        if due <= movable and due_next - movable and all(spacing_ok(d, nxt) for d in due):
            return set()  # the sparse detectors wait one frame for the next frame's detection
        return due | {d for d in due_next & movable if spacing_ok(d, pts)}

    def admit(self, pts: float) -> frozenset[str] | None:
        """``None``: skip this frame; else the detectors that sample it (every detector
        when :attr:`every_frame`). Call once per decoded frame, in order."""
        if self.every_frame:
            return self.detectors
        last, self._last_pts = self._last_pts, pts
        due = {d for d, s in self._samplers.items() if s.due_at(pts)}
        if due and last is not None and pts > last:
            due = self._share(due, pts, pts - last)
        for d, sampler in self._samplers.items():
            if d in due:
                sampler.take(pts)
            sampler.seen(pts)
        if self._floor is None:
            return frozenset(due) if due else None
        if due:
            self._floor.restart(pts)  # analysed anyway: the next extra frame is due a period after it
            return frozenset(due)
        # An extra frame when the gap reaches the period, unless a detector's frame is due
        # within half a period (it closes the gap; an extra frame just before it is waste).
        soon = min((s.next_due for s in self._samplers.values() if s.next_due is not None), default=math.inf)
        if soon - pts > 0.5 * self._floor.period and self._floor.accept(pts):
            return frozenset()
        return None


def _reflect_indices(n: int, length: int) -> list[int]:
    """Indices 0..n-1 followed by reflections (…, n-2, n-3, …, 1, 0, 1, …) up to ``length``."""
    if n == 1:
        return [0] * length
    period = 2 * (n - 1)
    out = []
    for i in range(length):
        k = i % period
        out.append(k if k < n else period - k)
    return out


class TrackWindows:
    """The ring buffer of one (track, detector)."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.sampler = FrameSampler(spec.sample_fps)
        self._ring: deque[WindowItem] = deque(maxlen=spec.window_len)
        self._total = 0
        self._since_emit = spec.stride  # the first full window is due at once
        self._uncovered = 0

    def push(self, item: WindowItem) -> tuple[WindowItem, ...] | None:
        """Add a sampled item; return a full window when one is due."""
        self._ring.append(item)
        self._total += 1
        self._since_emit += 1
        self._uncovered += 1
        if len(self._ring) == self.spec.window_len and self._since_emit >= self.spec.stride:
            self._since_emit = 0
            self._uncovered = 0
            return tuple(self._ring)
        return None

    def finish(self) -> tuple[tuple[WindowItem, ...], int] | None:
        """The final window at track end and its padding count, or ``None`` (dropped)."""
        if self._uncovered < self.spec.min_final or self._uncovered == 0:
            return None
        items = list(self._ring)
        if self._total >= self.spec.window_len or not self.spec.pad_final:
            return tuple(items), 0
        order = _reflect_indices(len(items), self.spec.window_len)
        return tuple(items[i] for i in order), self.spec.window_len - len(items)


class WindowBank:
    """All windows of one stream: every live track × every detector."""

    def __init__(self, stream_id: str, specs: list[WindowSpec]) -> None:
        self.stream_id = stream_id
        self.specs = {s.detector: s for s in specs}
        self._tracks: dict[int, dict[str, TrackWindows]] = {}

    def _windows(self, track_id: int) -> dict[str, TrackWindows]:
        if track_id not in self._tracks:
            self._tracks[track_id] = {d: TrackWindows(s) for d, s in self.specs.items()}
        return self._tracks[track_id]

    def sample(self, track_id: int, pts: float, due: frozenset[str] | None = None) -> list[str]:
        """Detectors that take this frame of this track.

        ``due=None``: the track's own samplers decide (and advance). Otherwise ``due`` is the
        stream-level decision (:meth:`DetectionGate.admit`) and every track takes exactly
        those detectors' samples; the track's own samplers are not consulted.
        """
        windows = self._windows(track_id)
        if due is not None:
            return [d for d in windows if d in due]
        return [d for d, w in windows.items() if w.sampler.accept(pts)]

    def push(self, track_id: int, detector: str, item: WindowItem) -> Clip | None:
        """Add an item that :meth:`sample` accepted; return a clip when a window is due."""
        items = self._windows(track_id)[detector].push(item)
        if items is None:
            return None
        return Clip(self.stream_id, track_id, detector, items)

    def end_track(self, track_id: int) -> list[Clip]:
        """Close a track: its final windows per the module's policy, then forget it."""
        clips = []
        for detector, windows in self._tracks.pop(track_id, {}).items():
            final = windows.finish()
            if final is not None:
                items, padded = final
                clips.append(Clip(self.stream_id, track_id, detector, items, final=True, padded=padded))
        return clips

    @property
    def track_ids(self) -> list[int]:
        return sorted(self._tracks)
