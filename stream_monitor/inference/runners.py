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
* **StyleFlow** (``styleflow``, style enabled): the pSp latents, keyed by the clip's transform. The authors fit one
  similarity per 32-frame clip, so a frame's aligned crop — and its latent — depends on
  the window it sits in. With the default non-overlapping, track-aligned windows each
  frame belongs to exactly one window and is encoded once; overlapping windows
  (stride < 32) re-fit and re-encode every frame, which is the exact behaviour (reusing
  latents across different transforms would silently depart from training).
  StyleFlow as TrueMedia deployed it (``detectors.styleflow.model: styleflow_truemedia``,
  content branch only) has no per-frame state and runs as a clip model (:func:`runner_class`).

Video scores (:meth:`DetectorRunner.video_score`, ``Engine.video_score``): a detector's
score of a whole video from its window scores — the mean, as the authors average clip
probabilities, unless the model defines its own from clip logits (``model.video_score``:
TrueMedia's StyleFlow, ``sigmoid(mean clip logit)``). Such a runner returns each clip's
probability as a :class:`ClipScore`, a float that also carries the logit, so the video
score is exact (no round trip through a saturated probability).

Precision (``detectors.precision``): ``fp32`` (default) runs as loaded; ``bf16`` and
``fp16`` wrap each model forward in ``torch.autocast(device.type, dtype)`` — convolutions
and matrix products in the lower precision, reductions and softmax as autocast keeps them.
Preprocessing (Pillow-exact resize, normalisation) stays outside autocast, and every
result is returned (and cached: pSp latents, CADDM probabilities) in float32. ``fp16``
needs CUDA (a runner refuses it elsewhere); ``bf16`` also runs on a CPU, but a CPU without
native bf16 instructions emulates it and is slower than fp32 (4–20× on the 2-core dev
box), so there it is for parity checks — the speed-up is a GPU matter. Tolerance: on the
golden parity inputs (``tests/models/data``), autocast probabilities stay within
``AUTOCAST_TOLERANCE`` (|Δp| ≤ 0.02) of fp32 for every detector; the measured worst case
on the CPU in bf16 is 0.006 (CADDM-B3), see ``tests/stream_monitor/test_precision.py``.
The 2D convolution models (CADDM, StyleFlow's pSp encoder) run ``channels_last`` (NHWC)
on CUDA (what tensor-core convolutions want) and, on a CPU, when they have no grouped
(depthwise) convolutions: oneDNN's NHWC kernels made ResNet-34 21 % and the pSp encoder
35 % faster on the 2-core dev box, but EfficientNet-B4's depthwise layers 17 % slower
(:func:`prefers_channels_last`). The layout changes no result beyond float rounding.

Compilation (``detectors.compile``, default ``off``): the forwards each runner calls (the
model; StyleFlow's ``encode_frames`` and ``forward_from_latents``) go through
``torch.compile`` with the chosen inductor mode (``reduce-overhead`` also captures CUDA
graphs, one per batch shape) or the ``aot_eager`` backend (graph capture without code
generation: checks that a model traces, changes no number). Batch sizes vary, so shapes
are marked dynamic after the first recompile (torch's default). The first batch of each
shape pays the compilation (seconds to minutes for full-size models), which is why it is
off by default and meant for long-running GPU workers; outputs match eager within float
rounding (``tests/stream_monitor/test_precision.py``).

Crops (``faces.align_device``): window patches are host arrays (OpenCV alignment) or
crops already on the device (batched alignment, :mod:`stream_monitor.faces.align`); the
runners take either (:func:`~stream_monitor.faces.align.stack_on_device`). With
``align_on_device`` a per-clip window (StyleFlow) is warped on the device in one call
(:meth:`~stream_monitor.faces.align.Aligner.clip_tensor`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Protocol, Sequence

import numpy as np
import torch

from models import sha256_file
from models.card import ModelCard

from ..batch_sizes import frame_parts
from ..config import CompileMode
from ..faces.align import Aligner, stack_on_device
from ..types import Clip, WindowItem
from ..windows import WindowSpec


Precision = Literal["fp32", "bf16", "fp16"]
_AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Largest |p_autocast - p_fp32| accepted on the golden parity inputs (see the module docstring).
AUTOCAST_TOLERANCE = 0.02


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """The context the runners wrap model forwards in: nothing for ``fp32``, else
    ``torch.autocast`` to bf16/fp16 on ``device``. ``fp16`` off CUDA is a ``ValueError``
    (CPU fp16 kernels are partial and slow; bf16 is the CPU's reduced precision)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device, not {device.type} (use bf16 or fp32)")
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def prefers_channels_last(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether a 2D-convolution network runs faster in NHWC on ``device``: always on CUDA;
    on a CPU only without grouped convolutions (see the module docstring)."""
    if device.type == "cuda":
        return True
    return not any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in module.modules())


def compiled(fn: Callable[..., Any], mode: CompileMode) -> Callable[..., Any]:
    """``fn`` through ``torch.compile`` per ``detectors.compile`` (see the module docstring)."""
    if mode == "off":
        return fn
    if mode == "aot_eager":
        return torch.compile(fn, backend="aot_eager")
    return torch.compile(fn, mode=mode)


class ClipScore(float):
    """A clip's fake probability (a ``float`` wherever it goes) that keeps the logit it was
    computed from, for video scores defined on logits (see the module docstring)."""

    logit: float

    def __new__(cls, probability: float, logit: float) -> "ClipScore":
        score = super().__new__(cls, probability)
        score.logit = logit
        return score

    def __reduce__(self) -> tuple[Any, ...]:  # pickle/copy keep the logit
        return (ClipScore, (float(self), self.logit))

    @classmethod
    def of(cls, logit: float) -> "ClipScore":
        """The score of a logit: ``sigmoid(logit)`` in float64."""
        return cls(1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit)),
                   logit)


def _logit(score: float) -> float:
    """A clip's logit: the one its :class:`ClipScore` kept, else the inverse sigmoid of the
    probability (exact for |logit| < ~36; 0 and 1 are clamped to the nearest float64 odds)."""
    if isinstance(score, ClipScore):
        return score.logit
    p = min(max(float(score), sys.float_info.min), 1.0 - sys.float_info.epsilon / 2)
    return math.log(p) - math.log1p(-p)


class DetectorRunner(Protocol):
    name: str
    card: ModelCard
    model_id: str
    spec: WindowSpec
    aligner: Aligner
    precision: Precision

    def run(self, clips: Sequence[Clip]) -> list[float]: ...

    def video_score(self, scores: Sequence[float]) -> float: ...


@dataclass
class _Base:
    name: str
    model: Any  # an nn.Module from models.create_model; StyleFlow's has encode_frames etc.
    card: ModelCard
    model_id: str
    spec: WindowSpec
    device: torch.device
    precision: Precision = "fp32"
    align_on_device: bool = False  # per-clip windows warped on ``device`` (batched torch), not with OpenCV
    compile: CompileMode = "off"
    # The model's 2D-convolution part may run channels_last (prefers_channels_last, _conv_part).
    channels_last_convs: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.aligner = Aligner(self.card.template, self.device if self.align_on_device else None)
        self.frames_computed = 0  # per-frame work actually done (cache misses), for tests/benchmarks
        autocast(self.device, self.precision)  # refuse an impossible precision now, not at the first batch
        self.channels_last = self.channels_last_convs and prefers_channels_last(self._conv_part(), self.device)
        if self.channels_last:
            self._conv_part().to(memory_format=torch.channels_last)
        self._forward = compiled(self.model, self.compile)

    def _conv_part(self) -> torch.nn.Module:
        return self.model  # type: ignore[no-any-return]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.precision)

    def _conv_input(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` input of the conv part, in the layout its weights use."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run(self, clips: Sequence[Clip]) -> list[float]:
        """One fake probability per clip (worker thread)."""
        raise NotImplementedError

    @property
    def logit_video_score(self) -> bool:
        """Whether the model defines its video score on clip logits (``model.video_score``)."""
        return callable(getattr(self.model, "video_score", None))

    def video_score(self, scores: Sequence[float]) -> float:
        """The detector's score of a video from the scores :meth:`run` gave its windows (for a
        per-frame detector: its frames' probabilities): ``model.video_score`` of their logits
        where the model defines one (TrueMedia's StyleFlow: ``sigmoid(mean logit)``), else
        their mean. ``ValueError`` for no scores."""
        if not scores:
            raise ValueError(f"{self.name}: a video score needs at least one window score")
        if self.logit_video_score:
            logits = torch.tensor([_logit(s) for s in scores], dtype=torch.float64)
            return float(self.model.video_score(logits))
        return float(np.mean([float(s) for s in scores]))


class PerFrameRunner(_Base):
    """Per-frame models (CADDM): score uncached frames once; window = mean of its frames."""

    channels_last_convs = True

    def run(self, clips: Sequence[Clip]) -> list[float]:
        todo: dict[int, WindowItem] = {}
        for clip in clips:
            for item in clip.items:
                if self.name not in item.cache:
                    todo[id(item)] = item
        if todo:
            items = list(todo.values())
            # Each frame's score does not depend on its batch: on the CPU, power-of-two parts
            # (oneDNN compiles a kernel per input shape, stream_monitor.batch_sizes).
            for part in frame_parts(len(items), self.device.type):
                chunk = items[part]
                x = self._conv_input(self.card.preprocess(stack_on_device([it.patch for it in chunk], self.device)))
                with self._autocast():
                    probs = self._forward(x).float().cpu().tolist()
                for item, p in zip(chunk, probs):
                    item.cache[self.name] = float(p)
            self.frames_computed += len(items)
        return [float(np.mean([it.cache[self.name] for it in clip.items])) for clip in clips]


class ClipRunner(_Base):
    """Clip models without per-frame state (StA; StyleFlow as TrueMedia deployed it): aligned
    crops → one forward per batch. A model with a logit video score gets :class:`ClipScore` values."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._logits = compiled(self.model.forward_logits, self.compile) if self.logit_video_score else None

    def run(self, clips: Sequence[Clip]) -> list[float]:
        crops = torch.stack([self.aligner.clip_tensor(clip.items, self.device) for clip in clips])
        x = self.card.preprocess(crops)
        if self._logits is not None:
            with self._autocast():
                logits = self._logits(x)
            return [ClipScore.of(v) for v in logits.float().cpu().tolist()]
        with self._autocast():
            probs = self._forward(x)
        return [float(p) for p in probs.float().cpu().tolist()]


class StyleFlowRunner(_Base):
    """StyleFlow: per-clip alignment, pSp latents cached per (frame, clip transform)."""

    channels_last_convs = True  # the pSp encoder; the content branch's convolutions are 3D

    def __post_init__(self) -> None:
        super().__post_init__()
        self._encode = compiled(self.model.encode_frames, self.compile)
        self._from_latents = compiled(self.model.forward_from_latents, self.compile)

    def _conv_part(self) -> torch.nn.Module:
        return self.model.psp  # type: ignore[no-any-return]

    def run(self, clips: Sequence[Clip]) -> list[float]:
        latents, videos = [], []
        for clip in clips:
            transform = self.aligner.clip_transform(clip.items)
            assert transform is not None, "StyleFlow's template is per clip"
            key = "styleflow@" + hashlib.sha1(transform.tobytes()).hexdigest()
            crops = self.aligner.clip_tensor(clip.items, self.device, transform)
            frames = self.card.preprocess(crops)  # [T, 3, S, S] RGB 0-255
            missing: dict[int, int] = {}  # item id -> first position (padded clips repeat items)
            for i, it in enumerate(clip.items):
                if key not in it.cache:
                    missing.setdefault(id(it), i)
            if missing:
                rows = list(missing.values())
                with self._autocast():
                    # float32 in the cache: the style flow subtracts neighbouring frames'
                    # latents, which must not happen in bf16/fp16. clone(): in fp32 .float() is
                    # no copy, and under CUDA graphs (compile: reduce-overhead) the output is the
                    # graph's own memory, overwritten by the next replay.
                    codes = self._encode(self._conv_input(frames[rows])).float().clone()
                for i, code in zip(rows, codes):
                    clip.items[i].cache[key] = code
                self.frames_computed += len(rows)
            latents.append(torch.stack([it.cache[key] for it in clip.items]))
            videos.append(self.model.content_input(frames).transpose(0, 1))  # [3, T, s, s]
        with self._autocast():
            probs = self._from_latents(torch.stack(latents), torch.stack(videos))
        return [float(p) for p in probs.float().cpu().tolist()]


RUNNERS: dict[str, type[_Base]] = {"caddm": PerFrameRunner, "sta": ClipRunner, "styleflow": StyleFlowRunner}


def runner_class(detector: str, model: Any) -> type[_Base]:
    """The runner for ``detector``'s model: ``RUNNERS[detector]``, except that a StyleFlow
    model without the pSp/StyleGRU path (``styleflow_truemedia``, content only: no
    ``encode_frames``) runs as a plain clip model."""
    cls = RUNNERS[detector]
    if cls is StyleFlowRunner and not callable(getattr(model, "encode_frames", None)):
        return ClipRunner
    return cls


def model_fingerprint(name: str, files: Sequence[str]) -> str:
    """``"<model name>@<sha256 prefix>"`` of the checkpoint file(s); ``@random`` without."""
    if not files:
        return f"{name}@random"
    digest = hashlib.sha256()
    for f in files:
        digest.update(sha256_file(f).encode())
    return f"{name}@{digest.hexdigest()[:12]}"
