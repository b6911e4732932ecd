"""Checks shared by the end-to-end tests: the alert event schema and Prometheus text samples."""

from __future__ import annotations

from typing import Any

SCHEMA: dict[str, Any] = {"alert_id": str, "event": str, "seq": int, "stream_id": str, "track_id": int, "score": float,
          "threshold": float, "detectors": dict, "window": dict, "bbox": list, "calibrated": bool, "models": dict,
          "emitted_at": str, "worker": str, "evidence": (dict, type(None)), "lease_epoch": (int, type(None))}
# Why an incident ended: on ``end`` events only (stream_monitor.alerts.policy.END_REASONS, and the
# fleet's owner_lost).
END_REASONS = ("below_threshold", "track_ended", "stream_ended", "stream_removed", "shutdown", "lease_lost",
               "owner_lost")
# Added to every event when a calibration file (detectors.calibration) is applied.
CALIBRATED = {"fpr": float, "raw": dict}


def check_schema(alert: dict[str, Any], calibrated: bool = False, fenced: bool = False) -> None:
    """The alert event schema of random-weight small detectors; ``calibrated``: with a
    calibration file fitted for them (``fpr`` and ``raw`` added, ``calibrated`` true);
    ``fenced``: of a stream leased in a fleet (``lease_epoch`` a positive int, else null)."""
    schema: dict[str, Any] = {**SCHEMA, **CALIBRATED} if calibrated else dict(SCHEMA)
    if alert.get("event") == "end":
        schema["reason"] = str
    assert set(alert) == set(schema), sorted(set(alert) ^ set(schema))
    if fenced:
        assert isinstance(alert["lease_epoch"], int) and alert["lease_epoch"] >= 1, alert["lease_epoch"]
    else:
        assert alert["lease_epoch"] is None, alert["lease_epoch"]
    assert alert["event"] != "end" or alert["reason"] in END_REASONS, alert.get("reason")
    for key, kind in schema.items():
        value = alert[key]
        assert isinstance(value, kind) or (kind is float and isinstance(value, int)), (key, value)
    assert alert["event"] in ("start", "update", "end")
    evidence = alert["evidence"]  # null, or the API paths of a start or end event's two JPEGs
    assert evidence is None or (alert["event"] in ("start", "end") and set(evidence) == {"frame", "faces"}
                                and all(v.startswith("/evidence/") and v.endswith(".jpg") for v in evidence.values())), evidence
    assert set(alert["window"]) == {"start_pts", "end_pts", "frames"} and alert["window"]["frames"] >= 1
    assert len(alert["bbox"]) == 4 and alert["calibrated"] is calibrated
    assert alert["detectors"] and all(0.0 <= p <= 1.0 for p in alert["detectors"].values())
    if calibrated:
        assert set(alert["raw"]) == set(alert["detectors"]) and all(0.0 <= p <= 1.0 for p in alert["raw"].values())
        assert 0.0 < alert["fpr"] < 1.0
    assert all(v.endswith("@random") for v in alert["models"].values()) and set(alert["models"]) <= {"caddm", "sta"}


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        base = series.split("{", 1)[0]
        if base == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total
