"""Detection metrics, computed as DeepfakeBench and the authors compute them (DETECTORS.md §4).

Input rows are ``scores.jsonl`` lines: ``video``, ``label`` (0 real, 1 fake), ``group``,
``detector``, ``video_score`` and ``frame_scores`` (a CADDM frame's or a StA / StyleFlow
window's probability, or the live fused score after each window, in time order).

Per set of rows (all, or one group):

* **frame level** — every frame score with its video's label: ``auc`` =
  ``sklearn.metrics.roc_curve`` then ``auc``; ``eer`` = the FPR at ``nanargmin(|FNR − FPR|)``
  on that curve (nearest point, no interpolation); ``ap`` = ``average_precision_score``;
  ``acc`` = mean of ``(p > 0.5) == label`` (DeepfakeBench's strict ``>``).
* **video level** — one score per video by the detector's authors' aggregation
  (:data:`AGGREGATIONS`), then the same four numbers (``auc`` via ``roc_auc_score`` equals
  the curve's area).
* at the chosen ``threshold`` (the live alert threshold; the live rule ``p >= threshold``):
  ``acc_at_threshold``, ``tpr_at_threshold``, ``fpr_at_threshold``.

A number that is undefined (AUC, EER, AP with one class only; TPR without fakes; anything
without rows) is ``NaN`` here; the JSON report writes it as ``null``.

Groups: a group holding both labels is scored alone; a group of fakes only (an FF++
manipulation method) is scored with every real video of the dataset, as the papers'
per-method tables are; a group of reals only gets counts but no scores.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import average_precision_score, roc_curve

# How each detector's authors turn window/frame probabilities into a video score.
AGGREGATIONS: dict[str, str] = {
    "caddm": "mean",        # CADDM lib/util.py get_video_auc: mean frame P(fake) per video
    "sta": "mean",          # StA training/demo.py: mean clip P(fake)
    "styleflow": "mean_logit",  # TrueMedia custommodel.py (the only released scoring): sigmoid(mean clip logit)
    "fused": "live",        # the live fusion of the detectors' video scores (predict's fake_probability)
}
AGGREGATION_TEXT = {
    "mean": "mean of frame/window probabilities",
    "mean_logit": "sigmoid of the mean window logit",
    "live": "live fusion (alerts.fusion) of the detectors' video scores",
}
SCORE_KEYS = ("auc", "eer", "ap", "acc", "acc_at_threshold", "tpr_at_threshold", "fpr_at_threshold")
NAN = float("nan")


def _logit(p: float) -> float:
    q = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(q / (1 - q))


def aggregate(detector: str, video_score: float, frame_scores: Sequence[float]) -> float:
    """The video score by ``detector``'s authors' aggregation (:data:`AGGREGATIONS`).

    ``mean`` and ``live`` are the live path's own video score (``predict``'s number);
    ``mean_logit`` is computed from the window probabilities.
    """
    if AGGREGATIONS.get(detector, "mean") == "mean_logit" and frame_scores:
        m = sum(_logit(p) for p in frame_scores) / len(frame_scores)
        return 1.0 / (1.0 + math.exp(-m))
    return float(video_score)


def binary_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, float | int]:
    """``n``, ``n_real``, ``n_fake`` and :data:`SCORE_KEYS` for one set of scores (see the module
    docstring; NaN where undefined)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(scores, dtype=np.float64)
    n_fake = int((y == 1).sum())
    n_real = int((y == 0).sum())
    out: dict[str, float | int] = {"n": int(y.size), "n_real": n_real, "n_fake": n_fake}
    out.update({k: NAN for k in SCORE_KEYS})
    if y.size == 0:
        return out
    out["acc"] = float(((p > 0.5) == (y == 1)).mean())
    flagged = p >= threshold
    out["acc_at_threshold"] = float((flagged == (y == 1)).mean())
    if n_fake:
        out["tpr_at_threshold"] = float(flagged[y == 1].mean())
    if n_real:
        out["fpr_at_threshold"] = float(flagged[y == 0].mean())
    if n_fake and n_real:
        fpr, tpr, _ = roc_curve(y, p, pos_label=1)
        out["auc"] = float(sk_auc(fpr, tpr))
        fnr = 1.0 - tpr
        out["eer"] = float(fpr[np.nanargmin(np.abs(fnr - fpr))])
        out["ap"] = float(average_precision_score(y, p))
    return out


def roc_points(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """(FPR, TPR) of the ROC curve, or ``None`` with one class only."""
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0 or y.min() == y.max():
        return None
    fpr, tpr, _ = roc_curve(y, np.asarray(scores, dtype=np.float64), pos_label=1)
    return fpr, tpr


def level_inputs(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """``{"frame": (labels, scores), "video": (labels, scores)}`` of one detector's rows."""
    fl: list[int] = []
    fs: list[float] = []
    vl: list[int] = []
    vs: list[float] = []
    for r in rows:
        label = int(r["label"])
        frames = [float(p) for p in r["frame_scores"]]
        fl += [label] * len(frames)
        fs += frames
        vl.append(label)
        vs.append(aggregate(str(r["detector"]), float(r["video_score"]), frames))
    return {"frame": (fl, fs), "video": (vl, vs)}


def _scored(rows: Sequence[Mapping[str, Any]], threshold: float) -> dict[str, Any]:
    inputs = level_inputs(rows)
    return {level: binary_metrics(labels, scores, threshold) for level, (labels, scores) in inputs.items()}


def evaluate(rows: Sequence[Mapping[str, Any]], threshold: float, detectors: Sequence[str]) -> dict[str, Any]:
    """Metrics per detector (in ``detectors`` order), overall and per group; see the module docstring."""
    out: dict[str, Any] = {}
    for detector in detectors:
        mine = [r for r in rows if r["detector"] == detector]
        reals = [r for r in mine if int(r["label"]) == 0]
        groups: dict[str, Any] = {}
        for group in sorted({str(r["group"]) for r in mine if r.get("group") is not None}):
            members = [r for r in mine if r.get("group") == group]
            labels = {int(r["label"]) for r in members}
            if labels == {0}:
                groups[group] = {"n_real": len(members), "n_fake": 0, "scored_with": None}
                continue
            subset = members if labels == {0, 1} else members + reals
            groups[group] = {"scored_with": "itself" if labels == {0, 1} else "all real videos",
                             **_scored(subset, threshold)}
        out[detector] = {"aggregation": AGGREGATIONS.get(detector, "mean"), **_scored(mine, threshold),
                         "groups": groups}
    return out
