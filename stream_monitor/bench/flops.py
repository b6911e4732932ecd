"""Model FLOPs per unit of work, the FLOP rates a stream needs, and the device's matmul peak.

Counting: :func:`count_flops` runs a callable under ``torch.utils.flop_counter.FlopCounterMode``
(FLOPs = 2 × multiply-accumulates of the matmuls and convolutions it knows; elementwise
work, norms and resampling count 0, so these are *model* FLOPs in the MFU sense). The
detectors are built on the ``meta`` device, so a full-size StyleFlow (1.05 B parameters)
costs no memory and no compute to count. Parameters are frozen first: FlopCounterMode's
module tracker hooks autograd for any input that requires grad.

Per detector (:class:`DetectorFlops`), at the cards' input sizes:

* ``per_frame`` — work done once per sampled frame of a track and cached: CADDM's whole
  model, StyleFlow's pSp encoder (per frame *and* clip transform); 0 for StA.
* ``per_window`` — work done per scored window: StA's clip forward, StyleFlow's StyleGRU +
  content branch (from the cached latents); 0 for CADDM (its window is a mean).

Face detection (MTCNN) depends on the picture (its cascade looks at more candidates when
there is more to look at), so :func:`face_detector_flops` counts a real detection of the
scenario's first frame on the service's detector.

Peak: :func:`matmul_peak` times square matmuls — bf16 on CUDA (tensor cores, the MFU
convention), fp32 on a CPU (CPU bf16 matmuls are often slower than fp32) — and reports
the best of a few repeats in FLOP/s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import models

from ..config import FacesConfig
from ..faces.detect import create_detector


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 × MACs of matmuls/convolutions) of running ``fn()`` once."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class DetectorFlops:
    """FLOPs of one detector: ``per_frame`` (cached per sampled frame) and ``per_window``."""

    detector: str
    model: str
    per_frame: float
    per_window: float

    def work(self, frames_computed: float, windows: float) -> float:
        """FLOPs of ``frames_computed`` per-frame passes plus ``windows`` window passes."""
        return self.per_frame * frames_computed + self.per_window * windows


def detector_flops(detector: str, model_name: str, overrides: Mapping[str, Any]) -> DetectorFlops:
    """Count one detector's per-frame and per-window FLOPs on the meta device (batch 1)."""
    model = models.create_model(model_name, device="meta", **overrides).requires_grad_(False)
    card = model.card
    assert isinstance(card, models.ModelCard)
    s = card.template.size

    def meta(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, device="meta")

    if detector == "caddm":
        return DetectorFlops(detector, model_name, float(count_flops(lambda: model(meta(1, 3, s, s)))), 0.0)
    if detector == "sta":
        clip = count_flops(lambda: model(meta(1, card.clip_len, 3, card.input_size, card.input_size)))
        return DetectorFlops(detector, model_name, 0.0, float(clip))
    if detector == "styleflow":
        sf: Any = model  # models.styleflow.StyleFlow: encode_frames / forward_from_latents
        frame = meta(1, 3, s, s)
        per_frame = count_flops(lambda: sf.encode_frames(frame))
        code = sf.encode_frames(frame)  # [1, n_styles, style_dim], for the latents' shape
        t, size = card.clip_len, sf.cfg.content.input_size
        latents = meta(1, t, *code.shape[1:])
        video = meta(1, 3, t, size, size)
        per_window = count_flops(lambda: sf.forward_from_latents(latents, video))
        return DetectorFlops(detector, model_name, float(per_frame), float(per_window))
    raise ValueError(f"unknown detector {detector!r}")


def face_detector_flops(cfg: FacesConfig, device: torch.device, image: np.ndarray) -> float:
    """FLOPs of one face detection of ``image`` (uint8 RGB) on the configured backend."""
    detector = create_detector(cfg, device)
    detector.detect([image])  # warm-up: lazy initialisation stays out of the count
    with torch.inference_mode():
        return float(count_flops(lambda: detector.detect([image])))


@dataclass(frozen=True)
class MatmulPeak:
    """Measured matmul throughput: ``flops_per_s`` for ``n``×``n`` ``dtype`` products."""

    flops_per_s: float
    dtype: str
    n: int
    device: str


def matmul_peak(device: torch.device, repeats: int = 3, min_seconds: float = 0.3, *,
                dtype: torch.dtype | None = None, n: int | None = None) -> MatmulPeak:
    """Best-of-``repeats`` square-matmul FLOP/s on ``device``: ``n``×``n`` products of ``dtype``
    (by default bf16 with n = 8192 on CUDA, fp32 with n = 1024 on a CPU)."""
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    n = n or (8192 if cuda else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        torch.mm(a, b)  # warm-up (kernel selection, thread pool)
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        # Enough products per repeat that timer resolution and launch gaps do not matter.
        iters = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-6)))
        best = 0.0
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.mm(a, b)
            sync()
            best = max(best, 2.0 * n ** 3 * iters / (time.perf_counter() - t0))
    return MatmulPeak(best, str(dtype).replace("torch.", ""), n, str(device))


def stream_flop_rates(costs: Mapping[str, DetectorFlops], rates: Mapping[str, float], strides: Mapping[str, int],
                      faces: int, face_flops: float, detect_fps: float) -> dict[str, float]:
    """FLOP/s one stream needs in steady state, per detector and for face detection.

    ``rates``: frames per second each detector samples per track; a window is scored
    every ``strides[d]`` sampled frames; ``faces`` tracks per stream; face detection runs
    on ``detect_fps`` frames a second (the frames the detectors sample, see
    ``faces.detect_fps``). Per-frame work is counted once per sampled frame (cached).
    """
    out = {d: faces * (c.per_frame * rates[d] + c.per_window * rates[d] / strides[d]) for d, c in costs.items()}
    out["faces"] = face_flops * detect_fps
    return out
