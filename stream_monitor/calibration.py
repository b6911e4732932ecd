"""Calibration of detector probabilities and alert thresholds (pure: fit, apply, file I/O).

Input: the scores of ``stream-monitor eval`` (``scores.jsonl``), one JSON object per line per
(video, detector)::

    {"video": "<path>", "label": 0|1, "group": "<method>"|null, "detector": "caddm"|"sta"|"styleflow"|"fused",
     "video_score": <probability>|null, "frame_scores": [<probability>, ...]}

``label`` 1 is fake. ``frame_scores`` are the detector's per-frame (CADDM) or per-window (clip
detectors) probabilities in stream order; ``"fused"`` rows are ignored (the fusion is fitted here).

Fitting (:func:`fit_calibration`), per detector, at a **level**:

* ``frame`` (the default): every frame/window probability is a sample labelled with its
  video's label. Live alerts are per window, so this is the level they correspond to.
* ``video``: one sample per video (its ``video_score``): the level of ``predict``.

1. **Calibration** of the raw probability ``p`` into a calibrated probability: ``platt``
   (``σ(slope·logit(p) + intercept)``, a logistic regression on the logit with Platt's
   smoothed targets) or ``isotonic`` (a monotone step fit, stored as its breakpoints and
   applied by linear interpolation between them, clipped at the ends).
2. **Threshold** on the calibrated probability at the target false-positive rate: the smallest
   threshold whose FPR over the real (label 0) samples is at most the target (alerts fire at
   ``score >= threshold``). Where real samples score 1.0 too often no threshold in [0, 1] meets
   the target: the threshold is then 1.0 and the achieved FPR says so.
3. **Fusion** for every combination of two or more detectors: a logistic regression on the
   logits of their calibrated probabilities, ``σ(bias + Σ wᵢ·logit(cᵢ))``, fitted on the
   samples where all of them scored, with its own threshold at the target FPR. Live, the
   policy uses the model of exactly the detectors that have scored the track so far (a track
   is scored by CADDM within a second, by StA after ~4 s, by StyleFlow after 32 frames), and
   a lone detector's own calibrated probability and threshold. At ``frame`` level the
   detectors' samples of a video are paired by relative position in the video (each
   detector's score at the same fraction of its sequence), as the live policy pairs the
   latest score of each.

The result is a versioned JSON file (:func:`save_calibration`, :func:`load_calibration`,
validated on load, errors name the file and the field). It records the model ids it was
fitted for (``name@sha256 prefix``, ``@random`` for seeded random weights); the engine refuses
to start when they are not the running models' (:meth:`Calibration.check_models`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence, cast

import numpy as np

from .config import DETECTOR_NAMES
from .errors import WeightsError

SCHEMA = "stream-monitor/calibration"
VERSION = 1
Method = Literal["platt", "isotonic"]
Level = Literal["frame", "video"]
METHODS: tuple[Method, ...] = ("platt", "isotonic")
LEVELS: tuple[Level, ...] = ("frame", "video")
# Probabilities are clipped this far from 0 and 1 before a logit (|logit| <= 13.8).
_EPS = 1e-6
# Fusion regularisation (sklearn's C): detectors' logits are correlated; mild L2 keeps weights finite.
_FUSION_C = 1.0
# Platt's fit is on smoothed targets (never separable), so almost no regularisation is needed.
_PLATT_C = 1e4


class CalibrationError(WeightsError):
    """A calibration file cannot be used: unreadable, invalid, or fitted for other models.

    A :class:`WeightsError` because it is the same kind of problem (the model data on disk
    does not fit this run) and is handled the same way: the service does not start (exit 2).
    """


class ScoresError(ValueError):
    """A scores file cannot be fitted (unreadable, malformed, or without both classes); the
    message names the file and, for a bad line, its number."""


@dataclass(frozen=True)
class ScoreRow:
    """One (video, detector) line of a scores file."""

    video: str
    label: int
    group: str | None
    detector: str
    video_score: float | None
    frame_scores: tuple[float, ...]


def _probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0.0 <= value <= 1.0


def _row(obj: Any) -> ScoreRow:
    """Validate one decoded line (raises ``ValueError`` saying what is wrong)."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("video", "label", "detector", "frame_scores") if k not in obj]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    video, label, detector, group = obj["video"], obj["label"], obj["detector"], obj.get("group")
    if not isinstance(video, str) or not video:
        raise ValueError("video must be a non-empty string")
    if label not in (0, 1) or isinstance(label, bool):
        raise ValueError(f"label must be 0 (real) or 1 (fake), not {label!r}")
    if detector not in (*DETECTOR_NAMES, "fused"):
        raise ValueError(f"unknown detector {detector!r} (expected one of {', '.join(DETECTOR_NAMES)}, fused)")
    if group is not None and not isinstance(group, str):
        raise ValueError("group must be a string or null")
    score = obj.get("video_score")
    if score is not None and not _probability(score):
        raise ValueError(f"video_score must be a probability in [0, 1] or null, not {score!r}")
    frames = obj["frame_scores"]
    if not isinstance(frames, list) or not all(_probability(f) for f in frames):
        raise ValueError("frame_scores must be a list of probabilities in [0, 1]")
    return ScoreRow(video, int(label), group, detector, None if score is None else float(score),
                    tuple(float(f) for f in frames))


def read_scores(path: str | os.PathLike[str]) -> tuple[list[ScoreRow], str]:
    """The rows of a scores file and its sha256; raises :class:`ScoresError`.

    Blank lines are skipped; every other line must be a valid row. A (video, detector) pair
    may appear once, and a video has one label.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ScoresError(f"{path}: cannot read: {exc.strerror or exc}") from None
    rows: list[ScoreRow] = []
    seen: set[tuple[str, str]] = set()
    labels: dict[str, int] = {}
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = _row(json.loads(line))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise ScoresError(f"{path}:{number}: {exc}") from None
        if (row.video, row.detector) in seen:
            raise ScoresError(f"{path}:{number}: a second line for video {row.video!r}, detector {row.detector}")
        if labels.setdefault(row.video, row.label) != row.label:
            raise ScoresError(f"{path}:{number}: video {row.video!r} has both labels")
        seen.add((row.video, row.detector))
        rows.append(row)
    if not rows:
        raise ScoresError(f"{path}: no scores (expected JSON lines from `stream-monitor eval`)")
    return rows, hashlib.sha256(raw).hexdigest()


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))))  # stable for any z


def threshold_at_fpr(scores: np.ndarray, labels: np.ndarray, target: float) -> tuple[float, float, float]:
    """``(threshold, fpr, tpr)``: the smallest threshold in [0, 1] whose false-positive rate
    (real samples with ``score >= threshold``) is at most ``target``, and its rates on the data.

    The threshold lies just above the highest real score that must be excluded, rounded up to
    6 decimals when no sample lies in between (same rates, a readable number). If real samples
    score 1.0 too often the target is out of reach: 1.0 and the FPR achieved there.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    real, fake = s[y == 0], s[y == 1]
    if real.size == 0 or fake.size == 0:
        raise ValueError("need real and fake samples")
    allowed = int(math.floor(target * real.size + 1e-9))  # real samples that may be at/over the threshold
    if allowed >= real.size:
        threshold = 0.0
    else:
        excluded = float(np.sort(real)[::-1][allowed])  # the highest real score that must fall below
        threshold = _just_above(excluded, s)
    return threshold, float(np.mean(real >= threshold)), float(np.mean(fake >= threshold))


def _just_above(v: float, values: np.ndarray) -> float:
    if v >= 1.0:
        return 1.0
    rounded = math.floor(v * 1e6 + 1.0) / 1e6
    if v < rounded <= 1.0 and not np.any((values > v) & (values < rounded)):
        return rounded
    return float(np.nextafter(v, 2.0))


@dataclass(frozen=True)
class DetectorCalibration:
    """One detector's map from raw to calibrated probability and its threshold.

    ``params``: platt ``{"slope", "intercept"}``; isotonic ``{"x": [...], "y": [...]}``
    (breakpoints, ``x`` strictly increasing raw probabilities, ``y`` non-decreasing).
    ``fpr``/``tpr``: the rates at ``threshold`` on the fit data.
    """

    method: Method
    params: Mapping[str, Any]
    threshold: float
    fpr: float
    tpr: float
    n_real: int
    n_fake: int

    def apply_array(self, p: np.ndarray) -> np.ndarray:
        if self.method == "platt":
            return _sigmoid(self.params["slope"] * _logit(p) + self.params["intercept"])
        return np.asarray(np.interp(np.asarray(p, dtype=np.float64), self.params["x"], self.params["y"]))

    def apply(self, p: float) -> float:
        """The calibrated probability of one raw probability."""
        return float(self.apply_array(np.asarray([p]))[0])

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params), "threshold": self.threshold, "fpr": self.fpr,
                "tpr": self.tpr, "n_real": self.n_real, "n_fake": self.n_fake}


@dataclass(frozen=True)
class FusionModel:
    """Fused probability of several detectors: ``σ(bias + Σ weights[d]·logit(calibrated[d]))``."""

    detectors: tuple[str, ...]
    weights: Mapping[str, float]
    bias: float
    threshold: float
    fpr: float
    tpr: float
    n_real: int
    n_fake: int

    def apply_array(self, calibrated: Mapping[str, np.ndarray]) -> np.ndarray:
        z = self.bias + sum(self.weights[d] * _logit(calibrated[d]) for d in self.detectors)
        return _sigmoid(np.asarray(z))

    def apply(self, calibrated: Mapping[str, float]) -> float:
        return float(self.apply_array({d: np.asarray([calibrated[d]]) for d in self.detectors})[0])

    def to_json(self) -> dict[str, Any]:
        return {"detectors": list(self.detectors), "weights": dict(self.weights), "bias": self.bias,
                "threshold": self.threshold, "fpr": self.fpr, "tpr": self.tpr, "n_real": self.n_real,
                "n_fake": self.n_fake}


@dataclass(frozen=True)
class Assessment:
    """What the alert policy needs of a track's latest raw probabilities: the calibrated
    probability of each detector, the fused score and the threshold it is compared with."""

    detectors: dict[str, float]
    score: float
    threshold: float


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: per-detector maps and thresholds, fusion models, and provenance."""

    created_at: str
    source: Mapping[str, Any]
    level: Level
    method: Method
    fpr_target: float
    models: Mapping[str, str]
    detectors: Mapping[str, DetectorCalibration]
    fused: Mapping[frozenset[str], FusionModel]
    path: str | None = None  # where it was loaded from (messages only; not written)

    def assess(self, raw: Mapping[str, float]) -> Assessment:
        """Calibrate each present detector's raw probability and fuse those present: a lone
        detector's calibrated probability and threshold, or the fusion model of exactly the
        detectors present. Raises ``KeyError`` for a detector this file does not calibrate."""
        if not raw:
            raise ValueError("nothing to assess")
        calibrated = {d: self.detectors[d].apply(p) for d, p in raw.items()}
        if len(calibrated) == 1:
            (detector, p), = calibrated.items()
            return Assessment(calibrated, p, self.detectors[detector].threshold)
        model = self.fused[frozenset(calibrated)]
        return Assessment(calibrated, model.apply(calibrated), model.threshold)

    def check_models(self, running: Mapping[str, str]) -> None:
        """Raise :class:`CalibrationError` unless the running detectors and their model ids
        are exactly those this calibration was fitted for."""
        if dict(running) == dict(self.models):
            return
        want = ", ".join(f"{d}={m}" for d, m in sorted(self.models.items()))
        have = ", ".join(f"{d}={m}" for d, m in sorted(running.items()))
        raise CalibrationError(f"{self.path or 'the calibration file'} was fitted for {want}, but this "
                               f"run has {have}: recalibrate (stream-monitor eval, then calibrate) with this "
                               f"configuration, or remove detectors.calibration")

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "created_at": self.created_at, "source": dict(self.source),
                "level": self.level, "method": self.method, "fpr_target": self.fpr_target,
                "models": dict(self.models),
                "detectors": {d: c.to_json() for d, c in sorted(self.detectors.items())},
                "fused": [m.to_json() for m in sorted(self.fused.values(), key=lambda m: (len(m.detectors),
                                                                                         m.detectors))]}


# ---- fitting ----------------------------------------------------------------------------


def _samples(rows: Iterable[ScoreRow], level: Level) -> tuple[np.ndarray, np.ndarray]:
    scores: list[float] = []
    labels: list[int] = []
    for r in rows:
        values: Sequence[float] = r.frame_scores if level == "frame" else \
            (() if r.video_score is None else (r.video_score,))
        scores.extend(values)
        labels.extend([r.label] * len(values))
    return np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def fit_platt(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Platt scaling on the logit: ``{"slope", "intercept"}`` of a logistic regression fitted
    to Platt's smoothed targets ((N₊+1)/(N₊+2) and 1/(N₋+2)), so separable data stay finite."""
    from sklearn.linear_model import LogisticRegression

    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    target = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    # A soft target t is the sample counted once as fake with weight t and once as real with 1 - t.
    z = _logit(p).reshape(-1, 1)
    x = np.concatenate([z, z])
    labels = np.concatenate([np.ones(len(z)), np.zeros(len(z))])
    weights = np.concatenate([target, 1.0 - target])
    model = LogisticRegression(C=_PLATT_C, max_iter=1000).fit(x, labels, sample_weight=weights)
    return {"slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Isotonic regression of the label on the raw probability: its breakpoints ``x``, ``y``."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)
    return {"x": [float(v) for v in model.X_thresholds_], "y": [float(v) for v in model.y_thresholds_]}


def _paired(rows: Sequence[ScoreRow], detectors: Sequence[str], level: Level
            ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Raw scores of ``detectors`` on the same samples: per video at ``video`` level; at
    ``frame`` level each video contributes ``max(len)`` samples, detector ``d`` giving its
    score at the same relative position (index ``j·len_d // max(len)``)."""
    by_video: dict[str, dict[str, ScoreRow]] = {}
    for r in rows:
        by_video.setdefault(r.video, {})[r.detector] = r
    columns: dict[str, list[float]] = {d: [] for d in detectors}
    labels: list[int] = []
    for video in sorted(by_video):
        have = by_video[video]
        if not all(d in have for d in detectors):
            continue
        if level == "video":
            if any(have[d].video_score is None for d in detectors):
                continue
            for d in detectors:
                columns[d].append(cast(float, have[d].video_score))
            labels.append(have[detectors[0]].label)
            continue
        lengths = {d: len(have[d].frame_scores) for d in detectors}
        if min(lengths.values()) == 0:
            continue
        n = max(lengths.values())
        for d in detectors:
            columns[d].extend(have[d].frame_scores[j * lengths[d] // n] for j in range(n))
        labels.extend([have[detectors[0]].label] * n)
    return {d: np.asarray(v, dtype=np.float64) for d, v in columns.items()}, np.asarray(labels, dtype=np.int64)


def _classes(y: np.ndarray, what: str) -> tuple[int, int]:
    n_real, n_fake = int(np.sum(y == 0)), int(np.sum(y == 1))
    if n_real == 0:
        raise ScoresError(f"{what}: no real (label 0) samples: a threshold at a false-positive rate needs real videos")
    if n_fake == 0:
        raise ScoresError(f"{what}: only real samples: calibration needs fake (label 1) videos too")
    return n_real, n_fake


def fit_calibration(rows: Sequence[ScoreRow], models: Mapping[str, str], *, fpr: float = 0.01,
                    method: Method = "platt", level: Level = "frame",
                    source: Mapping[str, Any] | None = None) -> Calibration:
    """Fit the detectors named in ``models`` (the model ids they were scored with) on ``rows``.

    Raises :class:`ScoresError` when a detector has no samples at ``level`` or lacks real or
    fake ones, or when a combination of detectors has no common samples of both classes.
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError("the target false-positive rate must be in (0, 1)")
    if method not in METHODS or level not in LEVELS:
        raise ValueError(f"method must be one of {METHODS}, level one of {LEVELS}")
    detectors = sorted(models)
    if not detectors:
        raise ScoresError("no detectors to calibrate")
    by_detector = {d: [r for r in rows if r.detector == d] for d in detectors}
    absent = [d for d in detectors if not by_detector[d]]
    if absent:
        raise ScoresError(f"no scores for {', '.join(absent)} (enabled in the configuration): calibrate with the "
                          f"configuration (or --detectors) the scores were made with")
    fitted: dict[str, DetectorCalibration] = {}
    for d in detectors:
        p, y = _samples(by_detector[d], level)
        n_real, n_fake = _classes(y, f"{d} at {level} level")
        params: dict[str, Any] = fit_platt(p, y) if method == "platt" else fit_isotonic(p, y)
        probe = DetectorCalibration(method, params, 0.0, 0.0, 0.0, n_real, n_fake)
        threshold, got_fpr, tpr = threshold_at_fpr(probe.apply_array(p), y, fpr)
        fitted[d] = DetectorCalibration(method, params, threshold, got_fpr, tpr, n_real, n_fake)
    fused: dict[frozenset[str], FusionModel] = {}
    for size in range(2, len(detectors) + 1):
        for combo in itertools.combinations(detectors, size):
            fused[frozenset(combo)] = _fit_fusion(rows, combo, fitted, level, fpr)
    src = dict(source or {})
    return Calibration(created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), source=src,
                       level=level, method=method, fpr_target=fpr, models=dict(models), detectors=fitted,
                       fused=fused)


def _fit_fusion(rows: Sequence[ScoreRow], combo: tuple[str, ...], fitted: Mapping[str, DetectorCalibration],
                level: Level, fpr: float) -> FusionModel:
    from sklearn.linear_model import LogisticRegression

    raw, y = _paired(rows, combo, level)
    n_real, n_fake = _classes(y, f"fusion of {'+'.join(combo)} (samples where all of them scored)")
    calibrated = {d: fitted[d].apply_array(raw[d]) for d in combo}
    x = np.stack([_logit(calibrated[d]) for d in combo], axis=1)
    model = LogisticRegression(C=_FUSION_C, max_iter=1000).fit(x, y)
    weights = {d: float(w) for d, w in zip(combo, model.coef_[0])}
    probe = FusionModel(combo, weights, float(model.intercept_[0]), 0.0, 0.0, 0.0, n_real, n_fake)
    threshold, got_fpr, tpr = threshold_at_fpr(probe.apply_array(calibrated), y, fpr)
    return FusionModel(combo, weights, probe.bias, threshold, got_fpr, tpr, n_real, n_fake)


# ---- the file ---------------------------------------------------------------------------


def save_calibration(calibration: Calibration, path: str | os.PathLike[str]) -> None:
    """Write the file atomically (a temporary file beside it, then a rename)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(calibration.to_json(), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read and validate a calibration file; raises :class:`CalibrationError` naming the
    file and the field at fault."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read the calibration file: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CalibrationError(f"{path}: not a JSON calibration file: {exc}") from None
    try:
        return _from_json(data, str(path))
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CalibrationError(f"{path}: invalid calibration file: {detail}") from None


def _number(value: Any, field: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ValueError(f"{field} must be a number in [{lo}, {hi}], not {value!r}")
    return float(value)


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive integer, not {value!r}")
    return value


def _rates(entry: Mapping[str, Any], field: str) -> tuple[float, float, float, int, int]:
    return (_number(entry["threshold"], f"{field}.threshold", 0.0, 1.0),
            _number(entry["fpr"], f"{field}.fpr", 0.0, 1.0), _number(entry["tpr"], f"{field}.tpr", 0.0, 1.0),
            _count(entry["n_real"], f"{field}.n_real"), _count(entry["n_fake"], f"{field}.n_fake"))


def _detector_from_json(entry: Mapping[str, Any], field: str) -> DetectorCalibration:
    method = entry["method"]
    params = entry["params"]
    if not isinstance(params, dict):
        raise ValueError(f"{field}.params must be an object")
    if method == "platt":
        clean: dict[str, Any] = {k: _number(params[k], f"{field}.params.{k}") for k in ("slope", "intercept")}
    elif method == "isotonic":
        x = [_number(v, f"{field}.params.x", 0.0, 1.0) for v in params["x"]]
        y = [_number(v, f"{field}.params.y", 0.0, 1.0) for v in params["y"]]
        if not x or len(x) != len(y):
            raise ValueError(f"{field}.params: x and y must be non-empty and of equal length")
        if any(b <= a for a, b in zip(x, x[1:])) or any(b < a for a, b in zip(y, y[1:])):
            raise ValueError(f"{field}.params: x must increase strictly and y must not decrease")
        clean = {"x": x, "y": y}
    else:
        raise ValueError(f"{field}.method must be platt or isotonic, not {method!r}")
    return DetectorCalibration(method, clean, *_rates(entry, field))


def _from_json(data: Any, where: str) -> Calibration:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"not a calibration file (schema must be {SCHEMA!r})")
    if data.get("version") != VERSION:
        raise ValueError(f"version {data.get('version')!r} is not supported (this build reads version {VERSION})")
    level, method = data["level"], data["method"]
    if level not in LEVELS or method not in METHODS:
        raise ValueError(f"level must be one of {LEVELS} and method one of {METHODS}")
    fpr_target = _number(data["fpr_target"], "fpr_target", 0.0, 1.0)
    models, detectors_json = data["models"], data["detectors"]
    if not isinstance(models, dict) or not models or not all(
            d in DETECTOR_NAMES and isinstance(m, str) and m for d, m in models.items()):
        raise ValueError(f"models must map detectors ({', '.join(DETECTOR_NAMES)}) to model ids")
    if not isinstance(detectors_json, dict) or set(detectors_json) != set(models):
        raise ValueError("detectors must calibrate exactly the detectors in models")
    detectors = {d: _detector_from_json(e, f"detectors.{d}") for d, e in detectors_json.items()}
    if not isinstance(data["fused"], list):
        raise ValueError("fused must be a list")
    fused: dict[frozenset[str], FusionModel] = {}
    for i, entry in enumerate(data["fused"]):
        field = f"fused[{i}]"
        combo = tuple(entry["detectors"])
        weights = entry["weights"]
        if len(combo) < 2 or not set(combo) <= set(models) or len(set(combo)) != len(combo) \
                or frozenset(combo) in fused:
            raise ValueError(f"{field}.detectors must be a new combination of two or more calibrated detectors")
        if not isinstance(weights, dict) or set(weights) != set(combo):
            raise ValueError(f"{field}.weights must have one weight per detector")
        fused[frozenset(combo)] = FusionModel(
            combo, {d: _number(w, f"{field}.weights.{d}") for d, w in weights.items()},
            _number(entry["bias"], f"{field}.bias"), *_rates(entry, field))
    needed = {frozenset(c) for n in range(2, len(models) + 1) for c in itertools.combinations(models, n)}
    if set(fused) != needed:
        lacking = sorted("+".join(sorted(c)) for c in needed - set(fused))
        raise ValueError(f"fused lacks the combinations {', '.join(lacking)}")
    source = data.get("source", {})
    if not isinstance(source, dict):
        raise ValueError("source must be an object")
    return Calibration(created_at=str(data.get("created_at", "")), source=source, level=level, method=method,
                       fpr_target=fpr_target, models=dict(models), detectors=detectors, fused=fused, path=where)
