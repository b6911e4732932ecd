"""``stream-monitor eval``: score a dataset through the live path, cache, report.

Order: the model keys (weights resolved: a missing checkpoint fails here, before any model
loads), the cache look-up (a video is done when every requested detector has a row for it
under its current model key), then — only if something is missing — one engine with the
detectors that some video still lacks, the videos scored ``jobs`` at a time with a
progress bar and ETA, each video's results stored in one transaction as it finishes, and
finally the report from the cache (:mod:`.report`). Killed at any point, a rerun with the
same cache skips what is stored and logs how much it resumes from.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Config
from ..errors import SourceError
from ..faces.roi import RegionDetector
from ..inference.runners import model_fingerprint
from ..weights import model_name, resolve_all
from .cache import FaceStore, ScoreCache, VideoKey
from .datasets import Dataset
from .faces import CachedFaceDetector
from .metrics import evaluate
from .report import plot_hist, plot_roc, render_markdown, write_json, write_scores
from .scoring import RecordingEngine, fused_video_score, live_fusion, score_video

log = logging.getLogger(__name__)

FUSED = "fused"
# Settings that change how fast a detector runs but not its numbers: not part of the model key.
_SPEED_ONLY = {"batch_size", "max_wait_ms", "max_queue_s"}


@dataclass(frozen=True)
class EvalOptions:
    """Where results go and how the run proceeds."""

    out: Path
    cache: Path | None = None  # default: out / "cache.sqlite"
    jobs: int = 1  # videos in flight at once (their windows share the lanes' batches)
    progress: bool = True  # tqdm bar with ETA on stderr

    @property
    def cache_path(self) -> Path:
        return self.cache if self.cache is not None else self.out / "cache.sqlite"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def model_keys(cfg: Config) -> dict[str, str]:
    """Per enabled detector: ``"<model>@<checkpoint digest>#<settings digest>"``. The settings
    are the detector's section (less speed-only fields), the face settings, the precision
    and the ingest frame-rate cap: everything that changes its scores. Resolves the weights,
    so a missing checkpoint raises :class:`~stream_monitor.errors.WeightsError` here."""
    dcfg = cfg.detectors
    resolved = {} if dcfg.random_weights else resolve_all(dcfg)
    keys: dict[str, str] = {}
    for d in dcfg.enabled:
        files = resolved[d].files if d in resolved else ()
        settings = {"detector": dcfg.detector(d).model_dump(mode="json", exclude=_SPEED_ONLY),
                    "faces": cfg.faces.model_dump(mode="json", exclude={"batch_size"}),
                    "precision": dcfg.precision, "max_fps": cfg.ingest.max_fps}
        keys[d] = f"{model_fingerprint(model_name(d, dcfg), files)}#{_digest(settings)}"
    return keys


def face_namespace(cfg: Config) -> str:
    """What a cached face list depends on besides the image: the backend and its limits."""
    f = cfg.faces
    return _digest({"backend": f.backend, "scrfd_model": str(f.scrfd_model), "min_confidence": f.min_confidence,
                    "min_size": f.min_size, "max_faces": f.max_faces})


def _failed(error: str) -> dict[str, Any]:
    return {"video_score": None, "frame_scores": [], "windows": [], "frames": 0, "faces": 0, "error": error}


async def _score_missing(cfg: Config, dataset: Dataset, videos: Sequence[VideoKey],
                         missing: Sequence[Sequence[str]], keys: Mapping[str, str], cache: ScoreCache,
                         opts: EvalOptions) -> None:
    from tqdm import tqdm

    from ..metrics import Metrics

    todo = [i for i, m in enumerate(missing) if m]
    need = [d for d in cfg.detectors.enabled if any(d in missing[i] for i in todo)]
    run_cfg = cfg.model_copy(update={"detectors": cfg.detectors.model_copy(update={"enabled": need})})
    engine = RecordingEngine(run_cfg, Metrics())
    await asyncio.to_thread(engine.load)
    for d in need:
        if engine.model_ids[d] != keys[d].split("#", 1)[0]:
            raise RuntimeError(f"{d}: loaded {engine.model_ids[d]}, expected {keys[d]}")  # a bug, not data
    assert engine.face_detector is not None
    store = FaceStore(opts.cache_path, face_namespace(cfg))
    faces = CachedFaceDetector(engine.face_detector, store)
    engine.face_detector = faces
    engine.regions = RegionDetector(faces, run_cfg.faces)
    await engine.start()
    bar = tqdm(total=len(videos), initial=len(videos) - len(todo), unit="video", desc="eval", file=sys.stderr,
               disable=not opts.progress, mininterval=0.5, smoothing=0.1, dynamic_ncols=True)
    gate = asyncio.Semaphore(opts.jobs)

    async def one(i: int) -> None:
        async with gate:
            sample = dataset.samples[i]
            try:
                results = await score_video(engine, run_cfg, str(sample.path))
            except SourceError as exc:
                log.warning("%s: unreadable, recorded as such: %s", sample.video, exc)
                results = {d: _failed(str(exc)) for d in missing[i]}
            cache.put(videos[i], {d: (keys[d], results[d]) for d in missing[i]})
            bar.set_postfix_str(Path(sample.video).name, refresh=False)
            bar.update(1)

    tasks = [asyncio.ensure_future(one(i)) for i in todo]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
        await engine.stop()
        store.close()
        log.info("faces: %d frame/region images from the cache, %d through the face detector", faces.hits,
                 faces.misses)


def collect_rows(cache: ScoreCache, dataset: Dataset, videos: Sequence[VideoKey], keys: Mapping[str, str],
                 cfg: Config) -> tuple[list[dict[str, Any]], dict[str, list[str]], list[dict[str, str]]]:
    """``scores.jsonl`` rows (per video: the detectors in order, then ``fused``), the videos
    each detector could not score, and the unreadable videos."""
    detectors = list(keys)
    a = cfg.alerts
    rows: list[dict[str, Any]] = []
    unscored: dict[str, list[str]] = {d: [] for d in [*detectors, FUSED]}
    unreadable: list[dict[str, str]] = []
    for sample, video in zip(dataset.samples, videos):
        results = {d: cache.get(video, d, keys[d]) for d in detectors}
        errors = [r["error"] for r in results.values() if r is not None and r.get("error")]
        if errors:
            unreadable.append({"video": sample.video, "error": str(errors[0])})
            continue
        base = {"video": sample.video, "label": sample.label, "group": sample.group}
        present = {d: r for d, r in results.items() if r is not None and r["video_score"] is not None}
        for d in detectors:
            if d not in present:
                unscored[d].append(sample.video)
                continue
            rows.append({**base, "detector": d, "video_score": present[d]["video_score"],
                         "frame_scores": present[d]["frame_scores"]})
        fused = fused_video_score({d: r["video_score"] for d, r in present.items()}, a.fusion, a.weights)
        if fused is None:
            unscored[FUSED].append(sample.video)
            continue
        rows.append({**base, "detector": FUSED, "video_score": fused,
                     "frame_scores": live_fusion({d: r["windows"] for d, r in present.items()}, a.fusion, a.weights)})
    return rows, unscored, unreadable


def run_eval(cfg: Config, dataset: Dataset, dataset_path: Path, opts: EvalOptions) -> dict[str, Any]:
    """Score what the cache lacks, then write the report files into ``opts.out``; returns
    the ``metrics.json`` document. Raises ``WeightsError`` before loading anything when a
    checkpoint is missing."""
    keys = model_keys(cfg)
    opts.out.mkdir(parents=True, exist_ok=True)
    cache = ScoreCache(opts.cache_path)
    try:
        videos = [VideoKey.of(s.path) for s in dataset.samples]
        missing = [[d for d in keys if cache.get(v, d, keys[d]) is None] for v in videos]
        todo = sum(1 for m in missing if m)
        if todo < len(videos):
            log.info("resuming: %d of %d videos already scored (cache %s); %d to score", len(videos) - todo,
                     len(videos), opts.cache_path, todo)
        else:
            log.info("%d videos to score (cache %s)", todo, opts.cache_path)
        if todo:
            asyncio.run(_score_missing(cfg, dataset, videos, missing, keys, cache, opts))
        rows, unscored, unreadable = collect_rows(cache, dataset, videos, keys, cfg)
    finally:
        cache.close()
    detectors = [*keys, FUSED]
    a = cfg.alerts
    groups: dict[str, dict[str, int]] = {}
    for s in dataset.samples:
        g = groups.setdefault(s.group if s.group is not None else "(none)", {"real": 0, "fake": 0})
        g["fake" if s.label else "real"] += 1
    counts = dataset.counts()
    doc: dict[str, Any] = {
        "dataset": {"path": str(dataset_path), "layout": dataset.layout, "root": str(dataset.root),
                    "videos": len(dataset.samples), **counts, "groups": groups},
        "threshold": a.threshold,
        "fusion": {"fusion": a.fusion, "weights": dict(a.weights)},
        "calibrated": not cfg.detectors.random_weights,
        "models": dict(keys),
        "detectors": evaluate(rows, a.threshold, detectors),
        "unscored": unscored,
        "unreadable": unreadable,
    }
    write_scores(opts.out / "scores.jsonl", rows)
    write_json(opts.out / "metrics.json", doc)
    (opts.out / "report.md").write_text(render_markdown(doc), encoding="utf-8")
    plot_roc(opts.out / "roc.png", rows, detectors)
    plot_hist(opts.out / "hist.png", rows, detectors, a.threshold)
    return doc
