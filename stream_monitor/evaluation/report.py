"""The evaluation's files: ``scores.jsonl``, ``metrics.json``, ``report.md``, ``roc.png``, ``hist.png``.

``scores.jsonl`` — one JSON object per line per (video, detector), detectors in the run's
order then ``fused``: ``{"video", "label", "group", "detector", "video_score",
"frame_scores"}`` (the interface ``stream-monitor calibrate`` reads). A (video, detector)
without a score (no face found, video shorter than a window, unreadable file) has no line;
``metrics.json`` lists it under ``unscored``.

``metrics.json`` — the dataset, the threshold and fusion, the model keys, and per detector
the numbers of :func:`stream_monitor.evaluation.metrics.evaluate`; an undefined number is
``null``. ``report.md`` — the same as tables shaped like the papers' (AUC, AP, ACC, TPR in
percent; EER in percent). The PNGs use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .metrics import AGGREGATION_TEXT, level_inputs, roc_points

NAMES = {"caddm": "CADDM", "sta": "StA", "styleflow": "StyleFlow", "fused": "Fused (live)"}


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_scores(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in ("video", "label", "group", "detector", "video_score",
                                                  "frame_scores")}, allow_nan=False) + "\n")
    tmp.replace(path)


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100.0 * float(value):.2f}"


def render_markdown(doc: Mapping[str, Any]) -> str:
    """``report.md``: overall table, per-group video AUC, per-group frame AUC, counts, notes."""
    ds = doc["dataset"]
    t = doc["threshold"]
    dets: Mapping[str, Any] = doc["detectors"]
    lines = [f"# Evaluation: {ds['path']}", "",
             f"Layout `{ds['layout']}`; {ds['videos']} videos ({ds['real']} real, {ds['fake']} fake); "
             f"threshold {t:g} (live rule p ≥ threshold); fusion `{doc['fusion']['fusion']}`.", ""]
    if not doc.get("calibrated", True):
        lines += ["**Random weights: the detectors are untrained, these numbers mean nothing about "
                  "detection quality (plumbing check only).**", ""]
    lines += ["All numbers in percent. Frame level: every scored frame (CADDM) or window (StA, StyleFlow, "
              "fused). Video level: the authors' aggregation. ACC: p > 0.5 (DeepfakeBench); ACC@t, TPR@t, "
              "FPR@t: p ≥ threshold.", "",
              "| Detector | Frame AUC | Video AUC | Video EER | Video AP | Video ACC | ACC@t | TPR@t | FPR@t "
              "| Frame EER | Frame AP |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d, m in dets.items():
        f, v = m["frame"], m["video"]
        lines.append(f"| {NAMES.get(d, d)} | {_pct(f['auc'])} | {_pct(v['auc'])} | {_pct(v['eer'])} | "
                     f"{_pct(v['ap'])} | {_pct(v['acc'])} | {_pct(v['acc_at_threshold'])} | "
                     f"{_pct(v['tpr_at_threshold'])} | {_pct(v['fpr_at_threshold'])} | {_pct(f['eer'])} | "
                     f"{_pct(f['ap'])} |")
    groups = sorted({g for m in dets.values() for g, gm in m["groups"].items() if gm.get("scored_with")})
    if groups:
        for level, title in (("video", "Video AUC"), ("frame", "Frame AUC")):
            lines += ["", f"### {title} per group (a group of fakes only is scored against all real videos)", "",
                      "| Detector | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
            for d, m in dets.items():
                cells = [_pct(m["groups"].get(g, {}).get(level, {}).get("auc")) for g in groups]
                lines.append(f"| {NAMES.get(d, d)} | " + " | ".join(cells) + " |")
    lines += ["", "### Videos", "", "| Detector | aggregation | videos scored | real | fake | frames/windows "
              "| unscored |", "|---|---|---|---|---|---|---|"]
    for d, m in dets.items():
        v, f = m["video"], m["frame"]
        lines.append(f"| {NAMES.get(d, d)} | {AGGREGATION_TEXT.get(m['aggregation'], m['aggregation'])} | "
                     f"{v['n']} | {v['n_real']} | {v['n_fake']} | {f['n']} | "
                     f"{len(doc['unscored'].get(d, []))} |")
    if doc.get("unreadable"):
        lines += ["", f"{len(doc['unreadable'])} unreadable video(s), listed in metrics.json."]
    lines += ["", "Models: " + ", ".join(f"`{d}`: `{k}`" for d, k in doc["models"].items()), ""]
    return "\n".join(lines)


def _detector_inputs(rows: Sequence[Mapping[str, Any]], detectors: Sequence[str]
                     ) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    return {d: level_inputs([r for r in rows if r["detector"] == d]) for d in detectors}


def plot_roc(path: Path, rows: Sequence[Mapping[str, Any]], detectors: Sequence[str]) -> None:
    """Frame- and video-level ROC curves, one line per detector (AUC in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from sklearn.metrics import auc

    inputs = _detector_inputs(rows, detectors)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, level in zip(axes, ("frame", "video")):
        for d in detectors:
            pts = roc_points(*inputs[d][level])
            if pts is None:
                ax.plot([], [], label=f"{NAMES.get(d, d)} (one class only)")
                continue
            fpr, tpr = pts
            ax.plot(fpr, tpr, label=f"{NAMES.get(d, d)} (AUC {100 * auc(fpr, tpr):.2f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{level}-level ROC", xlabel="false positive rate", ylabel="true positive rate",
               xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hist(path: Path, rows: Sequence[Mapping[str, Any]], detectors: Sequence[str], threshold: float) -> None:
    """Video-score histograms, real vs fake, one panel per detector, threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    inputs = _detector_inputs(rows, detectors)
    cols = min(2, len(detectors))
    nrows = math.ceil(len(detectors) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 3.6 * nrows), squeeze=False)
    bins = [i / 25 for i in range(26)]
    for ax, d in zip(axes.flat, detectors):
        labels, scores = inputs[d]["video"]
        for label, name, color in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
            values = [s for y, s in zip(labels, scores) if y == label]
            ax.hist(values, bins=bins, alpha=0.6, color=color, label=f"{name} ({len(values)})")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.set(title=f"{NAMES.get(d, d)}: video scores", xlabel="P(fake)", ylabel="videos", xlim=(0, 1))
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(detectors):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
