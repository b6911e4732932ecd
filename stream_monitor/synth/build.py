"""``stream-monitor synth``: labelled pseudo-fake videos from real face videos, FF++ layout.

A first pass over each real video (sorted by path) finds faces with the configured face
detector (the live one: ``faces.backend``, five points) and follows one face per frame
(:func:`~.geometry.follow`); a second pass decodes it again, with its donor alongside, and
writes, all with the same encoder settings:

* ``original_sequences/youtube/<c>/videos/<name>.mp4`` — the real video re-encoded (label 0);
* ``manipulated_sequences/VideoBlending/<c>/videos/<name>.mp4`` — StA's video-level
  blending: one set of self-blending parameters for the whole clip (:mod:`.blend`);
* ``manipulated_sequences/MultiScaleSwap/<c>/videos/<name>_<donor>.mp4`` — CADDM's
  multi-scale facial swap with the next real video as donor (:mod:`.swap`);
* ``manipulated_sequences/SelfBlending/<c>/videos/<name>.mp4`` — per-frame
  self-blending, new parameters every frame (the contrast: temporally inconsistent).

Frames without a face are written unchanged. ``manifest.json`` records, per output, its
label, method, source, donor, the parameters drawn and how many frames were altered;
``manifest.csv`` (``path,label,group``) is the same list for ``stream-monitor eval``'s
``csv`` layout (the folder itself also reads as ``ffpp``). Everything is seeded: the same
inputs and ``seed`` give the same videos.

These are test and adaptation aids — blending artifacts on real faces — not a substitute
for real deepfakes: a detector's score on them says how it reacts to the seeds' training
artifacts, not how it does on FF++, Celeb-DF or DFDC.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from ..config import Config
from ..errors import StreamMonitorError
from ..types import FaceObs
from .blend import draw_blend, self_blend
from .geometry import face_hull, follow
from .media import CRF, VideoWriter, read_frames, video_rate
from .swap import draw_swap, facial_swap, place_window, warp_donor

if TYPE_CHECKING:  # torch comes with the face detector, imported only when synthesising
    from ..faces.roi import RegionDetector

log = logging.getLogger(__name__)

METHODS = {"vb": "VideoBlending", "mfs": "MultiScaleSwap", "sbi": "SelfBlending"}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
_BATCH = 8  # frames per face-detection call


class SynthError(StreamMonitorError):
    """Bad synth inputs (no videos, a non-empty output folder, an unknown method)."""


@dataclass(frozen=True)
class SynthOptions:
    methods: tuple[str, ...] = ("vb", "mfs", "sbi")
    seed: int = 0
    compression: str = "c23"
    max_seconds: float | None = None  # per video; None: whole videos


def find_videos(folder: Path) -> list[Path]:
    """Video files under ``folder`` (recursive), sorted by relative path."""
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
                  key=lambda p: p.relative_to(folder).as_posix())


def check_inputs(real_videos: Path, out: Path, opts: SynthOptions) -> list[Path]:
    """The input videos; :class:`SynthError` for anything that would fail later."""
    bad = [m for m in opts.methods if m not in METHODS]
    if bad or not opts.methods:
        raise SynthError(f"--methods takes a comma list of {', '.join(METHODS)}; got {','.join(opts.methods)!r}")
    if opts.compression not in CRF:
        raise SynthError(f"--compression must be one of {', '.join(CRF)}")
    if opts.max_seconds is not None and opts.max_seconds <= 0:
        raise SynthError("--max-seconds must be positive")
    if not real_videos.is_dir():
        raise SynthError(f"{real_videos}: not a folder of real videos")
    videos = find_videos(real_videos)
    if not videos:
        raise SynthError(f"{real_videos}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    if "mfs" in opts.methods and len(videos) < 2:
        raise SynthError("the multi-scale swap (mfs) needs at least two real videos (one is the other's donor)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthError(f"{out}: exists and is not an empty folder")
    for v in videos:
        video_rate(v)  # SourceError now rather than half-way
    return videos


def _names(videos: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for v in videos:
        base, n = v.stem.replace(" ", "_"), 2
        name = base
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def track_faces(path: Path, max_frames: int | None, regions: "RegionDetector", rate: float,
                refresh_s: float) -> list[FaceObs | None]:
    """The followed face of every frame (``None`` where there is none), detected as the
    live engine detects: ``_BATCH`` frames at a time, in a region around the followed face
    (:mod:`stream_monitor.faces.roi`) with a full-frame pass at least every ``refresh_s``
    seconds and wherever a region misses. Run once per video: the video's own pass and its
    role as another video's donor both use the list."""
    faces: list[FaceObs | None] = []
    previous: FaceObs | None = None
    refresh = max(1, round(refresh_s * rate))
    last_full = -refresh
    frames = read_frames(path, max_frames)
    while True:
        chunk = [f for _, f in zip(range(_BATCH), frames)]
        if not chunk:
            return faces
        start = len(faces)
        prior = [previous.box] if previous is not None and start - last_full < refresh else None
        for k, (found, mode) in enumerate(regions.detect(chunk, [prior] * len(chunk))):
            if mode != "region":
                last_full = start + k
            face = follow(found, previous)
            previous = face if face is not None else previous
            faces.append(face)


def _looped(path: Path, max_frames: int | None) -> Iterator[np.ndarray]:
    """The donor's frames, starting over when it ends (a shorter donor)."""
    while True:
        empty = True
        for frame in read_frames(path, max_frames):
            empty = False
            yield frame
        if empty:
            raise SynthError(f"{path}: no frames")


def _synth_one(index: int, path: Path, name: str, faces: Sequence[FaceObs | None],
               donor: tuple[Path, str, Sequence[FaceObs | None]] | None, out: Path, opts: SynthOptions,
               max_frames: int | None, rel: Callable[[Path], str]) -> list[dict[str, Any]]:
    c = opts.compression
    rate = video_rate(path)
    targets: dict[str, Path] = {"real": out / "original_sequences" / "youtube" / c / "videos" / f"{name}.mp4"}
    for m in opts.methods:
        suffix = f"{name}_{donor[1]}" if m == "mfs" and donor is not None else name
        targets[m] = out / "manipulated_sequences" / METHODS[m] / c / "videos" / f"{suffix}.mp4"
    writers = {k: VideoWriter(p, rate, c) for k, p in targets.items()}
    vb = draw_blend(np.random.default_rng([opts.seed, index, 0]))
    swap = draw_swap(np.random.default_rng([opts.seed, index, 1]))
    sbi_rng = np.random.default_rng([opts.seed, index, 2])
    donors = _looped(donor[0], max_frames) if donor is not None and "mfs" in opts.methods else None
    last_donor: tuple[np.ndarray, FaceObs] | None = None
    altered = {m: 0 for m in opts.methods}
    frames = with_face = 0
    try:
        for i, frame in enumerate(read_frames(path, max_frames)):
            face = faces[i] if i < len(faces) else None
            frames += 1
            writers["real"].write(frame)
            if donors is not None and donor is not None:
                d_frame = next(donors)
                d_face = donor[2][i % len(donor[2])] if donor[2] else None
                if d_face is not None:
                    last_donor = (d_frame, d_face)
            if face is None:
                for m in opts.methods:
                    writers[m].write(frame)
                continue
            with_face += 1
            if "vb" in opts.methods:
                writers["vb"].write(self_blend(frame, face.points, vb))
                altered["vb"] += 1
            if "sbi" in opts.methods:
                writers["sbi"].write(self_blend(frame, face.points, draw_blend(sbi_rng)))
                altered["sbi"] += 1
            if "mfs" in opts.methods:
                if last_donor is None:
                    writers["mfs"].write(frame)
                    continue
                d_frame, d_face = last_donor
                if swap.level == "partial" and swap.anchor is None:
                    h, w = frame.shape[:2]
                    warped = warp_donor(d_frame, d_face.points, face.points, (w, h))
                    swap = place_window(frame, warped, face_hull(face.points), swap)
                writers["mfs"].write(facial_swap(frame, face.points, d_frame, d_face.points, swap))
                altered["mfs"] += 1
    finally:
        for w in writers.values():
            w.close()
    source = rel(path)
    entries = [{"path": targets["real"].relative_to(out).as_posix(), "label": 0, "group": "original",
                "method": "real", "source": source, "frames": frames, "frames_with_face": with_face}]
    for m in opts.methods:
        params: Any = {"vb": vb.as_dict(), "mfs": swap.as_dict(), "sbi": "drawn per frame"}[m]
        entries.append({"path": targets[m].relative_to(out).as_posix(), "label": 1, "group": METHODS[m],
                        "method": m, "source": source, "donor": rel(donor[0]) if m == "mfs" and donor else None,
                        "params": params, "frames": frames, "frames_altered": altered[m]})
    return entries


def synthesize(real_videos: Path, out: Path, cfg: Config, opts: SynthOptions, progress: bool = True) -> dict[str, Any]:
    """Write the dataset and its manifest into ``out`` (see the module docstring); returns the manifest."""
    from tqdm import tqdm

    from ..faces.detect import create_detector
    from ..faces.roi import RegionDetector
    from ..inference.worker import resolve_device

    videos = check_inputs(real_videos, out, opts)
    names = _names(videos)
    regions = RegionDetector(create_detector(cfg.faces, resolve_device(cfg.detectors.device)), cfg.faces)
    out.mkdir(parents=True, exist_ok=True)

    def rel(p: Path) -> str:
        return p.relative_to(real_videos).as_posix()

    rates = [float(video_rate(v)) for v in videos]
    limits = [None if opts.max_seconds is None else max(1, round(opts.max_seconds * r)) for r in rates]
    bar = tqdm(total=2 * len(videos), desc="synth", unit="pass", disable=not progress)
    faces = []
    for v, limit, rate in zip(videos, limits, rates):
        faces.append(track_faces(v, limit, regions, rate, cfg.faces.roi.refresh_s))
        bar.update(1)
    entries: list[dict[str, Any]] = []
    for i, v in enumerate(videos):
        j = (i + 1) % len(videos)
        donor = (videos[j], names[j], faces[j]) if len(videos) > 1 else None
        entries += _synth_one(i, v, names[i], faces[i], donor, out, opts, limits[i], rel)
        bar.update(1)
    bar.close()
    manifest = {
        "generator": "stream-monitor synth",
        "note": "pseudo-fakes for tests and adaptation (blending artifacts on real faces), not real deepfakes",
        "layout": "ffpp", "compression": opts.compression, "seed": opts.seed,
        "methods": {m: METHODS[m] for m in opts.methods}, "face_backend": cfg.faces.backend,
        "videos": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    with (out / "manifest.csv").open("w", encoding="utf-8", newline="") as f:
        rows = csv.writer(f, lineterminator="\n")
        rows.writerow(["path", "label", "group"])
        rows.writerows([e["path"], e["label"], e["group"]] for e in entries)
    return manifest
