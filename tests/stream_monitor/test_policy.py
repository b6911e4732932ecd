"""Alert policy: fusion, hysteresis, incident lifecycle, cooldown, schema."""

from __future__ import annotations

import itertools

import pytest

from stream_monitor.alerts.policy import AlertPolicy, PolicyConfig, fuse
from stream_monitor.types import Score

SCHEMA_KEYS = {"alert_id", "event", "seq", "stream_id", "track_id", "score", "threshold", "detectors", "window",
               "bbox", "calibrated", "models", "emitted_at", "worker", "evidence", "lease_epoch"}


def _score(p: float, t: float, det: str = "sta", track: int = 1) -> Score:
    return Score("cam1", track, det, p, start_pts=t - 1.0, end_pts=t, frames=8, last_arrival=5000.0 + t,
                 bbox=(10.0, 20.0, 110.0, 140.0))


def _policy(**kw: object) -> AlertPolicy:
    ids = (f"id{i}" for i in itertools.count())
    cfg = PolicyConfig(**{"threshold": 0.5, "start_after": 2, "end_after": 2, "cooldown_s": 5.0,
                          "models": {"sta": "sta_clip_vitl14@abcd1234"}, "worker": "host:1", **kw})  # type: ignore[arg-type]
    return AlertPolicy(cfg, clock=lambda: 0.0, new_id=lambda: next(ids))


def _run(policy: AlertPolicy, probs: list[float], t0: float = 0.0) -> list[tuple[str, str, int]]:
    out = []
    for i, p in enumerate(probs):
        for ev in policy.on_score(_score(p, t0 + i)):
            out.append((ev.payload["alert_id"], ev.event, ev.payload["seq"]))
    return out


def test_fusion_rules() -> None:
    probs = {"sta": 0.9, "caddm": 0.3, "styleflow": 0.6}
    assert fuse(probs, "mean", {}) == pytest.approx(0.6)
    assert fuse(probs, "max", {}) == 0.9
    assert fuse(probs, "weighted", {"sta": 2.0, "caddm": 0.0}) == pytest.approx((1.8 + 0.6) / 3)
    with pytest.raises(ValueError):
        fuse({}, "mean", {})


def test_hysteresis_start_update_end() -> None:
    events = _run(_policy(), [0.9, 0.1, 0.9, 0.9, 0.8, 0.2, 0.9, 0.1, 0.1, 0.9])
    assert events == [("id0", "start", 0), ("id0", "update", 1), ("id0", "update", 2), ("id0", "update", 3),
                      ("id0", "update", 4), ("id0", "end", 5)]


def test_cooldown_blocks_a_quick_restart() -> None:
    policy = _policy()
    first = _run(policy, [0.9, 0.9, 0.1, 0.1])          # ends at t=3
    again = _run(policy, [0.9, 0.9, 0.9], t0=4.0)      # within 5 s of the end: nothing
    later = _run(policy, [0.9, 0.9], t0=9.0)           # cooldown over
    assert [e[1] for e in first] == ["start", "update", "end"]
    assert again == []
    # The scores during the cooldown still count towards the next start.
    assert later == [("id1", "start", 0), ("id1", "update", 1)]


def test_track_end_closes_the_incident_and_tracks_are_separate() -> None:
    policy = _policy(start_after=1)
    a = policy.on_score(_score(0.9, 1.0, track=1))
    b = policy.on_score(_score(0.2, 1.0, track=2))
    assert [e.event for e in a] == ["start"] and b == []
    assert policy.active_incidents() == 1
    ended = policy.on_track_end("cam1", 1)
    assert [e.event for e in ended] == ["end"] and ended[0].payload["alert_id"] == a[0].payload["alert_id"]
    assert ended[0].payload["reason"] == "track_ended" and set(ended[0].payload) == SCHEMA_KEYS | {"reason"}
    assert policy.on_track_end("cam1", 2) == [] and policy.active_incidents() == 0


def test_end_events_say_why() -> None:
    policy = _policy(start_after=1, end_after=1)
    policy.on_score(_score(0.9, 1.0, track=1))
    (low,) = policy.on_score(_score(0.1, 2.0, track=1))
    assert low.event == "end" and low.payload["reason"] == "below_threshold"
    policy.on_score(_score(0.9, 9.0, track=2))
    (gone,) = policy.on_track_end("cam1", 2, reason="stream_removed")
    assert gone.payload["reason"] == "stream_removed"


def test_end_stream_ends_every_open_incident_of_that_stream_only() -> None:
    policy = _policy(start_after=1)
    opened = [policy.on_score(_score(0.9, 1.0, track=t))[0] for t in (3, 1)]
    policy.on_score(_score(0.2, 1.0, track=2))  # scored, no incident
    other = policy.on_score(Score("cam2", 1, "sta", 0.9, 0.0, 1.0, 8, 0.0, (0.0, 0.0, 1.0, 1.0)))
    ended = policy.end_stream("cam1", "shutdown")
    assert [(e.event, e.payload["track_id"], e.payload["reason"]) for e in ended] == \
        [("end", 1, "shutdown"), ("end", 3, "shutdown")]
    assert {e.payload["alert_id"] for e in ended} == {e.payload["alert_id"] for e in opened}
    assert policy.active_incidents() == 1 and policy.end_stream("cam1", "shutdown") == []
    assert [e.payload["alert_id"] for e in policy.end_stream("cam2", "shutdown")] == [other[0].payload["alert_id"]]


def test_threshold_zero_always_alerts() -> None:
    events = _run(_policy(threshold=0.0, start_after=1), [0.0, 0.0])
    assert [e[1] for e in events] == ["start", "update"]


def test_payload_schema() -> None:
    policy = _policy(start_after=1)  # no calibration file: "calibrated": false
    policy.on_score(_score(0.4, 1.0, det="caddm"))
    (ev,) = policy.on_score(_score(0.9, 2.0, det="sta"))
    p = ev.payload
    assert set(p) == SCHEMA_KEYS
    assert p["evidence"] is None  # the pipeline fills it in (stream_monitor.alerts.evidence)
    assert p["event"] == "start" and p["seq"] == 0 and p["stream_id"] == "cam1" and p["track_id"] == 1
    assert p["score"] == pytest.approx(0.65) and p["threshold"] == 0.5
    assert p["detectors"] == {"caddm": 0.4, "sta": 0.9}
    assert p["window"] == {"start_pts": 1.0, "end_pts": 2.0, "frames": 8}
    assert p["bbox"] == [10.0, 20.0, 110.0, 140.0] and p["calibrated"] is False
    assert p["models"] == {"sta": "sta_clip_vitl14@abcd1234"}
    assert p["emitted_at"].startswith("1970-01-01T00:00:00") and p["worker"] == "host:1"
    assert p["lease_epoch"] is None  # the pipeline sets it for a stream leased in a fleet
    assert ev.last_arrival == 5002.0


def test_end_events_say_why_by_default() -> None:
    policy = _policy(start_after=1, end_after=1)
    (low,) = [e for e in (policy.on_score(_score(0.9, 1.0)) + policy.on_score(_score(0.1, 2.0))) if e.event == "end"]
    assert low.payload["reason"] == "below_threshold" and set(low.payload) == SCHEMA_KEYS | {"reason"}
    policy.on_score(_score(0.9, 9.0, track=2))
    (gone,) = policy.on_track_end("cam1", 2)
    assert gone.event == "end" and gone.payload["reason"] == "track_ended"
    assert all("reason" not in e.payload for e in policy.on_score(_score(0.9, 20.0, track=3)))


def test_bad_config() -> None:
    with pytest.raises(ValueError):
        PolicyConfig(start_after=0)
    with pytest.raises(ValueError):
        PolicyConfig(weights={"sta": -1.0})


def _at(p: float, t: float, track: int, bbox: tuple[float, float, float, float]) -> Score:
    return Score("cam1", track, "sta", p, start_pts=t - 0.5, end_pts=t, frames=8, last_arrival=t, bbox=bbox)


def test_a_face_re_tracked_under_new_ids_respects_the_cooldown() -> None:
    """The tracker loses the same face every 1.5 s and finds it again as a new track: one
    incident per cooldown, not one per track (issue 14, part 6)."""
    policy = _policy(start_after=1, end_after=5, cooldown_s=10.0)
    face = (100.0, 100.0, 200.0, 220.0)
    starts = []
    t = 0.0
    for track in range(1, 11):  # 15 s of stream time, a new track id every 1.5 s
        for _ in range(3):
            t += 0.5
            moved = (face[0] + track, face[1], face[2] + track, face[3])  # drifting a little
            starts += [e for e in policy.on_score(_at(0.95, t, track, moved)) if e.event == "start"]
        policy.on_track_end("cam1", track)
    # The first incident ends with its track at 1.5 s; the next may start 10 s later.
    assert [e.payload["window"]["end_pts"] for e in starts] == [0.5, 11.5]
    # A face elsewhere in the picture is not held back by it.
    other = policy.on_score(_at(0.95, t + 0.5, 99, (400.0, 100.0, 500.0, 220.0)))
    assert [e.event for e in other] == ["start"]
    # A new session (stream time restarts) is not held back by the last one's cooldowns.
    assert [e.event for e in policy.on_score(_at(0.95, 0.5, 100, face))] == ["start"]


def test_cooldown_zones_stay_bounded() -> None:
    policy = _policy(start_after=1, end_after=1, cooldown_s=2.0)
    for track in range(500):
        t = float(track)
        box = (float(track * 300 % 3000), 0.0, float(track * 300 % 3000 + 100), 100.0)
        policy.on_score(_at(0.95, t, track, box))
        policy.on_track_end("cam1", track)
    assert len(policy._zones["cam1"]) <= 3
    policy.forget_stream("cam1")
    assert "cam1" not in policy._zones and policy.active_incidents() == 0


def test_per_stream_threshold_overrides_the_global_one() -> None:
    policy = _policy(start_after=1)  # global threshold 0.5
    policy.set_threshold("cam1", 0.2)
    assert policy.threshold_for("cam1") == 0.2 and policy.threshold_for("cam2") is None
    (ev,) = policy.on_score(_score(0.3, 1.0))  # cam1: 0.3 >= its own 0.2
    assert ev.event == "start" and ev.payload["threshold"] == 0.2
    other = Score("cam2", 1, "sta", 0.3, start_pts=0.0, end_pts=1.0, frames=8, last_arrival=5001.0,
                  bbox=(10.0, 20.0, 110.0, 140.0))
    assert policy.on_score(other) == []  # cam2: 0.3 < the global 0.5
    with pytest.raises(ValueError, match="threshold"):
        policy.set_threshold("cam1", 1.5)
    policy.forget_stream("cam1")  # a stream that goes takes its override with it
    assert policy.threshold_for("cam1") is None
