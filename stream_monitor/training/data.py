"""Training data: a dataset's videos split by identity, and their face crops from the live path.

* **Split** (:func:`split_by_identity`): a video's *identity* is its stem, except that a fake
  whose stem is a real video's stem, or starts with it and ``_`` (FaceForensics++'s
  ``<target>_<source>``, ``synth``'s ``<name>_<donor>``), belongs to that real video. Whole
  identities go to validation, so no validation face was seen in training, not even in
  another manipulation of the same video.
* **Crops** (:func:`extract_crops`): each video goes through
  :func:`stream_monitor.predict.predict_video` on a :class:`CropEngine` — the live engine
  (face detection, tracking, the detector's sampling rate, alignment template and windows)
  whose lane is not run: each window is recorded instead of scored. The crops are exactly
  what the live runners feed the model: uint8 RGB ``[S, S, 3]`` in the card's template.
  Per-frame detectors (CADDM) get each sampled frame once per track, ``[N, S, S, 3]``; clip
  detectors (StA) get each window, ``[N, T, S, S, 3]``. Faces are found through the eval's
  face cache (:class:`~stream_monitor.evaluation.faces.CachedFaceDetector`, ``cache.sqlite``),
  and each video's crops are stored as ``crops/<detector>/<digest>.npy`` keyed by the video
  file and every setting that changes them, so a resumed run extracts nothing again.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import Config
from ..errors import SourceError
from ..evaluation.cache import FaceStore, VideoKey
from ..evaluation.datasets import Dataset, DatasetError, Sample
from ..evaluation.faces import CachedFaceDetector
from ..evaluation.run import face_namespace
from ..faces.align import Aligner
from ..faces.roi import RegionDetector
from ..inference.engine import Engine
from ..metrics import Metrics
from ..predict import predict_video
from ..types import Clip
from ..weights import model_name

log = logging.getLogger(__name__)

_CLIPS: contextvars.ContextVar[list[Clip] | None] = contextvars.ContextVar("training_clips", default=None)


# ---------------------------------------------------------------------------------------
# Split


def identity_of(sample: Sample, real_stems: Sequence[str]) -> str:
    """The identity key of ``sample`` (see the module docstring); ``real_stems`` sorted."""
    stem = Path(sample.video).stem
    if sample.label == 0:
        return stem
    owners = [r for r in real_stems if stem == r or stem.startswith(r + "_")]
    return max(owners, key=len) if owners else stem


def split_by_identity(dataset: Dataset, val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, validation) samples: ``round(val_fraction × identities)`` identities (at least
    one when ``val_fraction > 0``), drawn with ``seed``, go to validation.

    Raises :class:`DatasetError` when a split is asked for but fewer than two identities
    exist, or when the training part lacks a class.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    reals = sorted({Path(s.video).stem for s in dataset.samples if s.label == 0})
    keys = [identity_of(s, reals) for s in dataset.samples]
    identities = sorted(set(keys))
    n_val = 0
    if val_fraction > 0:
        if len(identities) < 2:
            raise DatasetError(f"{dataset.root}: a validation split needs at least two identities, found "
                               f"{len(identities)}; use --val-fraction 0")
        n_val = min(len(identities) - 1, max(1, round(val_fraction * len(identities))))
    held = set(random.Random(seed).sample(identities, n_val))
    train = [s for s, k in zip(dataset.samples, keys) if k not in held]
    val = [s for s, k in zip(dataset.samples, keys) if k in held]
    if len({s.label for s in train}) < 2:
        raise DatasetError(f"{dataset.root}: the training split needs real and fake videos; it has only "
                           f"{'fake' if train[0].label else 'real'} ones")
    return train, val


# ---------------------------------------------------------------------------------------
# Crops


class CropEngine(Engine):
    """The live engine, except that :meth:`score` records the window for the calling video's
    task (a context variable) and returns 0.5 at once instead of running the lane."""

    def score(self, clip: Clip, sheddable: bool = True) -> "asyncio.Future[float]":
        sink = _CLIPS.get()
        if sink is not None:
            sink.append(clip)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        fut.set_result(0.5)
        return fut


@dataclass(frozen=True)
class VideoCrops:
    """One video's crops (uint8 RGB; ``[N, S, S, 3]`` per frame or ``[N, T, S, S, 3]`` per
    window, ``N`` may be 0 when no face was found) and its label (0 real, 1 fake)."""

    sample: Sample
    crops: np.ndarray

    @property
    def label(self) -> int:
        return self.sample.label


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]


def crops_key(cfg: Config, detector: str, sample: Sample) -> str:
    """What a video's crops depend on: the file, the model (its card's template and window),
    the detector's sampling and windows, the face settings and the ingest frame-rate cap."""
    d = cfg.detectors.detector(detector)
    return _digest({"video": dataclasses.asdict(VideoKey.of(sample.path)), "model": model_name(detector, cfg.detectors),
                    "overrides": d.overrides, "sample_fps": d.sample_fps, "window_len": d.window_len,
                    "window_stride": d.window_stride, "landmarks": d.landmarks,
                    "faces": cfg.faces.model_dump(mode="json", exclude={"batch_size"}),
                    "max_fps": cfg.ingest.max_fps})


def _video_array(clips: Sequence[Clip], aligner: Aligner, per_frame: bool, size: int) -> np.ndarray:
    if per_frame:
        items = {id(it): (it, c.track_id) for c in clips for it in c.items}  # overlapping windows share items
        ordered = sorted(items.values(), key=lambda v: (v[0].pts, v[1]))
        frames = [aligner.clip_tensor([it], torch.device("cpu"))[0].numpy() for it, _ in ordered]
        return np.stack(frames) if frames else np.zeros((0, size, size, 3), np.uint8)
    windows = [aligner.clip_tensor(c.items, torch.device("cpu")).numpy() for c in clips]
    if windows:
        return np.stack(windows)
    return np.zeros((0, 0, size, size, 3), np.uint8)


async def _extract(cfg: Config, detector: str, samples: Sequence[Sample], paths: Sequence[Path],
                   store_path: Path, progress: bool) -> None:
    from tqdm import tqdm

    dcfg = cfg.detectors.model_copy(update={"enabled": [detector], "random_weights": True, "calibration": None})
    run_cfg = cfg.model_copy(update={"detectors": dcfg})
    engine = CropEngine(run_cfg, Metrics())
    quiet = logging.getLogger("stream_monitor.inference.engine")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "RANDOM WEIGHTS" warning: this engine's model never runs
    try:
        await asyncio.to_thread(engine.load)
    finally:
        quiet.setLevel(level)
    runner = engine.runners[detector]
    per_frame = runner.card.clip_len == 1
    aligner = Aligner(runner.card.template, None)
    assert engine.face_detector is not None
    store = FaceStore(store_path, face_namespace(cfg))
    faces = CachedFaceDetector(engine.face_detector, store)
    engine.face_detector = faces
    engine.regions = RegionDetector(faces, run_cfg.faces)
    await engine.start()
    bar = tqdm(total=len(samples), unit="video", desc=f"crops {detector}", file=sys.stderr, disable=not progress,
               mininterval=0.5, dynamic_ncols=True)
    try:
        for sample, path in zip(samples, paths):
            clips: list[Clip] = []
            token = _CLIPS.set(clips)
            try:
                await predict_video(engine, run_cfg, str(sample.path))
            except SourceError as exc:
                log.warning("%s: unreadable, skipped: %s", sample.video, exc)
            finally:
                _CLIPS.reset(token)
            array = _video_array(clips, aligner, per_frame, runner.card.template.size)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, array)
            os.replace(tmp, path)  # a killed run leaves no half-written file under the final name
            bar.update(1)
    finally:
        bar.close()
        await engine.stop()
        store.close()
    log.info("faces: %d images from the cache, %d through the face detector", faces.hits, faces.misses)


def extract_crops(cfg: Config, detector: str, samples: Sequence[Sample], out: Path,
                  progress: bool = True) -> list[VideoCrops]:
    """Every sample's crops (see the module docstring), extracting only what ``out/crops``
    lacks; arrays are memory-mapped from there. Unreadable videos yield no crops."""
    paths = [out / "crops" / detector / f"{crops_key(cfg, detector, s)}.npy" for s in samples]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        log.info("extracting %s crops of %d videos (%d stored)", detector, len(todo), len(samples) - len(todo))
        asyncio.run(_extract(cfg, detector, [samples[i] for i in todo], [paths[i] for i in todo],
                             out / "cache.sqlite", progress))
    return [VideoCrops(s, np.load(p, mmap_mode="r")) for s, p in zip(samples, paths)]
