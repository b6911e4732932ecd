"""The baseline: the authors' own inference loops, re-implemented on our models package.

Each loop runs on the same device with the same weights (the same ``models.create_model``
call and seed as the engine), on the same media (the bench's source, rendered or decoded
again without pacing), at the same sampling rate, window length and stride as the
monitor's windows of that detector (rates capped at ``ingest.max_fps`` as the monitor's
are), and in fp32 as the authors ran. What differs is the loop's *structure*, which is
what the bench compares:

* **StA** (``training/demo.py``): decode every frame; for each frame the detector samples,
  face detection on that frame alone (batch 1), alignment and normalisation of that
  frame's crop; each window is one forward of one clip (batch 1).
* **CADDM** (``lib/extract_frames_ldm_ff++.py`` then ``test.py``): an extraction pass that
  decodes, detects faces on the sampled frames one by one and writes each such frame to
  disk as a PNG with its landmarks in ``ldm.json``; then the test loop: a Dataset that
  reads each PNG back, aligns the face from the stored landmarks, and a DataLoader that
  batches ``test.batch_size`` = 128 frames per forward (no streaming).
* **StyleFlow** (TrueMedia's ``custommodel.py`` + FTCN's ``crop_face_from_video``): decode
  and detect faces on every frame (50 frames per detector call, as FTCN's ``detect_all``;
  its extra 68-point landmark pass is left out), fit one alignment per 32-frame clip and
  write the clip's 256² crops to disk as PNGs; then per clip: read the 32 PNGs, Pillow-resize
  each to the content size and normalise it, pSp on all 32 frames, then StyleGRU and the
  content branch for that one clip (batch 1).

Deliberate deviations, each in the baseline's favour (so the ratio is conservative):
faces come from the service's detector (MTCNN) instead of dlib HOG / RetinaFace, run only
on the frames a detector samples (StA's demo detects on every frame); all faces of a
frame are followed in left-to-right order, with detection shared, where StA's demo and
CADDM's extractor follow the largest face only; every forward runs under
``torch.inference_mode()`` (CADDM's ``test.py`` keeps autograd on); StyleFlow's pSp step
runs the encoder only (the authors' hook calls the whole pSp, StyleGAN2 decoder
included); CADDM's DataLoader uses the calling process (``num_workers=0``) on a CPU,
where worker processes would compete with the forward for the cores, and the authors'
4 workers on CUDA. Model loading and one warm-up forward are outside the timing, as the
monitor's start-up is outside its measurement.

Throughput is in the monitor's unit, **track-seconds per wall second**: the distinct
sampled frames of each face track that scored windows cover, divided by the sampling
rate, summed over tracks, divided by the loop's wall time.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import torch
from PIL import Image

import models

from ..config import Config
from ..faces.align import Aligner
from ..faces.detect import FaceDetector, create_detector
from ..inference.engine import window_spec
from ..inference.runners import model_fingerprint
from ..types import FaceObs, WindowItem
from ..weights import model_name, resolve_all
from ..windows import FrameSampler, TrackWindows, WindowSpec
from .flops import DetectorFlops

Media = Callable[[], Iterator[tuple[float, np.ndarray]]]  # fresh (pts, uint8 RGB image) iterator per call

CADDM_TEST_BATCH = 128  # configs/caddm_test.cfg: test.batch_size
_FTCN_DETECT_CHUNK = 50  # FTCN test_tools/common.py::detect_all: partition(frames, 50)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the content branch's normalisation (FTCN/TrueMedia)
_IMAGENET_STD = (0.229, 0.224, 0.225)

LOOPS = {
    "sta": "StA demo.py: per sampled frame face detection (batch 1) + alignment + normalisation; "
           "one clip forward per window, batch 1, fp32",
    "caddm": "CADDM extract_frames + test.py: sampled frames detected one by one and written to disk "
             "(PNG + ldm.json), then read back, aligned and forwarded in DataLoader batches of 128, fp32",
    "styleflow": "StyleFlow/TrueMedia per clip: every frame detected (50 frames per detector call), "
                 "clip-aligned 256 crops written as PNG; per clip: read 32 PNGs, pSp on all 32 frames, "
                 "StyleGRU + content, "
                 "batch 1, fp32",
}


class _Phases:
    """Wall time per named phase of a loop (seconds), and the frames it decoded and detected."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.decoded = 0
        self.detected = 0

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def frames(self, media: Iterator[tuple[float, np.ndarray]]) -> Iterator[tuple[int, float, np.ndarray]]:
        """``(index, pts, image)`` of ``media`` with the time spent getting each counted as ``decode``."""
        index = 0
        while True:
            with self("decode"):
                item = next(media, None)
            if item is None:
                return
            self.decoded += 1
            yield index, item[0], item[1]
            index += 1

    def sampled_faces(self, media: Iterator[tuple[float, np.ndarray]], rate: float, faces: FaceDetector
                      ) -> Iterator[tuple[int, float, np.ndarray, list[FaceObs]]]:
        """``(index, pts, image, faces left to right)`` of each frame sampled at ``rate``, faces
        detected on that frame alone (batch 1), timed as ``detect``."""
        sampler = FrameSampler(rate)
        for i, pts, image in self.frames(media):
            if not sampler.accept(pts):
                continue
            with self("detect"):
                found = _ordered(faces.detect([image])[0])
            self.detected += 1
            yield i, pts, image, found


@dataclass
class BaselineResult:
    """One loop's counts and times; ``track_seconds`` per the module docstring."""

    detector: str
    model: str
    wall_s: float
    phases_s: dict[str, float]
    frames_decoded: int
    frames_detected: int
    frames_forwarded: int
    windows: int
    track_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.track_seconds / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self, cost: DetectorFlops | None, face_flops: float, peak: float) -> dict[str, Any]:
        flops = (cost.work(self.frames_forwarded, self.windows) if cost else 0.0) / self.wall_s \
            if self.wall_s > 0 else 0.0
        faces = face_flops * self.frames_detected / self.wall_s if self.wall_s > 0 else 0.0
        return {"loop": LOOPS[self.detector], "model": self.model, "wall_s": self.wall_s,
                "phases_s": dict(self.phases_s), "frames_decoded": self.frames_decoded,
                "frames_detected": self.frames_detected, "frames_forwarded": self.frames_forwarded,
                "windows": self.windows, "track_seconds": self.track_seconds, "throughput": self.throughput,
                "flops_per_s": flops, "faces_flops_per_s": faces, "mfu": flops / peak if peak > 0 else None,
                "notes": list(self.notes)}


@dataclass
class _Setup:
    detector: str
    model: Any  # nn.Module from models.create_model (StyleFlow's has encode_frames etc.)
    model_id: str
    card: models.ModelCard
    spec: WindowSpec
    rate: float  # frames per second the detector samples, capped at the monitor's analysed rate
    faces: FaceDetector
    aligner: Aligner
    device: torch.device
    workdir: Path


def _ordered(faces: list[FaceObs]) -> list[FaceObs]:
    """Faces left to right: the baseline's stand-in for a tracker (the synthetic faces keep
    their lanes, and the authors' loops have none between sampled frames)."""
    return sorted(faces, key=lambda f: f.box[0])


def _covered(tracks: dict[int, set[int]], rate: float) -> float:
    return sum(len(seqs) for seqs in tracks.values()) / rate


def _sta_demo(s: _Setup, media: Media) -> BaselineResult:
    ph = _Phases()
    windows: dict[int, TrackWindows] = {}
    covered: dict[int, set[int]] = defaultdict(set)
    n_windows = 0
    t0 = time.perf_counter()
    for i, pts, image, faces in ph.sampled_faces(media(), s.rate, s.faces):
        for k, face in enumerate(faces):
            with ph("align"):
                crop, _ = s.aligner.patch(image, face)
                x = s.card.preprocess(crop[None])[0]  # the demo's ToTensor + Normalize, per frame
            item = WindowItem(i, pts, 0.0, face.box, face.points, crop)
            item.cache["x"] = x
            clip = windows.setdefault(k, TrackWindows(s.spec)).push(item)
            if clip is None:
                continue
            with ph("forward"), torch.inference_mode():
                batch = torch.stack([it.cache["x"] for it in clip])[None].to(s.device)
                float(s.model(batch)[0])  # .item(): the demo prints each clip's probability
            n_windows += 1
            covered[k].update(it.seq for it in clip)
    wall = time.perf_counter() - t0
    return BaselineResult("sta", s.model_id, wall, dict(ph.seconds), ph.decoded, ph.detected, 0, n_windows,
                          _covered(covered, s.rate))


class _CaddmFrames(torch.utils.data.Dataset[torch.Tensor]):
    """CADDM's test Dataset: a PNG frame from disk + its stored landmarks → the model input."""

    def __init__(self, samples: list[dict[str, Any]], aligner: Aligner, card: models.ModelCard) -> None:
        self.samples = samples
        self.aligner = aligner
        self.card = card

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        sample = self.samples[index]
        bgr = cv2.imread(sample["path"], cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read {sample['path']}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        box = tuple(float(v) for v in sample["box"])
        face = FaceObs(box, np.asarray(sample["points"], dtype=np.float32), 1.0)  # type: ignore[arg-type]
        crop, _ = self.aligner.patch(image, face)
        return self.card.preprocess(crop[None])[0]


def _caddm_test(s: _Setup, media: Media) -> BaselineResult:
    ph = _Phases()
    frames_dir = s.workdir / "caddm_frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    # Extraction: sampled frames + landmarks to disk.
    for i, pts, image, faces in ph.sampled_faces(media(), s.rate, s.faces):
        if not faces:
            continue
        path = frames_dir / f"{i:06d}.png"
        with ph("write"):
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        for k, face in enumerate(faces):
            samples.append({"path": str(path), "track": k, "seq": i, "pts": pts, "box": list(face.box),
                            "points": face.points.tolist()})
    with ph("write"):
        (s.workdir / "ldm.json").write_text(json.dumps(samples))
    # Test loop: read back, align, batch.
    with ph("read"):
        stored = json.loads((s.workdir / "ldm.json").read_text())
    workers = 4 if s.device.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(_CaddmFrames(stored, s.aligner, s.card), batch_size=CADDM_TEST_BATCH,
                                         shuffle=False, num_workers=workers)
    probs: list[float] = []
    batches = iter(loader)
    while True:
        with ph("read"):
            x = next(batches, None)
        if x is None:
            break
        with ph("forward"), torch.inference_mode():
            probs.extend(s.model(x.to(s.device)).float().cpu().tolist())
    # The video score of each window: the mean of its frames (cheap; kept for the count).
    windows: dict[int, TrackWindows] = {}
    covered: dict[int, set[int]] = defaultdict(set)
    n_windows = 0
    for sample, p in zip(stored, probs):
        item = WindowItem(sample["seq"], sample["pts"], 0.0, tuple(sample["box"]),  # type: ignore[arg-type]
                          np.zeros((5, 2), np.float32), np.zeros((1, 1, 3), np.uint8))
        item.cache["p"] = p
        clip = windows.setdefault(sample["track"], TrackWindows(s.spec)).push(item)
        if clip is not None:
            float(np.mean([it.cache["p"] for it in clip]))
            n_windows += 1
            covered[sample["track"]].update(it.seq for it in clip)
    wall = time.perf_counter() - t0
    notes = [f"DataLoader num_workers={workers}"]
    return BaselineResult("caddm", s.model_id, wall, dict(ph.seconds), ph.decoded, ph.detected, len(probs), n_windows,
                          _covered(covered, s.rate), notes)


def _styleflow_clip(s: _Setup, media: Media) -> BaselineResult:
    ph = _Phases()
    sampler = FrameSampler(s.rate)
    crops_dir = s.workdir / "styleflow_crops"
    crops_dir.mkdir(parents=True, exist_ok=True)
    windows: dict[int, TrackWindows] = {}
    clips: list[tuple[int, list[int], list[Path]]] = []
    t0 = time.perf_counter()
    # crop_face_from_video: every frame detected (FTCN's detect_all: chunks of 50 frames per
    # detector call), one alignment per clip, the clip's crops written to disk.
    chunk: list[tuple[int, float, np.ndarray]] = []
    decoding = ph.frames(media())
    while True:
        item = next(decoding, None)
        if item is not None:
            if sampler.accept(item[1]):
                chunk.append(item)
            if len(chunk) < _FTCN_DETECT_CHUNK:
                continue
        if not chunk:
            break
        with ph("detect"):
            found = s.faces.detect([image for _, _, image in chunk])
        ph.detected += len(chunk)
        for (i, pts, image), faces in zip(chunk, found):
            for k, face in enumerate(_ordered(faces)):
                with ph("align"):
                    patch, origin = s.aligner.patch(image, face)
                clip = windows.setdefault(k, TrackWindows(s.spec)).push(
                    WindowItem(i, pts, 0.0, face.box, face.points, patch, origin))
                if clip is None:
                    continue
                with ph("align"):
                    crops = s.aligner.clip_crops(clip)
                paths = [crops_dir / f"{k:02d}_{it.seq:06d}.png" for it in clip]
                with ph("write"):
                    for path, crop in zip(paths, crops):
                        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                clips.append((k, [it.seq for it in clip], paths))
        chunk = []
        if item is None:
            break
    # _predict: per clip, read the PNGs, pSp on every frame, then StyleGRU + content, batch 1.
    size = s.model.cfg.content.input_size
    mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)
    covered: dict[int, set[int]] = defaultdict(set)
    for k, seqs, paths in clips:
        with ph("read"):
            frames, content = [], []
            for path in paths:
                with Image.open(path) as img:
                    rgb = img.convert("RGB")
                    frames.append(torch.from_numpy(np.asarray(rgb).copy()))
                    small = np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
                    content.append((torch.from_numpy(small).permute(2, 0, 1) / 255.0 - mean) / std)
            x = torch.stack(frames).permute(0, 3, 1, 2).float()  # [32, 3, 256, 256] RGB 0-255
            video = torch.stack(content, dim=1)  # [3, 32, size, size]
        with ph("forward"), torch.inference_mode():
            latents = s.model.encode_frames(x.to(s.device))
            float(s.model.forward_from_latents(latents[None], video[None].to(s.device))[0])
        covered[k].update(seqs)
    wall = time.perf_counter() - t0
    return BaselineResult("styleflow", s.model_id, wall, dict(ph.seconds), ph.decoded, ph.detected,
                          len(clips) * s.spec.window_len, len(clips), _covered(covered, s.rate))


_LOOP_FUNCTIONS: dict[str, Callable[[_Setup, Media], BaselineResult]] = {
    "sta": _sta_demo, "caddm": _caddm_test, "styleflow": _styleflow_clip,
}


def _warm_up(s: _Setup, image: np.ndarray) -> None:
    """One face detection and one forward of the loop's shape, outside the timing."""
    s.faces.detect([image])
    size, card = s.card.template.size, s.card
    with torch.inference_mode():
        if s.detector == "caddm":
            s.model(torch.zeros(1, 3, size, size, device=s.device))
        elif s.detector == "sta":
            s.model(torch.zeros(1, card.clip_len, 3, card.input_size, card.input_size, device=s.device))
        else:
            latents = s.model.encode_frames(torch.zeros(card.clip_len, 3, size, size, device=s.device))
            content = s.model.cfg.content.input_size
            s.model.forward_from_latents(latents[None], torch.zeros(1, 3, card.clip_len, content, content,
                                                                    device=s.device))


def run_baselines(cfg: Config, media: Media, source_fps: float, workdir: Path) -> dict[str, BaselineResult]:
    """Run each enabled detector's authors' loop over ``media`` (one model in memory at a time)."""
    from ..inference.worker import resolve_device

    dcfg = cfg.detectors
    device = resolve_device(dcfg.device)
    analysed_fps = min(source_fps, cfg.ingest.max_fps or source_fps)  # the monitor's decimation, if any
    resolved = {} if dcfg.random_weights else resolve_all(dcfg)
    face_detector = create_detector(cfg.faces, device)
    frames = media()
    first = next(frames)[1]
    del frames  # closes the generator (and a file's decoder) now
    results: dict[str, BaselineResult] = {}
    for detector in dcfg.enabled:
        det_cfg = dcfg.detector(detector)
        name = model_name(detector, dcfg)
        weights = resolved.get(detector)
        torch.manual_seed(0)  # the engine's seed: the same random weights as the monitor's
        model = models.create_model(name, checkpoint=weights.checkpoint if weights else None,
                                    **det_cfg.overrides).to(device).eval()
        card = model.card
        assert isinstance(card, models.ModelCard)
        spec = window_spec(detector, card, det_cfg.sample_fps, det_cfg.window_len, det_cfg.window_stride)
        rate = analysed_fps if spec.sample_fps is None else min(spec.sample_fps, analysed_fps)
        loop_dir = workdir / f"baseline_{detector}"
        loop_dir.mkdir(parents=True, exist_ok=True)
        model_id = model_fingerprint(name, weights.files if weights else ())
        setup = _Setup(detector, model, model_id, card, spec, rate, face_detector, Aligner(card.template), device,
                       loop_dir)
        _warm_up(setup, first)
        results[detector] = _LOOP_FUNCTIONS[detector](setup, media)
        del setup, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results
