"""Per-track, per-detector sliding windows (pure: no asyncio, no torch).

Each detector samples a track's frames at its own rate (``sample_fps`` from its model
card: StA's training data spaces frames ≈0.5 s apart, StyleFlow's are consecutive) and
emits windows of ``window_len`` sampled frames every ``stride`` sampled frames.

Consecutive-frame detectors (``WindowSpec.consecutive``, from the card; StyleFlow) — runs
of frames:

* **Which frames.** A regular decimation of the source: every ``step``-th decoded frame,
  ``step = max(1, round(source_fps / sample_fps))`` (halves round up; ``sample_fps=None``:
  step 1), so 25/30 fps sources give every frame and 50/60 fps every second one — never a
  fractional pattern such as 2, 2, 1. The source rate is the median of the last 15
  timestamp intervals per source frame (``Δpts / Δseq`` of successive frames); the step
  changes only when the rate ratio leaves ``step ± 0.6`` (no flapping at a half), and a
  change starts a new run. :class:`StepSampler` decides this at stream level, fed every decoded frame by
  ``seq`` (the supervisor's number: a gap is a frame dropped before us) and ``pts``.
* **Runs.** Two samples are consecutive when the second is exactly ``step`` seq numbers
  after the first and at most ``step + 0.5`` source periods later (a longer interval is a
  timestamp jump: for step 1, more than 1.5 frame periods), and later in time. Each sample
  carries a :class:`Link` to the previous sample of its run, or starts a new run with the
  reason the old one ended. A frame that should have been sampled but is missing (dropped
  at ingest, or admitted and then shed before face detection) breaks the run
  (``frame_gap``); so does a timestamp jump (``pts_jump``) or a change of step
  (``rate_change``). Frames between samples may be missing: they are not in the decimated
  sequence.
* **Per track.** A track's run continues only while the track is found on every sample of
  the stream's run: a track missed on a sample (a missed face detection) closes its run
  (``missed_detection``); so does a break of the stream's run. The track's next found
  sample starts a new run. A window is made only from ``window_len`` items of one run, so
  every window holds strictly consecutive frames at the step (a track's final window may
  still be reflect-padded, see below: its real frames are one run).
* **A run closed by a gap** that filled at least one window emits its last
  ``window_len`` items as a final window when at least ``min_final`` of them are not yet
  covered (as at track end); otherwise its tail is dropped. A run closed by a gap with
  ``1 <= n < window_len`` items is **discarded** (never padded: those frames are a piece
  of a longer track whose neighbours were lost) and counted once, by detector and reason
  (:meth:`WindowBank.take_discarded`; the service's
  ``stream_monitor_windows_discarded_total{detector,reason}``). Not counted: a track's end
  (its tail follows the track-end policy below) and the dropped tail of a run that filled
  a window. CADDM and StA are not consecutive-frame detectors: they keep their samplers
  and never discard.

Partial windows at track end — the deliberate policy:

* If the items not yet covered by an emitted window number at least ``min_final``:
  - a track that filled at least one window emits its **last** ``window_len`` items
    (overlapping the previous window: the tail is scored with full context);
  - a shorter track is **reflect-padded** to ``window_len`` (StyleFlow's authors pad
    16–31-frame tracks the same way) for clip models, or scored as it is (fewer frames
    in the mean) for per-frame models (``pad_final=False``).
* Otherwise the tail is dropped: too little evidence to score (StyleFlow's authors skip
  tracks shorter than 16 frames; we use half a window for clip models).

For a consecutive-frame detector "track" here means the track's current run: a track that
was missed on its detector's last sample ended its run then (a gap, counted as above),
not at its end. The tracker ends a track only after ``max_missed`` misses, so a face that
leaves the picture closes its last run as a ``missed_detection``; the track-end policy
applies to runs still unbroken when the stream stops or reconnects.

A window emitted this way has ``Clip.final = True`` and ``Clip.padded`` counts the
reflected items, so an alert can say how much of it was real.

Which frames are analysed at all is a stream-level decision (:class:`DetectionGate`): face
detection runs only on frames that some detector samples. While the gate skips frames, a
track's samples for a detector are exactly the frames that detector's stream-level
sampler chose (one schedule, no per-track drift); when every frame is analysed (a
detector takes every frame, or ``faces.detect_fps: all``) each track samples on its own
schedule from its first frame, as it always has — except consecutive-frame detectors,
whose samples are always the stream-level :class:`StepSampler`'s (:class:`Admission`
carries their links to the window bank; :meth:`WindowBank.open_frame` starts each frame).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping

from .types import Clip, WindowItem

#: Why a consecutive-frame run ended (the ``reason`` label of ``windows_discarded_total``).
GAP_REASONS: tuple[str, ...] = ("missed_detection", "frame_gap", "pts_jump", "rate_change")


@dataclass(frozen=True)
class WindowSpec:
    """How one detector windows a track. ``sample_fps=None`` takes every frame.
    ``consecutive``: windows only of consecutive frames at a regular decimation of the source
    (runs, see the module docstring); ``sample_fps`` then picks the step."""

    detector: str
    window_len: int
    stride: int
    sample_fps: float | None
    min_final: int
    pad_final: bool = True
    consecutive: bool = False

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


_PERIOD_HISTORY = 15  # timestamp intervals in the source-rate estimate: half a second at 30 fps
_JUMP_PERIODS = 0.5  # two samples ``step`` frames apart may be up to ``step + 0.5`` periods apart (1.5 for step 1)
_STEP_HYSTERESIS = 0.1  # keep the step while source_fps / sample_fps is within step ± (0.5 + this)


def decimation_step(source_fps: float, sample_fps: float | None) -> int:
    """The regular decimation nearest ``sample_fps``: every n-th source frame with
    ``n = max(1, round(source_fps / sample_fps))``, halves rounding up (``None``: 1)."""
    if sample_fps is None:
        return 1
    return max(1, math.floor(source_fps / sample_fps + 0.5))


@dataclass(frozen=True)
class Link:
    """A consecutive-frame detector's sample and its place in the stream's run of samples.

    ``step``: the run's decimation, in source frames (seq numbers; 1 at a run's first sample
    while the source rate is not yet known). ``prev``: the seq of the
    run's previous sample — exactly ``step`` before this one, with no timestamp jump between
    — or ``None`` when a run starts here; ``reason`` then says why the previous run ended
    (one of :data:`GAP_REASONS`; ``None`` for the stream's first sample).
    """

    step: int
    prev: int | None
    reason: str | None = None


class StepSampler:
    """Every ``step``-th source frame, in runs of consecutive samples (see the module docstring).

    Feed :meth:`admit` every frame the caller sees, in order. ``step`` is
    :func:`decimation_step` of the estimated source rate (:attr:`period`: the median of the
    last 15 intervals per source frame, ``Δpts / Δseq`` between successive frames seen, so a
    missing frame does not distort it). The stream's first frame is sampled before any rate
    is known; the run adopts the first estimate (the next frame's) without a break, as it
    does after timestamps restart. After a break the next frame seen starts the new run at
    once (the decimation's phase moves there).
    """

    def __init__(self, sample_fps: float | None) -> None:
        if sample_fps is not None and sample_fps <= 0:
            raise ValueError("sample_fps must be positive or None")
        self.sample_fps = sample_fps
        self._intervals: deque[float] = deque(maxlen=_PERIOD_HISTORY)
        self._period: float | None = None  # their median
        self._seen: tuple[int, float] | None = None  # (seq, pts) of the last frame seen
        self._taken: tuple[int, float] | None = None  # (seq, pts) of the run's last sample
        self._step: int | None = None  # the run's step; None until the source rate is known

    @property
    def period(self) -> float | None:
        """The source's frame interval (s): the median of recent intervals per source frame."""
        return self._period

    @property
    def step(self) -> int | None:
        """The current run's step (``None`` while the source rate is unknown)."""
        return self._step

    def _estimated_step(self) -> int | None:
        period = self.period
        if period is None:
            return None
        if self.sample_fps is None:
            return 1
        ratio = 1.0 / (period * self.sample_fps)
        if self._step is not None and abs(ratio - self._step) <= 0.5 + _STEP_HYSTERESIS:
            return self._step  # within the band around the current step: keep it (no flapping at x.5)
        return decimation_step(1.0 / period, self.sample_fps)

    def _start(self, seq: int, pts: float, step: int | None, reason: str | None) -> Link:
        self._taken, self._step = (seq, pts), step
        return Link(step or 1, None, reason)

    def admit(self, seq: int, pts: float) -> Link | None:
        """The frame's :class:`Link` when it is sampled, else ``None``."""
        seen, self._seen = self._seen, (seq, pts)
        if seen is not None:
            if pts < seen[1]:
                self._intervals.clear()  # timestamps restarted (a new session): its rate may differ,
                self._period = self._step = None  # so its first estimate is adopted, not taken for a change
            elif seq > seen[0] and pts > seen[1]:
                # Per source frame: frames missing in between (a seq gap) took their time too.
                self._intervals.append((pts - seen[1]) / (seq - seen[0]))
                self._period = statistics.median(self._intervals)
        estimate = self._estimated_step()
        if self._taken is None:
            return self._start(seq, pts, estimate, None)
        if self._step is None:
            self._step = estimate  # the run's first rate estimate: adopted, not a change
        elif estimate is not None and estimate != self._step:
            return self._start(seq, pts, estimate, "rate_change")
        step = self._step or 1
        taken_seq, taken_pts = self._taken
        if seq <= taken_seq or seq > taken_seq + step:
            return self._start(seq, pts, self._step, "frame_gap")  # the frame due was not seen
        if seq < taken_seq + step:
            return None
        dt, period = pts - taken_pts, self.period
        if dt <= 0 or (period is not None and dt > (step + _JUMP_PERIODS) * period):
            return self._start(seq, pts, self._step, "pts_jump")
        self._taken = (seq, pts)
        return Link(step, taken_seq)

    def due_next(self, seq: int) -> bool:
        """Whether frame ``seq``, coming next with no gap, would be sampled (changes nothing)."""
        return self._taken is not None and seq == self._taken[0] + (self._step or 1)

    @property
    def next_due(self) -> float | None:
        """Estimated stream time of the next sample (``None`` before the rate is known)."""
        period = self.period
        if self._taken is None or period is None:
            return None
        return self._taken[1] + (self._step or 1) * period


# A detector's sample is moved by one frame, earlier or later, to share another detector's
# face detection only when its sampling period spans at least this many source frames, so
# the shift is small against its spacing: StA's 16 frames at 30 fps move, CADDM's 3.75 and
# consecutive-frame models never do.
_SHIFT_MIN_FRAMES = 8.0
_SLACK_S = 1e-6  # timestamp rounding: a spacing of exactly a period plus or minus one frame is within it


@dataclass(frozen=True)
class Admission:
    """The gate's decision for one frame it admits.

    ``due``: the detectors whose stream-level sampler takes the frame (every detector when
    :attr:`DetectionGate.every_frame`: tracks' own samplers decide then). ``links``: each
    consecutive-frame detector that samples the frame, with its :class:`Link` (empty when
    none does); :meth:`WindowBank.open_frame` takes them.
    """

    due: frozenset[str]
    links: Mapping[str, Link] = field(default_factory=dict)


class DetectionGate:
    """Which frames of one stream go to face detection, and which detectors sample them.

    One :class:`FrameSampler` per detector at its rate, fed every decoded frame's
    timestamp, skipped frames included; consecutive-frame detectors have a
    :class:`StepSampler` instead (fed every frame's seq and timestamp, in every mode), and
    are never moved. :meth:`admit_frame` returns ``None`` when no detector samples the frame
    (skip detection: the frame is neither analysed nor dropped), else an :class:`Admission`.
    A sparse detector (a period of at least :data:`_SHIFT_MIN_FRAMES` frames, StA) due one
    frame before or after another detector's frame takes that frame instead (one frame
    early or late; its schedule keeps its grid, and the spacing since its previous sample
    stays within one frame of its period), so the two share one face detection: with CADDM
    at 8 fps and StA at 1.875 fps on 30 fps, about 8.5 frames a second are analysed instead
    of 9.4, every CADDM frame is the one its own sampler would take and every StA frame is
    within one source frame of it.

    ``detect_fps``: ``"auto"`` — just the frames the detectors sample; ``"all"`` —
    every frame; a number — every frame a detector samples (never fewer than the
    detectors need) plus extra frames so that consecutive analysed frames are at most
    about 1.5 / ``detect_fps`` apart (denser tracking and live view between sparse
    samples): a number at or below the detectors' rate changes nothing; above it the
    stream is analysed at about that rate (the detectors' frames fall where their own
    schedules put them, so the extra frames cannot always be evenly spaced). A detector
    that takes every frame (``sample_fps=None``) makes every frame pass.
    :attr:`every_frame` is then true and ``due`` is every detector: tracks keep their own
    samplers (the bank's behaviour without a gate), consecutive-frame detectors excepted.
    """

    def __init__(self, specs: list[WindowSpec], detect_fps: float | str = "auto") -> None:
        if isinstance(detect_fps, str) and detect_fps not in ("auto", "all"):
            raise ValueError(f"detect_fps must be 'auto', 'all' or a positive number, not {detect_fps!r}")
        if not isinstance(detect_fps, str) and detect_fps <= 0:
            raise ValueError("detect_fps must be positive")
        self.detectors = frozenset(s.detector for s in specs)
        self.every_frame = detect_fps == "all" or any(s.sample_fps is None for s in specs)
        self._steps = {s.detector: StepSampler(s.sample_fps) for s in specs if s.consecutive}
        self._samplers = {} if self.every_frame else {
            s.detector: FrameSampler(s.sample_fps) for s in specs if not s.consecutive}
        self._floor = None if self.every_frame or isinstance(detect_fps, str) else FrameSampler(float(detect_fps))
        self._last_pts: float | None = None
        self._next_seq = 0

    def _share(self, due: set[str], fixed_now: bool, fixed_next: bool, pts: float, dt: float) -> set[str]:
        """Move sparse detectors by one frame so that they share a face detection: wait for
        the next frame when only they are due now and another detector is due then, or
        come one frame early to a frame being analysed anyway. ``fixed_now``/``fixed_next``:
        a consecutive-frame detector samples this frame / would sample the next one.
        ``dt``: the frame interval."""
        nxt = pts + dt  # the next frame's expected timestamp
        samplers = self._samplers

        def spacing_ok(d: str, at: float) -> bool:  # within one frame of the period since the last sample
            last = samplers[d].last_taken
            return last is None or abs(at - last - samplers[d].period) <= dt + _SLACK_S

        movable = {d for d, s in samplers.items() if s.period >= _SHIFT_MIN_FRAMES * dt}
        due_next = {d for d, s in samplers.items() if d not in due and s.due_at(nxt, after=pts)}
        if not fixed_now and due <= movable and (due_next - movable or fixed_next) \
                and all(spacing_ok(d, nxt) for d in due):
            return set()  # the sparse detectors wait one frame for the next frame's detection
        return due | {d for d in due_next & movable if spacing_ok(d, pts)}

    def admit(self, pts: float, seq: int | None = None) -> frozenset[str] | None:
        """:meth:`admit_frame`'s ``due`` (``None``: skip). ``seq`` defaults to one more than
        the previous frame's (no frame missing), for callers that only have timestamps."""
        admission = self.admit_frame(self._next_seq if seq is None else seq, pts)
        return None if admission is None else admission.due

    def admit_frame(self, seq: int, pts: float) -> Admission | None:
        """``None``: skip this frame; else who samples it. Call once per decoded frame, in
        order, with its ``seq`` (a gap: frames dropped before the gate) and ``pts``."""
        self._next_seq = seq + 1
        links = {d: link for d, s in self._steps.items() if (link := s.admit(seq, pts)) is not None}
        if self.every_frame:
            return Admission(self.detectors, links)
        last, self._last_pts = self._last_pts, pts
        due = {d for d, s in self._samplers.items() if s.due_at(pts)}
        if (due or links) and last is not None and pts > last:
            fixed_next = any(s.due_next(seq + 1) for s in self._steps.values())
            due = self._share(due, bool(links), fixed_next, pts, pts - last)
        for d, sampler in self._samplers.items():
            if d in due:
                sampler.take(pts)
            sampler.seen(pts)
        due.update(links)
        if self._floor is None:
            return Admission(frozenset(due), links) if due else None
        if due:
            self._floor.restart(pts)  # analysed anyway: the next extra frame is due a period after it
            return Admission(frozenset(due), links)
        # An extra frame when the gap reaches the period, unless a detector's frame is due
        # within half a period (it closes the gap; an extra frame just before it is waste).
        upcoming = [s.next_due for s in self._samplers.values()] + [s.next_due for s in self._steps.values()]
        soon = min((t for t in upcoming if t is not None), default=math.inf)
        if soon - pts > 0.5 * self._floor.period and self._floor.accept(pts):
            return Admission(frozenset(), links)
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
    """The ring buffer of one (track, detector). For a consecutive-frame spec the ring holds
    the track's current run only (:meth:`close_run` empties it)."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.sampler = FrameSampler(spec.sample_fps)
        self._ring: deque[WindowItem] = deque(maxlen=spec.window_len)
        self._total = 0
        self._since_emit = spec.stride  # the first full window is due at once
        self._uncovered = 0

    @property
    def last_seq(self) -> int | None:
        """The seq of the newest item (``None``: empty, e.g. right after :meth:`close_run`)."""
        return self._ring[-1].seq if self._ring else None

    def push(self, item: WindowItem) -> tuple[WindowItem, ...] | None:
        """Add a sampled item; return a full window when one is due. (A consecutive-frame
        spec's continuity is the caller's: :meth:`WindowBank.push` checks it.)"""
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

    def close_run(self) -> tuple[tuple[WindowItem, ...] | None, bool]:
        """End the current run at a gap and empty the ring: ``(tail, discarded)``.

        ``tail``: the run's last ``window_len`` items when it filled a window and at least
        ``min_final`` of them are uncovered, else ``None``. ``discarded``: the run held
        ``1 <= n < window_len`` items, which make no window (they are never padded).
        """
        n = self._total
        tail = tuple(self._ring) if n >= self.spec.window_len and self._uncovered >= self.spec.min_final else None
        self._ring.clear()
        self._total = 0
        self._since_emit = self.spec.stride
        self._uncovered = 0
        return tail, 0 < n < self.spec.window_len


class WindowBank:
    """All windows of one stream: every live track × every detector.

    Per frame: :meth:`open_frame` (required when a consecutive-frame detector is enabled),
    then :meth:`sample` and :meth:`push` for each tracked face, then :meth:`end_track` for
    the tracks that ended. :meth:`take_discarded` hands over the runs discarded since.
    """

    def __init__(self, stream_id: str, specs: list[WindowSpec]) -> None:
        self.stream_id = stream_id
        self.specs = {s.detector: s for s in specs}
        self._tracks: dict[int, dict[str, TrackWindows]] = {}
        # Consecutive-frame detectors: a stream-level sampler for frames that come without
        # links (no gate: every frame analysed), the seq of each one's last sample seen here,
        # and the current frame's links.
        self._steps = {s.detector: StepSampler(s.sample_fps) for s in specs if s.consecutive}
        self._last_sample: dict[str, int | None] = {d: None for d in self._steps}
        self._links: dict[str, Link] = {}
        self._discarded: dict[tuple[str, str], int] = {}

    def _windows(self, track_id: int) -> dict[str, TrackWindows]:
        if track_id not in self._tracks:
            self._tracks[track_id] = {d: TrackWindows(s) for d, s in self.specs.items()}
        return self._tracks[track_id]

    def open_frame(self, seq: int, pts: float, links: Mapping[str, Link] | None = None) -> list[Clip]:
        """Start an analysed frame: close every run it cannot continue; return their tail windows.

        ``links``: the gate's (:attr:`Admission.links`) for the consecutive-frame detectors that
        sample this frame; ``None``: no gate saw the frames, so the bank's own
        :class:`StepSampler` decides from this frame's ``seq`` and ``pts`` (feed it every
        analysed frame). For each detector that samples the frame, a track's run is closed
        when the track was not found on the detector's previous sample here
        (``missed_detection``), else when the stream's run broke: the link starts a new run
        (its reason) or follows a sample that never reached the bank (``frame_gap``: shed
        before face detection).
        """
        if links is None:
            links = {d: link for d, s in self._steps.items() if (link := s.admit(seq, pts)) is not None}
        self._links = {d: link for d, link in links.items() if d in self._steps}
        clips: list[Clip] = []
        for detector, link in self._links.items():
            last = self._last_sample[detector]
            broken = None if link.prev is not None and link.prev == last else (
                link.reason if link.prev is None and link.reason is not None else "frame_gap")
            for track_id, windows in self._tracks.items():
                run_end = windows[detector].last_seq
                if run_end is None:
                    continue  # no run open
                reason = "missed_detection" if run_end != last else broken
                if reason is not None:
                    clips += self._close_run(track_id, detector, reason)
            self._last_sample[detector] = seq
        return clips

    def _close_run(self, track_id: int, detector: str, reason: str) -> list[Clip]:
        tail, discarded = self._tracks[track_id][detector].close_run()
        if discarded:
            self._discarded[(detector, reason)] = self._discarded.get((detector, reason), 0) + 1
        return [] if tail is None else [Clip(self.stream_id, track_id, detector, tail, final=True)]

    def sample(self, track_id: int, pts: float, due: frozenset[str] | None = None) -> list[str]:
        """Detectors that take this frame of this track.

        Consecutive-frame detectors: those with a link this frame (:meth:`open_frame`).
        Others: ``due=None``: the track's own samplers decide (and advance). Otherwise ``due``
        is the stream-level decision (:meth:`DetectionGate.admit`) and every track takes
        exactly those detectors' samples; the track's own samplers are not consulted.
        """
        windows = self._windows(track_id)
        out = []
        for d, w in windows.items():
            if d in self._steps:
                taken = d in self._links
            elif due is not None:
                taken = d in due
            else:
                taken = w.sampler.accept(pts)
            if taken:
                out.append(d)
        return out

    def push(self, track_id: int, detector: str, item: WindowItem) -> Clip | None:
        """Add an item that :meth:`sample` accepted; return a clip when a window is due.

        A consecutive-frame detector's item must continue the track's run: the run is empty
        or its last item is the sample this frame's link follows (:meth:`open_frame` closed
        every other run). Anything else is refused with ``ValueError``, so no window can hold
        a gap whatever the caller does."""
        windows = self._windows(track_id)[detector]
        if detector in self._steps:
            link = self._links.get(detector)
            if link is None or windows.last_seq not in (None, link.prev):
                raise ValueError(f"{detector}: frame {item.seq} does not continue track {track_id}'s run "
                                 f"(last {windows.last_seq}, link {link}); call open_frame for each frame")
        items = windows.push(item)
        if items is None:
            return None
        return Clip(self.stream_id, track_id, detector, items)

    def end_track(self, track_id: int) -> list[Clip]:
        """Close a track: its final windows per the module's policy, then forget it. A
        consecutive-frame run that the track had already lost (it was not found on the
        detector's last sample) ends as a gap (``missed_detection``), not as a track end."""
        clips = []
        for detector, windows in self._tracks.get(track_id, {}).items():
            if detector in self._steps and windows.last_seq not in (None, self._last_sample[detector]):
                clips += self._close_run(track_id, detector, "missed_detection")
                continue
            final = windows.finish()
            if final is not None:
                items, padded = final
                clips.append(Clip(self.stream_id, track_id, detector, items, final=True, padded=padded))
        self._tracks.pop(track_id, None)
        return clips

    def take_discarded(self) -> dict[tuple[str, str], int]:
        """Runs discarded for a gap since the last call, by ``(detector, reason)``; resets."""
        out, self._discarded = self._discarded, {}
        return out

    @property
    def track_ids(self) -> list[int]:
        return sorted(self._tracks)
