"""Checks shared by the end-to-end tests: the alert event schema and Prometheus text samples."""

from __future__ import annotations

from typing import Any

SCHEMA = {"alert_id": str, "event": str, "seq": int, "stream_id": str, "track_id": int, "score": float,
          "threshold": float, "detectors": dict, "window": dict, "bbox": list, "calibrated": bool, "models": dict,
          "emitted_at": str, "worker": str}


def check_schema(alert: dict[str, Any]) -> None:
    assert set(alert) == set(SCHEMA), sorted(set(alert) ^ set(SCHEMA))
    for key, kind in SCHEMA.items():
        value = alert[key]
        assert isinstance(value, kind) or (kind is float and isinstance(value, int)), (key, value)
    assert alert["event"] in ("start", "update", "end")
    assert set(alert["window"]) == {"start_pts", "end_pts", "frames"} and alert["window"]["frames"] >= 1
    assert len(alert["bbox"]) == 4 and alert["calibrated"] is False
    assert alert["detectors"] and all(0.0 <= p <= 1.0 for p in alert["detectors"].values())
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
