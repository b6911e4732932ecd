"""Detector runners: a loaded model, its card, its window spec, and a batch function.

``run(clips)`` executes on the inference worker thread and returns one fake probability
per clip. What is computed once per frame and cached on the window items
(``WindowItem.cache``), per detector:

* **CADDM** (per frame): the frame's probability. Windows overlap (stride 4 of 8), so
  each frame is scored once and a window's score is the mean of its frames' cached
  probabilities — the authors' video score over the window.
* **StA**: nothing. All 14 blocks mix the clip's frames (temporal embedding, temporal
  convolutions, cross-attention), so each window runs in full; only the aligned crops
  are reused (cut once per frame when the frame arrives).
* **StyleFlow**: the pSp latents, keyed by the clip's transform. The authors fit one
  similarity per 32-frame clip, so a frame's aligned crop — and its latent — depends on
  the window it sits in. With the default non-overlapping, track-aligned windows each
  frame belongs to exactly one window and is encoded once; overlapping windows
  (stride < 32) re-fit and re-encode every frame, which is the exact behaviour (reusing
  latents across different transforms would silently depart from training).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from models import sha256_file
from models.card import ModelCard

from ..faces.align import Aligner
from ..types import Clip, WindowItem
from ..windows import WindowSpec


class DetectorRunner(Protocol):
    name: str
    card: ModelCard
    model_id: str
    spec: WindowSpec
    aligner: Aligner

    def run(self, clips: Sequence[Clip]) -> list[float]: ...


@dataclass
class _Base:
    name: str
    model: Any  # an nn.Module from models.create_model; StyleFlow's has encode_frames etc.
    card: ModelCard
    model_id: str
    spec: WindowSpec
    device: torch.device

    def __post_init__(self) -> None:
        self.aligner = Aligner(self.card.template)
        self.frames_computed = 0  # per-frame work actually done (cache misses), for tests/benchmarks

    def run(self, clips: Sequence[Clip]) -> list[float]:
        """One fake probability per clip (worker thread)."""
        raise NotImplementedError

    def _to_device(self, crops: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(crops))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t


class PerFrameRunner(_Base):
    """Per-frame models (CADDM): score uncached frames once; window = mean of its frames."""

    def run(self, clips: Sequence[Clip]) -> list[float]:
        todo: dict[int, WindowItem] = {}
        for clip in clips:
            for item in clip.items:
                if self.name not in item.cache:
                    todo[id(item)] = item
        if todo:
            items = list(todo.values())
            x = self.card.preprocess(self._to_device(np.stack([it.patch for it in items])))
            probs = self.model(x).float().cpu().tolist()
            for item, p in zip(items, probs):
                item.cache[self.name] = float(p)
            self.frames_computed += len(items)
        return [float(np.mean([it.cache[self.name] for it in clip.items])) for clip in clips]


class ClipRunner(_Base):
    """Clip models without per-frame state (StA): aligned crops → one forward per batch."""

    def run(self, clips: Sequence[Clip]) -> list[float]:
        crops = np.stack([self.aligner.clip_crops(clip.items) for clip in clips])
        x = self.card.preprocess(self._to_device(crops))
        return [float(p) for p in self.model(x).float().cpu().tolist()]


class StyleFlowRunner(_Base):
    """StyleFlow: per-clip alignment, pSp latents cached per (frame, clip transform)."""

    def run(self, clips: Sequence[Clip]) -> list[float]:
        latents, videos = [], []
        for clip in clips:
            transform = self.aligner.clip_transform(clip.items)
            assert transform is not None, "StyleFlow's template is per clip"
            key = "styleflow@" + hashlib.sha1(transform.tobytes()).hexdigest()
            crops = self.aligner.clip_crops(clip.items, transform)
            frames = self.card.preprocess(self._to_device(crops))  # [T, 3, S, S] RGB 0-255
            missing: dict[int, int] = {}  # item id -> first position (padded clips repeat items)
            for i, it in enumerate(clip.items):
                if key not in it.cache:
                    missing.setdefault(id(it), i)
            if missing:
                rows = list(missing.values())
                codes = self.model.encode_frames(frames[rows])
                for i, code in zip(rows, codes):
                    clip.items[i].cache[key] = code
                self.frames_computed += len(rows)
            latents.append(torch.stack([it.cache[key] for it in clip.items]))
            videos.append(self.model.content_input(frames).transpose(0, 1))  # [3, T, s, s]
        probs = self.model.forward_from_latents(torch.stack(latents), torch.stack(videos))
        return [float(p) for p in probs.float().cpu().tolist()]


RUNNERS: dict[str, type[_Base]] = {"caddm": PerFrameRunner, "sta": ClipRunner, "styleflow": StyleFlowRunner}


def model_fingerprint(name: str, files: Sequence[str]) -> str:
    """``"<model name>@<sha256 prefix>"`` of the checkpoint file(s); ``@random`` without."""
    if not files:
        return f"{name}@random"
    digest = hashlib.sha256()
    for f in files:
        digest.update(sha256_file(f).encode())
    return f"{name}@{digest.hexdigest()[:12]}"
