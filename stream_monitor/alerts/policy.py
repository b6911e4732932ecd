"""Alert policy (pure): fusion of detector scores, per-track hysteresis, incident lifecycle.

For each (stream, track) the policy keeps the latest fake probability of every detector
that has scored the track. Each new window score updates the fused score:

* ``mean`` — the mean of the latest probabilities,
* ``max`` — the largest,
* ``weighted`` — ``Σ wᵢ·pᵢ / Σ wᵢ`` over the detectors present (missing weights count 1).

Hysteresis: an incident **starts** after ``start_after`` consecutive scores at or above
the threshold, emits an **update** for every later score while it lasts, and **ends**
after ``end_after`` consecutive scores below it or when the track ends. After an end, the
same face cannot start a new incident for ``cooldown_s`` seconds of stream time: not the same
track, and not a new track of the same stream whose box overlaps where an incident of a track
that has since ended was last seen (IoU ≥ :data:`SAME_FACE_IOU` or centres within half a box
side: the tracker lost the face for a moment and found it again under a new id). Such cooldown
zones are kept per stream only while they can still cool something.
One incident keeps one ``alert_id``; ``seq`` counts its events from 0. An ``end`` event says
why in ``reason``: ``below_threshold`` (hysteresis), ``track_ended`` (the face left or the
connection restarted), or what stopped the stream: ``stream_ended`` (its finite source ran
out), ``stream_removed`` (deleted), ``shutdown`` (the worker stopped), ``lease_lost`` (the
fleet took the stream away); and — written by the fleet, not here — ``owner_lost`` (a new
owner ends the incidents its stale predecessor left open). See :data:`END_REASONS`.

Calibration (``calibration``, a :class:`~stream_monitor.calibration.Calibration` from
``detectors.calibration``): each detector's raw probability is mapped to its calibrated
probability, the detectors present are fused by the calibration's own model for exactly that
combination (a lone detector: its calibrated probability), and the score is compared with
that model's threshold, set at the calibration's target false-positive rate; ``threshold``,
``fusion`` and ``weights`` are then unused. Events carry the calibrated probabilities in
``detectors``, the raw ones in ``raw``, and the target in ``fpr``.

Per-stream threshold (``streams[].threshold``, ``POST /streams``): :meth:`AlertPolicy.set_threshold`
replaces ``threshold`` (and, with a calibration, the calibrated threshold) for one stream's
tracks; :meth:`AlertPolicy.threshold_for` says which applies.

Times: ``cooldown_s`` is measured in stream time (window end timestamps), so the policy is
deterministic for a given input; ``emitted_at`` comes from the injected wall clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from ..calibration import Assessment, Calibration
from ..types import BBox, Score

if TYPE_CHECKING:
    from ..config import AlertsConfig

Fusion = Literal["mean", "max", "weighted"]
SAME_FACE_IOU = 0.3
EndReason = Literal["below_threshold", "track_ended", "stream_ended", "stream_removed", "shutdown", "lease_lost"]
END_REASONS: tuple[EndReason, ...] = ("below_threshold", "track_ended", "stream_ended", "stream_removed", "shutdown",
                                      "lease_lost")


@dataclass(frozen=True)
class PolicyConfig:
    threshold: float = 0.7
    fusion: Fusion = "mean"
    weights: Mapping[str, float] = field(default_factory=dict)
    start_after: int = 2
    end_after: int = 3
    cooldown_s: float = 10.0
    models: Mapping[str, str] = field(default_factory=dict)
    worker: str = ""
    calibration: Calibration | None = None

    @classmethod
    def from_config(cls, alerts: "AlertsConfig", models: Mapping[str, str], worker: str = "",
                    calibration: Calibration | None = None) -> "PolicyConfig":
        """The policy of the ``alerts`` section for these models: what ``run`` and ``predict``
        both decide alerts by."""
        return cls(threshold=alerts.threshold, fusion=alerts.fusion, weights=alerts.weights,
                   start_after=alerts.start_after, end_after=alerts.end_after, cooldown_s=alerts.cooldown_s,
                   models=models, worker=worker, calibration=calibration)

    def __post_init__(self) -> None:
        if self.start_after < 1 or self.end_after < 1:
            raise ValueError("start_after and end_after must be >= 1")
        if self.cooldown_s < 0:
            raise ValueError("cooldown_s must be >= 0")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("fusion weights must be >= 0")


@dataclass(frozen=True)
class AlertEvent:
    """One alert event: the JSON ``payload`` (DESIGN.md's schema) plus routing data.

    ``last_arrival`` is the wall-clock arrival of the newest frame in the window that
    caused the event (for the alert-latency histogram); it is not part of the payload.
    """

    payload: dict[str, Any]
    last_arrival: float

    @property
    def stream_id(self) -> str:
        return str(self.payload["stream_id"])

    @property
    def event(self) -> str:
        return str(self.payload["event"])


def fuse(probabilities: Mapping[str, float], fusion: Fusion, weights: Mapping[str, float]) -> float:
    """Fused fake probability of the detectors present in ``probabilities``."""
    if not probabilities:
        raise ValueError("nothing to fuse")
    if fusion == "max":
        return max(probabilities.values())
    if fusion == "mean":
        return sum(probabilities.values()) / len(probabilities)
    total = sum(weights.get(d, 1.0) for d in probabilities)
    if total <= 0:
        return sum(probabilities.values()) / len(probabilities)
    return sum(weights.get(d, 1.0) * p for d, p in probabilities.items()) / total


@dataclass
class _TrackState:
    latest: dict[str, float] = field(default_factory=dict)
    over: int = 0
    under: int = 0
    alert_id: str | None = None
    seq: int = 0
    last_end_pts: float | None = None
    last: Score | None = None


@dataclass(frozen=True)
class _Zone:
    """Where an ended track's incident ended, and when (stream time)."""

    bbox: BBox
    end_pts: float


def same_face(a: BBox, b: BBox) -> bool:
    """Whether two boxes in one stream are, plausibly, the same face a moment apart."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if union > 0 and inter / union >= SAME_FACE_IOU:
        return True
    side = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1])
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    return (dx * dx + dy * dy) ** 0.5 <= side / 2


def iso_time(ts: float) -> str:
    """``emitted_at``'s form: ISO 8601 in UTC with milliseconds."""
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat(timespec="milliseconds")


class AlertPolicy:
    """Turns window scores into alert events. Not thread-safe: use it from one thread."""

    def __init__(self, config: PolicyConfig, clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self.config = config
        self._clock = clock
        self._new_id = new_id
        self._tracks: dict[tuple[str, int], _TrackState] = {}
        self._zones: dict[str, list[_Zone]] = {}  # per stream: cooldowns of tracks that ended
        self._thresholds: dict[str, float] = {}  # per-stream overrides of the threshold

    def set_threshold(self, stream_id: str, threshold: float | None) -> None:
        """Use ``threshold`` for ``stream_id``'s tracks from now on (None: the global one again)."""
        if threshold is None:
            self._thresholds.pop(stream_id, None)
        elif not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], not {threshold}")
        else:
            self._thresholds[stream_id] = threshold

    def threshold_for(self, stream_id: str) -> float | None:
        """The stream's own threshold, or None when the global (or calibrated) one applies."""
        return self._thresholds.get(stream_id)

    def assess(self, probabilities: Mapping[str, float], stream_id: str | None = None) -> Assessment:
        """The per-detector probabilities shown in events, the fused score and its threshold
        for a track's latest raw probabilities (calibrated when a calibration is set), with
        ``stream_id``'s own threshold when it has one."""
        cfg = self.config
        if cfg.calibration is not None:
            assessment = cfg.calibration.assess(probabilities)
        else:
            assessment = Assessment(dict(probabilities), fuse(probabilities, cfg.fusion, cfg.weights), cfg.threshold)
        own = self._thresholds.get(stream_id) if stream_id is not None else None
        return assessment if own is None else dataclasses.replace(assessment, threshold=own)

    def active_incidents(self) -> int:
        return sum(1 for s in self._tracks.values() if s.alert_id is not None)

    def on_score(self, score: Score) -> list[AlertEvent]:
        """Feed one window score; returns the events it causes (zero or one)."""
        cfg = self.config
        state = self._tracks.setdefault((score.stream_id, score.track_id), _TrackState())
        state.latest[score.detector] = score.probability
        state.last = score
        fused = self.assess(state.latest, score.stream_id)
        over = fused.score >= fused.threshold
        if state.alert_id is None:
            state.over = state.over + 1 if over else 0
            cooling = self._cooling(state.last_end_pts, score.end_pts) or any(
                self._cooling(z.end_pts, score.end_pts) and same_face(z.bbox, score.bbox)
                for z in self._zones.get(score.stream_id, ()))
            if state.over >= cfg.start_after and not cooling:
                state.alert_id, state.seq, state.under = self._new_id(), 0, 0
                return [self._event(state, "start", fused)]
            return []
        state.under = 0 if over else state.under + 1
        if state.under >= cfg.end_after:
            return [self._end(state, fused, "below_threshold")]
        return [self._event(state, "update", fused)]

    def on_track_end(self, stream_id: str, track_id: int, reason: EndReason = "track_ended") -> list[AlertEvent]:
        """The track is gone: end its open incident, if any (with ``reason``), and forget it."""
        state = self._tracks.pop((stream_id, track_id), None)
        if state is None:
            return []
        events = [] if state.alert_id is None else [self._end(state, self.assess(state.latest, stream_id), reason)]
        if state.last_end_pts is not None and state.last is not None:
            zones = [z for z in self._zones.get(stream_id, ()) if self._cooling(z.end_pts, state.last.end_pts)]
            self._zones[stream_id] = zones + [_Zone(state.last.bbox, state.last_end_pts)]
        return events

    def end_stream(self, stream_id: str, reason: EndReason) -> list[AlertEvent]:
        """The stream stops now: the ``end`` events of every incident of it still open (in track
        order), and the stream is forgotten. What a stop calls last, so no ``start`` is left
        without its ``end`` even when the tracks' own ends could not be waited for."""
        events = []
        for key in sorted(k for k in self._tracks if k[0] == stream_id):
            state = self._tracks[key]
            if state.alert_id is not None:
                events.append(self._end(state, self.assess(state.latest, stream_id), reason))
        self.forget_stream(stream_id)
        return events

    def forget_stream(self, stream_id: str) -> None:
        """The stream is gone: drop its cooldown zones (its tracks were ended one by one)."""
        self._zones.pop(stream_id, None)
        self._thresholds.pop(stream_id, None)
        for key in [k for k in self._tracks if k[0] == stream_id]:
            del self._tracks[key]

    def _cooling(self, ended_pts: float | None, now_pts: float) -> bool:
        # Stream time restarts with each connection: a time before the end is a new session's,
        # and a new session's faces are not held back by the last one's.
        return ended_pts is not None and 0.0 <= now_pts - ended_pts < self.config.cooldown_s

    def _end(self, state: _TrackState, fused: Assessment, reason: EndReason) -> AlertEvent:
        event = self._event(state, "end", fused)
        event.payload["reason"] = reason
        state.alert_id, state.over, state.under = None, 0, 0
        state.last_end_pts = state.last.end_pts if state.last is not None else None
        return event

    def _event(self, state: _TrackState, kind: str, fused: Assessment) -> AlertEvent:
        assert state.alert_id is not None and state.last is not None
        cfg, s = self.config, state.last
        bbox: BBox = s.bbox
        payload = {
            "alert_id": state.alert_id,
            "event": kind,
            "seq": state.seq,
            "stream_id": s.stream_id,
            "track_id": s.track_id,
            "score": round(float(fused.score), 6),
            "threshold": fused.threshold,
            "detectors": {d: round(float(p), 6) for d, p in sorted(fused.detectors.items())},
            "window": {"start_pts": round(s.start_pts, 3), "end_pts": round(s.end_pts, 3), "frames": s.frames},
            "bbox": [round(float(v), 1) for v in bbox],
            "calibrated": cfg.calibration is not None,
            "models": {d: cfg.models[d] for d in sorted(state.latest) if d in cfg.models},
            "emitted_at": iso_time(self._clock()),
            "worker": cfg.worker,
            # Filled in by the pipeline for start and end events when alerts.evidence_dir is set
            # (stream_monitor.alerts.evidence); null otherwise.
            "evidence": None,
            # Set by the stream's pipeline when the stream holds a fleet lease (fleet.py).
            "lease_epoch": None,
        }
        if cfg.calibration is not None:
            payload["fpr"] = cfg.calibration.fpr_target
            payload["raw"] = {d: round(float(p), 6) for d, p in sorted(state.latest.items())}
        state.seq += 1
        return AlertEvent(payload, s.last_arrival)
