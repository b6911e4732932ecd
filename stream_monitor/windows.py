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
"""

from __future__ import annotations

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
    """

    def __init__(self, fps: float | None) -> None:
        self.period = 0.0 if fps is None else 1.0 / fps
        self._next_due: float | None = None
        self._last_pts: float | None = None

    def accept(self, pts: float) -> bool:
        if self.period == 0.0:
            return True
        tolerance = 0.25 * self.period
        if self._last_pts is not None and pts < self._last_pts:
            self._next_due = None  # the clock went backwards (a new session): start afresh
        elif self._last_pts is not None and pts > self._last_pts:
            tolerance = min(tolerance, 0.5 * (pts - self._last_pts))
        self._last_pts = pts
        if self._next_due is not None and pts < self._next_due - tolerance:
            return False
        due = self._next_due if self._next_due is not None else pts
        self._next_due = due + self.period
        if self._next_due <= pts:  # fell behind (gap): restart the schedule here
            self._next_due = pts + self.period
        return True


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

    def sample(self, track_id: int, pts: float) -> list[str]:
        """Detectors that take this frame of this track (advances their samplers)."""
        return [d for d, w in self._windows(track_id).items() if w.sampler.accept(pts)]

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
